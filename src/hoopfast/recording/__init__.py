"""Session recording: the hash chain, the local spool, the recorder."""
