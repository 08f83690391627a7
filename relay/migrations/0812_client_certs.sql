-- The certificate service: the CA that signs operators' and admins' client certificates,
-- the certificates it issued, and which accounts must present one.

-- One row (id = 1): the client CA's certificate (public, what every node checks with) and
-- its private key sealed with `DATA/keys/client-ca.key`, a key kept outside the database
-- and only on the nodes that issue certificates. The CRL is the latest signed list of
-- revoked serials, which every node serves and writes to its data dir.
CREATE TABLE client_ca (
    id              INTEGER PRIMARY KEY NOT NULL,
    cert_pem        TEXT NOT NULL,
    key_sealed      TEXT NOT NULL,
    crl_pem         TEXT,
    crl_number      BIGINT NOT NULL DEFAULT 0,
    crl_next_update BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL
);

-- Every certificate issued. `serial` is lower-case hex; `role` is operator or admin; the
-- device is a label the admin gives. No private key is ever stored.
CREATE TABLE client_certs (
    serial          TEXT PRIMARY KEY NOT NULL,
    role            TEXT NOT NULL,
    account         TEXT NOT NULL,
    device          TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    not_before      BIGINT NOT NULL,
    not_after       BIGINT NOT NULL,
    issued_at       BIGINT NOT NULL,
    issued_by       TEXT NOT NULL,
    revoked_at      BIGINT,
    revoked_by      TEXT,
    -- The certificate that renewed this one (it stays valid until it expires, but no
    -- longer counts against the account's cap, and is not renewed twice).
    replaced_by     TEXT
);
CREATE INDEX client_certs_account ON client_certs (role, account);

-- One row per account that ever had a certificate, written first in every issue
-- transaction: it serialises concurrent issues for one account, so the per-account cap
-- holds under a burst (a row lock in PostgreSQL, the write lock in SQLite).
CREATE TABLE client_cert_accounts (
    role        TEXT NOT NULL,
    account     TEXT NOT NULL,
    issued      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (role, account)
);

ALTER TABLE operators ADD COLUMN cert_required INTEGER NOT NULL DEFAULT 0;
ALTER TABLE admins ADD COLUMN cert_required INTEGER NOT NULL DEFAULT 0;
