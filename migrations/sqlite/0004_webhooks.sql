-- Webhooks: per project, an HTTPS (or HTTP) endpoint that receives the project's change events,
-- signed with a secret of its own (sealed with the project's data key, never stored in clear).
CREATE TABLE webhooks (
    id                   TEXT PRIMARY KEY NOT NULL,
    org_id               TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    project_id           TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    url                  TEXT NOT NULL,
    -- JSON arrays of environment slugs and event types; NULL: all of them.
    environments         TEXT,
    events               TEXT,
    -- The signing secret: sealed with the project's DEK; its generation is part of what it is
    -- sealed for. During a rotation's overlap the previous one signs too.
    secret_dek_id        TEXT NOT NULL REFERENCES deks (id),
    secret_ct            BLOB NOT NULL,
    secret_generation    BIGINT NOT NULL,
    previous_dek_id      TEXT REFERENCES deks (id),
    previous_ct          BLOB,
    previous_expires_at  BIGINT,
    -- Events with ids up to this one were recorded before the webhook existed.
    created_after_event  BIGINT NOT NULL,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    disabled_at          BIGINT,
    disabled_reason      TEXT,
    created_by           TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);
CREATE INDEX webhooks_project_id ON webhooks (project_id, id);

-- The delivery queue: one row per event (or ping, or redelivery) to send to one webhook.
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY NOT NULL,
    webhook_id      TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        BIGINT,
    kind            TEXT NOT NULL,
    -- The request body (the event as JSON): ids, slugs and key names, never a value.
    body            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    -- A replica sending it holds it until then; another may take it over after.
    locked_until    BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_webhook_id ON webhook_deliveries (webhook_id, id);

-- Every attempt to send a delivery, as its webhook's owners see it.
CREATE TABLE webhook_attempts (
    id              TEXT PRIMARY KEY NOT NULL,
    delivery_id     TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    webhook_id      TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    attempt         BIGINT NOT NULL,
    started_at      BIGINT NOT NULL,
    duration_ms     BIGINT NOT NULL,
    response_status BIGINT,
    -- At most 1 KiB of the response body; the reason when there was no response.
    response_body   TEXT,
    error           TEXT,
    next_attempt_at BIGINT
);
CREATE INDEX webhook_attempts_webhook_id ON webhook_attempts (webhook_id, id);

-- Up to which event the webhooks have been given their deliveries.
CREATE TABLE webhook_dispatch (
    singleton     BIGINT PRIMARY KEY NOT NULL CHECK (singleton = 1),
    last_event_id BIGINT NOT NULL
);
INSERT INTO webhook_dispatch (singleton, last_event_id) VALUES (1, 0);
