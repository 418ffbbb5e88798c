-- Organizations, members, invitations, teams, projects, environments, project grants,
-- per-environment role policies, data-encryption keys, secrets and their versions,
-- service tokens; audit events gain their organization, project and environment.

CREATE TABLE organizations (
    id         TEXT PRIMARY KEY NOT NULL,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    -- Increases with every secret change anywhere in the organization: the validator of reads
    -- whose references may reach other environments.
    secrets_revision BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE org_members (
    org_id     TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX org_members_user_id ON org_members (user_id);

CREATE TABLE invitations (
    id          TEXT PRIMARY KEY NOT NULL,
    org_id      TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email       TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    token_hash  TEXT NOT NULL UNIQUE,
    invited_by  TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    accepted_at BIGINT,
    accepted_by TEXT REFERENCES users (id) ON DELETE SET NULL,
    revoked_at  BIGINT
);
CREATE INDEX invitations_org_id ON invitations (org_id, id);

CREATE TABLE teams (
    id         TEXT PRIMARY KEY NOT NULL,
    org_id     TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    slug       TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, slug)
);

CREATE TABLE team_members (
    team_id    TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user_id ON team_members (user_id);

CREATE TABLE projects (
    id         TEXT PRIMARY KEY NOT NULL,
    org_id     TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    slug       TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, slug)
);

CREATE TABLE environments (
    id         TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    slug       TEXT NOT NULL,
    name       TEXT NOT NULL,
    position   BIGINT NOT NULL,
    revision   BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, slug)
);

-- A project role given to one member or one team.
CREATE TABLE project_grants (
    id         TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id    TEXT REFERENCES users (id) ON DELETE CASCADE,
    team_id    TEXT REFERENCES teams (id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'viewer')),
    created_at BIGINT NOT NULL,
    CHECK ((user_id IS NULL) <> (team_id IS NULL)),
    UNIQUE (project_id, user_id),
    UNIQUE (project_id, team_id)
);
CREATE INDEX project_grants_user_id ON project_grants (user_id);
CREATE INDEX project_grants_team_id ON project_grants (team_id);

-- What a project role may do in one environment, overriding the role's default.
CREATE TABLE environment_policies (
    environment_id TEXT NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    role           TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'viewer')),
    access         TEXT NOT NULL CHECK (access IN ('none', 'read', 'read-write')),
    PRIMARY KEY (environment_id, role)
);

-- Per-project data-encryption keys, stored only wrapped by a key-encryption key.
CREATE TABLE deks (
    id          TEXT PRIMARY KEY NOT NULL,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    kek_id      TEXT NOT NULL,
    wrapped     BLOB NOT NULL,
    encryptions BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT,
    UNIQUE (project_id, version)
);
CREATE INDEX deks_kek_id ON deks (kek_id);

CREATE TABLE secrets (
    id              TEXT PRIMARY KEY NOT NULL,
    environment_id  TEXT NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    key             TEXT NOT NULL,
    current_version BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    deleted_at      BIGINT,
    UNIQUE (environment_id, key)
);

-- Immutable versions; values and comments sealed with the project's DEK.
CREATE TABLE secret_versions (
    secret_id  TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    dek_id     TEXT NOT NULL REFERENCES deks (id),
    value_ct   BLOB NOT NULL,
    comment_ct BLOB,
    -- 1 when the value contains `${…}` references (the value itself stays sealed).
    has_references BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    actor_type TEXT NOT NULL,
    actor_id   TEXT,
    PRIMARY KEY (secret_id, version)
);
CREATE INDEX secret_versions_dek_id ON secret_versions (dek_id);

-- Machine identities of an organization, limited to one project and some environments.
CREATE TABLE service_tokens (
    id                  TEXT PRIMARY KEY NOT NULL,
    org_id              TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    project_id          TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    prefix              TEXT NOT NULL,
    token_hash          TEXT NOT NULL UNIQUE,
    previous_token_hash TEXT UNIQUE,
    previous_expires_at BIGINT,
    access              TEXT NOT NULL CHECK (access IN ('read', 'read-write')),
    created_by          TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT,
    last_used_at        BIGINT,
    revoked_at          BIGINT
);
CREATE INDEX service_tokens_org_id ON service_tokens (org_id, id);

CREATE TABLE service_token_environments (
    token_id       TEXT NOT NULL REFERENCES service_tokens (id) ON DELETE CASCADE,
    environment_id TEXT NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    PRIMARY KEY (token_id, environment_id)
);

ALTER TABLE audit_events ADD COLUMN org_id TEXT;
ALTER TABLE audit_events ADD COLUMN project_id TEXT;
ALTER TABLE audit_events ADD COLUMN environment_id TEXT;
CREATE INDEX audit_events_org_id ON audit_events (org_id, id);
