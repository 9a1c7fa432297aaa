import threading, time, psycopg, subprocess, os
def test_x(idle_gateway):
    conn = psycopg.connect(idle_gateway.conninfo(), autocommit=True)
    c = conn.pgconn.get_cancel()
    print("pid", conn.info.backend_pid, flush=True)
    t = threading.Thread(target=lambda: (time.sleep(0.5), print("cancel start", flush=True), subprocess.run(["timeout","5","strace","-f","-e","trace=network,read,write,poll,connect","-p",str(threading.get_native_id())]) if False else None, c.cancel(), print("cancel done", flush=True)))
    t.start()
    try:
        conn.execute("select pg_sleep(5)")
    except Exception as e:
        print("exc", e)
    t.join()
