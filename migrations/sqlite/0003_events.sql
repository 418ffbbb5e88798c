-- Change events: one row per change of an environment's secrets or of the environment itself,
-- written in the change's transaction. Ids increase in commit order (this database has one
-- writer at a time); AUTOINCREMENT never hands out an id again once its row is pruned.
CREATE TABLE events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id         TEXT NOT NULL,
    project_id     TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    environment_id TEXT NOT NULL,
    type           TEXT NOT NULL,
    revision       BIGINT NOT NULL,
    -- The event as delivered, without its id (JSON: slugs, changed keys, actor, time).
    body           TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX events_project_id ON events (project_id, id);
CREATE INDEX events_created_at ON events (created_at);

-- Up to which id events have been pruned: a reader asking for a position before it has missed
-- some and is told to resynchronise.
CREATE TABLE event_log (
    singleton      BIGINT PRIMARY KEY NOT NULL CHECK (singleton = 1),
    pruned_through BIGINT NOT NULL
);
INSERT INTO event_log (singleton, pruned_through) VALUES (1, 0);

-- Which other environments' secrets a secret's current value refers to (`${env.KEY}`,
-- `${project.env.KEY}`), by slug as written: a change there changes this secret's resolved value.
CREATE TABLE secret_references (
    environment_id TEXT NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    key            TEXT NOT NULL,
    org_id         TEXT NOT NULL,
    target_project TEXT NOT NULL,
    target_env     TEXT NOT NULL,
    target_key     TEXT NOT NULL,
    PRIMARY KEY (environment_id, key, target_project, target_env, target_key)
);
CREATE INDEX secret_references_target
    ON secret_references (org_id, target_project, target_env, target_key);
