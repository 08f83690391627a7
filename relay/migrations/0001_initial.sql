-- Operator accounts. Passwords are argon2id PHC strings, never the password itself.
CREATE TABLE operators (
    name            TEXT PRIMARY KEY NOT NULL,
    password_hash   TEXT NOT NULL,
    -- Bit set of what the admin allows: 1 view, 2 control, 4 files, 8 chat.
    permissions     INTEGER NOT NULL DEFAULT 15,
    suspended       INTEGER NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL
);

-- One row per session code issued. Times are Unix milliseconds (UTC).
-- Holds metadata only: never screen, input, chat or file content, nor the code itself.
CREATE TABLE sessions (
    id                  TEXT PRIMARY KEY NOT NULL,
    operator            TEXT NOT NULL,
    operator_ip         TEXT NOT NULL,
    operator_port       INTEGER NOT NULL,
    operator_relay_port INTEGER NOT NULL,
    requested           TEXT NOT NULL,
    client_host         TEXT,
    client_ip           TEXT,
    client_port         INTEGER,
    client_relay_port   INTEGER,
    granted             TEXT,
    issued_at           BIGINT NOT NULL,
    joined_at           BIGINT,
    consented_at        BIGINT,
    ended_at            BIGINT,
    pauses              INTEGER NOT NULL DEFAULT 0,
    bytes_to_client     BIGINT NOT NULL DEFAULT 0,
    bytes_to_operator   BIGINT NOT NULL DEFAULT 0,
    end_reason          TEXT
);
CREATE INDEX sessions_issued_at ON sessions (issued_at);
CREATE INDEX sessions_operator ON sessions (operator, issued_at);
