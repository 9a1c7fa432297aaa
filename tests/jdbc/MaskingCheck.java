// The PostgreSQL JDBC driver (pgjdbc), unmodified, through the gateway: run by
// tests/test_clients_jdbc.py, which compiles it with javac and reads its output.
//
// Usage: java -cp postgresql.jar:<classes> MaskingCheck <jdbc-url>
// The user and password (the gateway's token) come from the environment,
// HOOPFAST_JDBC_USER and HOOPFAST_JDBC_PASSWORD, so they stay off the command
// line. The URL carries the TLS options and no credentials.
//
// Output, one record a line, fields separated by tabs (tabs, newlines and
// backslashes inside values escaped as \t, \n, \\; SQL NULL printed as \N):
//   row      <run> <email> <card> <ssn> <name>        prepared, text results
//   binrow   <run> <email> <card> <ssn> <name> <id> <born>   binaryTransfer=true
//   forced   <run> <email> <card> <ssn> <name> <id> <born>   binary from the first run
//   fetch    <email>            fetch size 1 (portal, Execute max rows, PortalSuspended)
//   scroll   <email>            a scrollable result set, read backwards
//   error    <sqlstate> <message> <primary message>
//   after    <email>            the connection after the error
//   FAIL     <section> <sqlstate> <message>   an unexpected exception
//   DONE
// Exit status 0 when no section failed.

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

import org.postgresql.PGStatement;
import org.postgresql.util.PSQLException;
import org.postgresql.util.ServerErrorMessage;

public final class MaskingCheck {
    private static final String CUSTOMER =
            "SELECT email, card, ssn, name FROM customers WHERE id = ?";
    private static final String CUSTOMER_BINARY =
            "SELECT email, card, ssn, name, id, born FROM customers WHERE id = ?";

    private static final String FORCED_BINARY =
            "SELECT email, card, ssn, name, id, born FROM customers WHERE id = ? AND true";

    private static PrintStream out;
    private static boolean failed;

    private MaskingCheck() {}

    public static void main(String[] args) throws Exception {
        out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);
        String url = args[0];

        section("prepared", () -> {
            try (Connection conn = connect(url, "false")) {
                try (PreparedStatement ps = conn.prepareStatement(CUSTOMER)) {
                    for (int run = 1; run <= 10; run++) {
                        ps.setInt(1, 1);
                        try (ResultSet rs = ps.executeQuery()) {
                            while (rs.next()) {
                                emit("row", String.valueOf(run), rs.getString(1), rs.getString(2),
                                        rs.getString(3), rs.getString(4));
                            }
                        }
                    }
                }
                // A new PreparedStatement for the same SQL: pgjdbc finds the
                // server-side statement in its cache and sends Bind/Execute only.
                try (PreparedStatement ps = conn.prepareStatement(CUSTOMER)) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            emit("row", "11", rs.getString(1), rs.getString(2), rs.getString(3),
                                    rs.getString(4));
                        }
                    }
                }
            }
        });

        section("binary", () -> {
            try (Connection conn = connect(url, "true");
                    PreparedStatement ps = conn.prepareStatement(CUSTOMER_BINARY)) {
                for (int run = 1; run <= 3; run++) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            emit("binrow", String.valueOf(run), rs.getString(1), rs.getString(2),
                                    rs.getString(3), rs.getString(4), String.valueOf(rs.getInt(5)),
                                    String.valueOf(rs.getDate(6)));
                        }
                    }
                }
            }
            // A negative prepareThreshold forces binary results from the first run:
            // pgjdbc then describes the statement in a round trip of its own
            // (Parse, Describe statement, Sync) before its first Bind/Execute.
            try (Connection conn = connect(url, "true");
                    PreparedStatement ps = conn.prepareStatement(FORCED_BINARY)) {
                ps.unwrap(PGStatement.class).setPrepareThreshold(-1);
                for (int run = 1; run <= 3; run++) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            emit("forced", String.valueOf(run), rs.getString(1), rs.getString(2),
                                    rs.getString(3), rs.getString(4), String.valueOf(rs.getInt(5)),
                                    String.valueOf(rs.getDate(6)));
                        }
                    }
                }
            }
        });

        section("fetch", () -> {
            try (Connection conn = connect(url, "false")) {
                conn.setAutoCommit(false);  // pgjdbc only fetches in batches inside a transaction
                try (PreparedStatement ps = conn.prepareStatement(
                        "SELECT email FROM customers ORDER BY id")) {
                    ps.setFetchSize(1);
                    for (int run = 0; run < 2; run++) {  // the second run: a named statement
                        try (ResultSet rs = ps.executeQuery()) {
                            while (rs.next()) {
                                emit("fetch", rs.getString(1));
                            }
                        }
                    }
                }
                try (Statement st = conn.createStatement(
                        ResultSet.TYPE_SCROLL_INSENSITIVE, ResultSet.CONCUR_READ_ONLY)) {
                    st.setFetchSize(1);
                    try (ResultSet rs = st.executeQuery("SELECT email FROM customers ORDER BY id")) {
                        rs.afterLast();
                        while (rs.previous()) {
                            emit("scroll", rs.getString(1));
                        }
                    }
                }
                conn.commit();
            }
        });

        section("error", () -> {
            try (Connection conn = connect(url, "false")) {
                try (Statement st = conn.createStatement()) {
                    st.executeQuery("SELECT email::int FROM customers WHERE id = 1").close();
                    emit("error", "none", "no error raised", "");
                } catch (SQLException e) {
                    ServerErrorMessage server =
                            e instanceof PSQLException ? ((PSQLException) e).getServerErrorMessage() : null;
                    emit("error", e.getSQLState(), e.getMessage(),
                            server == null ? null : server.getMessage());
                }
                try (Statement st = conn.createStatement();
                        ResultSet rs = st.executeQuery("SELECT email FROM customers WHERE id = 2")) {
                    while (rs.next()) {
                        emit("after", rs.getString(1));
                    }
                }
            }
        });

        out.println("DONE");
        out.flush();
        System.exit(failed ? 1 : 0);
    }

    private static Connection connect(String url, String binaryTransfer) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", System.getenv("HOOPFAST_JDBC_USER"));
        props.setProperty("password", System.getenv("HOOPFAST_JDBC_PASSWORD"));
        props.setProperty("binaryTransfer", binaryTransfer);
        return DriverManager.getConnection(url, props);
    }

    private interface Body {
        void run() throws Exception;
    }

    private static void section(String name, Body body) {
        try {
            body.run();
        } catch (Exception e) {
            failed = true;
            String state = e instanceof SQLException ? ((SQLException) e).getSQLState() : null;
            emit("FAIL", name, state, e.toString());
            e.printStackTrace();
        }
    }

    private static void emit(String kind, String... fields) {
        StringBuilder line = new StringBuilder(kind);
        for (String field : fields) {
            line.append('\t').append(escape(field));
        }
        out.println(line);
    }

    private static String escape(String value) {
        if (value == null) {
            return "\\N";
        }
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r");
    }
}
