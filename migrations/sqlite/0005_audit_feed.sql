-- The organization audit feed (the live audit stream) reads an organization's events in the
-- order they were stored: by rowid, which grows with each insert of this database's one writer.
CREATE INDEX audit_events_org_feed ON audit_events (org_id);
