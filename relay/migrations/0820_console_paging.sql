-- The console pages the history by (issued_at, id) and the audit trail by seq, newest
-- first, with filters: each page is a walk along one of these indexes, in the page's
-- order, never a scan or a sort of the table. They replace the indexes that ended in
-- issued_at alone (a prefix of each new one serves every query those did).
CREATE INDEX sessions_issued_id ON sessions (issued_at, id);
DROP INDEX sessions_issued_at;
CREATE INDEX sessions_operator_page ON sessions (operator, issued_at, id);
DROP INDEX sessions_operator;
CREATE INDEX sessions_client_ip_page ON sessions (client_ip, issued_at, id);
DROP INDEX sessions_client_ip;
CREATE INDEX audit_at ON audit (at, seq);
CREATE INDEX audit_actor ON audit (actor, seq);
