-- Webhook endpoints, their signing secrets, owners' contact addresses, and the
-- operational events Herald emits about them.

-- UUIDv7 generated in SQL (PostgreSQL 15 has no uuidv7()): the 48-bit millisecond
-- timestamp over a random v4 UUID, version bits turned from 4 to 7.
CREATE FUNCTION herald_uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- Who owns endpoints (an API key's owner subject, later an OIDC subject) and where to
-- tell them when Herald disables one of their endpoints.
CREATE TABLE owners (
    subject    text PRIMARY KEY,
    email      text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE endpoints (
    id              uuid PRIMARY KEY,
    owner           text NOT NULL,
    url             text NOT NULL,
    description     text NOT NULL DEFAULT '',
    -- Filters: exact event type names, prefix wildcards ('user.*'), or '*' (every
    -- application event; operational events must be named).
    event_types     text[] NOT NULL CHECK (cardinality(event_types) > 0),
    enabled         boolean NOT NULL DEFAULT true,
    disabled_at     timestamptz,
    disabled_reason text,
    -- Requests per second; NULL = unlimited.
    rate_limit      integer CHECK (rate_limit > 0),
    headers         jsonb NOT NULL DEFAULT '{}',
    -- Overrides HERALD_WEBHOOK_RETRY_SCHEDULE for this endpoint.
    retry_schedule  text,
    -- Created with an admin key: receives operational events about every owner's endpoints.
    admin           boolean NOT NULL DEFAULT false,
    -- Since when every attempt has failed (NULL while healthy). Auto-disable reads it.
    failing_since   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX endpoints_owner_idx ON endpoints (owner, id);
CREATE INDEX endpoints_enabled_idx ON endpoints (id) WHERE enabled;

-- Signing secrets, AEAD-encrypted with HERALD_SECRET_KEY (nonce || ciphertext, the
-- endpoint id as associated data). The current one has expires_at NULL; rotated-out
-- ones keep signing until expires_at.
CREATE TABLE endpoint_secrets (
    endpoint_id uuid NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    generation  integer NOT NULL,
    sealed      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    PRIMARY KEY (endpoint_id, generation)
);

-- A resend starts a new round of attempts: the retry schedule restarts at round_start
-- (the number of attempts made before the round), and past attempts stay as they were.
ALTER TABLE deliveries ADD COLUMN round_start integer NOT NULL DEFAULT 0;

-- Webhook deliveries target an endpoint (deliveries.target = endpoint id).
CREATE INDEX deliveries_webhook_target_idx ON deliveries (target, created_at) WHERE channel = 'webhook';

-- Operational events are emitted by Herald itself; clients cannot post them, and the
-- '*' filter does not match them.
ALTER TABLE event_types ADD COLUMN operational boolean NOT NULL DEFAULT false;

-- Does an endpoint's filter list match an event type?
CREATE FUNCTION herald_filter_matches(filters text[], event text, operational boolean)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM unnest(filters) AS f
        WHERE f = event
           OR (f = '*' AND NOT operational)
           OR (f LIKE '%.*' AND starts_with(event, left(f, -1)))
    )
$$;

INSERT INTO templates (key, channel, published_version) VALUES ('endpoint-disabled', 'email', NULL);
INSERT INTO template_versions (template_key, version, subject, html_body, text_body) VALUES (
    'endpoint-disabled', 1,
    'Herald disabled your webhook endpoint',
    '<!doctype html><html><body><h1>Your webhook endpoint was disabled</h1><p>Endpoint <code>{{ endpoint.id }}</code> ({{ endpoint.url }}) was disabled at {{ disabled_at }}.</p><p>Reason: {{ reason }}</p><p>Fix the receiver, then enable the endpoint again and recover the failed deliveries.</p></body></html>',
    E'Your webhook endpoint was disabled.\n\nEndpoint {{ endpoint.id }} ({{ endpoint.url }}) was disabled at {{ disabled_at }}.\nReason: {{ reason }}\n\nFix the receiver, then enable the endpoint again and recover the failed deliveries.\n'
);
UPDATE templates SET published_version = 1 WHERE key = 'endpoint-disabled';

INSERT INTO event_types (name, description, email_template, operational) VALUES
    ('endpoint.disabled', 'Herald disabled a webhook endpoint (410 Gone, or failing for too long).', 'endpoint-disabled', true),
    ('webhook.test', 'A test event sent to one endpoint on request.', NULL, true);
