-- Failed admin login steps per (account, source prefix), so that failures from one place
-- never lock the account for its owner elsewhere. `account` is the admin's name when the
-- typed name matches an account, else a keyed hash of what was typed (never the text: a
-- password typed into the name field must not be stored). `prefix` is the source
-- address's /24 (IPv4) or /48 (IPv6). Times are Unix milliseconds (UTC).
CREATE TABLE admin_login_failures (
    account         TEXT NOT NULL,
    prefix          TEXT NOT NULL,
    -- Attempts reserved and not refunded since the counter last started over.
    failures        INTEGER NOT NULL,
    -- 0, or when the lock on this (account, prefix) ends.
    locked_until    BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (account, prefix)
);
CREATE INDEX admin_login_failures_updated ON admin_login_failures (updated_at);
