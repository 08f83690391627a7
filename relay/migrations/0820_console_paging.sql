-- The console pages the history by (issued_at, id) and the audit trail by seq, newest
-- first, with filters: each page is a walk along one of these indexes, never a scan of
-- the table. (issued_at, id) also serves every query the old issued_at index did.
CREATE INDEX sessions_issued_id ON sessions (issued_at, id);
DROP INDEX sessions_issued_at;
CREATE INDEX audit_at ON audit (at, seq);
CREATE INDEX audit_actor ON audit (actor, seq);
