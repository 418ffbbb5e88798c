-- Password-reset links: at most one per user (a new link replaces the previous one), stored as
-- the SHA-256 of its token. `created_by` is the owner or admin who issued it, in `org_id`;
-- both are null for a link issued by the server's administrator (`coffer-server admin
-- reset-password`). The link dies with its user, its issuer and its organization.
CREATE TABLE password_resets (
    user_id    TEXT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_by TEXT REFERENCES users (id) ON DELETE CASCADE,
    org_id     TEXT REFERENCES organizations (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX password_resets_created_by ON password_resets (created_by);
CREATE INDEX password_resets_org_id ON password_resets (org_id);
