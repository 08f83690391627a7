-- How many times an endpoint of the session took its side back after its connection
-- dropped (a resume, on this or another relay node). The session keeps one row.
ALTER TABLE sessions ADD COLUMN resumes BIGINT NOT NULL DEFAULT 0;
