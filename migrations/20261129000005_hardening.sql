-- Hardening: redelivery counting, publish tracking for the sweeper, sealed endpoint
-- headers, per-key rate limits, retention indexes, one ordering key.

-- Attempts started without their outcome being recorded since the last recorded one.
-- A delivery whose attempt keeps failing to record is dead-lettered (and failed) after
-- HERALD_BUS_MAX_REDELIVERIES such starts, instead of being re-sent forever.
ALTER TABLE deliveries ADD COLUMN unrecorded_starts integer NOT NULL DEFAULT 0;

-- Kafka: when the relay last handed this delivery's bus message to the broker. The
-- sweeper leaves deliveries alone whose current message is published (waiting in
-- consumer lag is not being lost).
ALTER TABLE deliveries ADD COLUMN published_at timestamptz;

-- Custom header values sealed like signing secrets (XChaCha20-Poly1305, endpoint id as
-- associated data); `headers` keeps the names only, each mapped to "".
ALTER TABLE endpoints ADD COLUMN headers_sealed bytea;

-- Requests per second for this key; NULL: HERALD_API_RATE_LIMIT.
ALTER TABLE api_keys ADD COLUMN rate_limit integer CHECK (rate_limit IS NULL OR rate_limit >= 0);

-- Retention works through these in small batches (notifications by their time-ordered
-- UUIDv7 primary key, so accepting one maintains no extra index).
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
CREATE INDEX dead_letters_created_idx ON dead_letters (created_at);

-- The bus ordering key of a delivery: the lowercased address for email (the mailbox's
-- address when the target has a display name), the endpoint id for webhooks. The
-- processor computes the same in Rust (processor::ordering_key).
CREATE FUNCTION herald_ordering_key(channel text, target text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN channel = 'email'
                THEN lower(btrim(coalesce(substring(target from '<([^<>]*)>\s*$'), target)))
                ELSE target END
$$;
