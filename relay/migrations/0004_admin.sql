-- Per-operator limits and second factor, set by admins.
-- max_sessions: live sessions at once, 0 means no limit.
ALTER TABLE operators ADD COLUMN max_sessions INTEGER NOT NULL DEFAULT 0;
-- Base32 TOTP secret (a secret: never logged); NULL until enrolled.
ALTER TABLE operators ADD COLUMN totp_secret TEXT;
ALTER TABLE operators ADD COLUMN totp_required INTEGER NOT NULL DEFAULT 0;

-- Ordered allow/deny rules per operator; first match wins, deny when none matches once any
-- rule exists.
CREATE TABLE operator_ip_rules (
    operator    TEXT NOT NULL,
    position    INTEGER NOT NULL,
    action      TEXT NOT NULL,
    cidr        TEXT NOT NULL,
    PRIMARY KEY (operator, position)
);

-- Console accounts. Passwords are argon2id PHC strings.
CREATE TABLE admins (
    name            TEXT PRIMARY KEY NOT NULL,
    password_hash   TEXT NOT NULL,
    totp_secret     TEXT,
    failed_logins   INTEGER NOT NULL DEFAULT 0,
    locked_until    BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL
);

-- One-time recovery codes: SHA-256 of each code, never the code itself.
CREATE TABLE admin_recovery_codes (
    admin       TEXT NOT NULL,
    code_hash   TEXT NOT NULL,
    used_at     BIGINT,
    PRIMARY KEY (admin, code_hash)
);

-- The audit trail: append-only, each row's hash covers the previous row's hash.
CREATE TABLE audit (
    seq         BIGINT PRIMARY KEY NOT NULL,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    ip          TEXT NOT NULL,
    detail      TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);

CREATE INDEX sessions_client_ip ON sessions (client_ip, issued_at);
