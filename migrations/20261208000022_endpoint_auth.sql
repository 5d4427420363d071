-- Authenticating to endpoints: OAuth 2.0 client credentials. `auth` holds what may be
-- shown ({"type": "oauth2", "token_url", "client_id", "scope"}); the client secret is
-- sealed at rest like signing secrets (`auth_sealed`, associated data of its own).
ALTER TABLE endpoints ADD COLUMN auth jsonb;
ALTER TABLE endpoints ADD COLUMN auth_sealed bytea;
ALTER TABLE endpoints ADD CONSTRAINT endpoints_auth_sealed CHECK ((auth IS NULL) = (auth_sealed IS NULL));
