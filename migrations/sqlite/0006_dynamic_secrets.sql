-- Dynamic secrets: per environment, credentials minted on demand in an external system (a
-- PostgreSQL role) through an administrator connection sealed with the project's data key.
-- Environments, projects and organizations with dynamic secrets are not deleted (the service
-- refuses, and these references without cascade make sure): their leases' roles would be lost.
CREATE TABLE dynamic_secrets (
    id                    TEXT PRIMARY KEY NOT NULL,
    org_id                TEXT NOT NULL REFERENCES organizations (id),
    project_id            TEXT NOT NULL REFERENCES projects (id),
    environment_id        TEXT NOT NULL REFERENCES environments (id),
    name                  TEXT NOT NULL,
    engine                TEXT NOT NULL,
    -- The administrator's URL, sealed; the generation is part of what it is sealed for and
    -- changes with every new URL.
    connection_dek_id     TEXT NOT NULL REFERENCES deks (id),
    connection_ct         BLOB NOT NULL,
    connection_generation BIGINT NOT NULL,
    -- JSON: statements, grants, username template, password policy.
    settings              TEXT NOT NULL,
    default_ttl           BIGINT NOT NULL,
    max_ttl               BIGINT NOT NULL,
    created_by            TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    UNIQUE (environment_id, name)
);

-- Leases: one row per credential minted, written (state `creating`) before the role is created,
-- so that whatever happens to the request, the reaper knows of every role there may be.
CREATE TABLE leases (
    id                TEXT PRIMARY KEY NOT NULL,
    dynamic_secret_id TEXT NOT NULL REFERENCES dynamic_secrets (id),
    org_id            TEXT NOT NULL,
    project_id        TEXT NOT NULL,
    environment_id    TEXT NOT NULL,
    username          TEXT NOT NULL,
    state             TEXT NOT NULL
                      CHECK (state IN ('creating', 'active', 'revoking', 'revoked', 'failed')),
    -- Why a lease is being revoked: 'expired', 'revoked' or 'failed' (its creation).
    end_reason        TEXT,
    issued_at         BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    max_expires_at    BIGINT NOT NULL,
    renewals          BIGINT NOT NULL DEFAULT 0,
    revoked_at        BIGINT,
    last_error        TEXT,
    idempotency_key   TEXT,
    issued_by_kind    TEXT NOT NULL,
    issued_by_id      TEXT NOT NULL,
    -- With an idempotency key, the password sealed for showing it again to the same caller
    -- until `reveal_until`; erased after.
    reveal_dek_id     TEXT REFERENCES deks (id),
    reveal_ct         BLOB,
    reveal_until      BIGINT,
    -- Revocation attempts that failed, and when the next one is due.
    attempts          BIGINT NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT,
    -- A replica revoking it holds it until then.
    locked_until      BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (dynamic_secret_id, idempotency_key)
);
CREATE INDEX leases_dynamic_secret_id ON leases (dynamic_secret_id, id);
CREATE INDEX leases_live ON leases (dynamic_secret_id, state);
CREATE INDEX leases_due ON leases (state, expires_at);
CREATE INDEX leases_retry ON leases (state, next_attempt_at);
