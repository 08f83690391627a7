-- API tokens: what scripts present as `Authorization: Bearer tsu_...` on `/api/v1` instead
-- of a console session. Only the SHA-256 of the secret is stored (the token is shown once,
-- when it is created); `id` is its public part, in the token itself, by which it is found
-- and revoked. `scope` is `read` (GET only) or `write`. Times are Unix milliseconds (UTC);
-- `last_used_at` is coarse (written at most once per few minutes).
CREATE TABLE api_tokens (
    id              TEXT PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL,
    scope           TEXT NOT NULL,
    secret_hash     TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT,
    last_used_at    BIGINT,
    revoked_at      BIGINT,
    revoked_by      TEXT
);
