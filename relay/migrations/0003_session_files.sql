-- Files offered during a session: metadata only (the relay never sees or stores content).
-- One row per transfer outcome. Times are Unix milliseconds (UTC).
CREATE TABLE session_files (
    session_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    -- 'to_client' or 'to_operator'
    direction   TEXT NOT NULL,
    -- Bytes that actually went through the relay.
    bytes       BIGINT NOT NULL,
    -- 'completed', 'rejected', 'cancelled' or 'failed'
    result      TEXT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX session_files_session ON session_files (session_id, at);
