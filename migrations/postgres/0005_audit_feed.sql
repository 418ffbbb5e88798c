-- The organization audit feed (the live audit stream) reads an organization's events in an
-- order that never lets a late commit slip behind a reader: by the inserting transaction's id,
-- then insert order, delivering only the events of transactions older than every one still
-- running (`pg_snapshot_xmin`), which can no longer change.
ALTER TABLE audit_events
    ADD COLUMN feed_tx BIGINT NOT NULL DEFAULT (CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT));
ALTER TABLE audit_events ADD COLUMN feed_seq BIGINT GENERATED ALWAYS AS IDENTITY;
CREATE INDEX audit_events_org_feed ON audit_events (org_id, feed_tx, feed_seq);
