-- Portal links: a short-lived, single-owner, revocable link that opens the owners'
-- portal for one owner without an account at the identity provider (like Svix's app
-- portal). Only the token's SHA-256 is kept.
CREATE TABLE portal_links (
    id          uuid PRIMARY KEY,
    owner       text NOT NULL,
    token_hash  bytea NOT NULL UNIQUE,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX portal_links_owner_idx ON portal_links (owner, id);
