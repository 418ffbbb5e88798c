-- Dashboard sessions: the same sessions as the API's, reached by a cookie instead of tokens.
-- The cookie's hash finds the session; last_seen_at ends it when idle.
ALTER TABLE sessions ADD COLUMN web_token_hash TEXT;
ALTER TABLE sessions ADD COLUMN last_seen_at BIGINT;
CREATE UNIQUE INDEX sessions_web_token_hash ON sessions (web_token_hash);
