-- Herald's message store. See ARCHITECTURE.md for the invariants each table keeps.

CREATE TABLE templates (
    key               text PRIMARY KEY CHECK (key ~ '^[a-z0-9][a-z0-9_.-]{0,127}$'),
    channel           text NOT NULL DEFAULT 'email' CHECK (channel IN ('email')),
    published_version integer,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- Immutable: a change is a new version.
CREATE TABLE template_versions (
    template_key text NOT NULL REFERENCES templates(key) ON DELETE CASCADE,
    version      integer NOT NULL CHECK (version > 0),
    subject      text NOT NULL,
    html_body    text NOT NULL,
    text_body    text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_key, version)
);

CREATE TABLE event_types (
    name           text PRIMARY KEY CHECK (name ~ '^[a-zA-Z0-9_]+(\.[a-zA-Z0-9_]+)*$'),
    description    text NOT NULL DEFAULT '',
    payload_schema jsonb,
    -- Routing: which email template to render, and where in the payload the recipient is.
    email_template text REFERENCES templates(key),
    recipient_path text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    -- The public, non-secret part of the key used to find the row.
    prefix       text NOT NULL UNIQUE,
    -- SHA-256 of the whole key; the key itself is never stored.
    key_hash     bytea NOT NULL,
    scopes       text[] NOT NULL,
    owner        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);

CREATE TABLE notifications (
    id          uuid PRIMARY KEY,          -- UUIDv7: time-ordered
    event_type  text NOT NULL REFERENCES event_types(name),
    payload     jsonb NOT NULL,
    recipients  text[] NOT NULL DEFAULT '{}',
    api_key_id  uuid REFERENCES api_keys(id),
    owner       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_owner_idx ON notifications (owner, id);

-- Idempotency keys, written in the same transaction as the notification they answer for.
CREATE TABLE idempotency_keys (
    owner           text NOT NULL,
    key             text NOT NULL,
    request_hash    bytea NOT NULL,
    notification_id uuid REFERENCES notifications(id) ON DELETE CASCADE,
    response_status smallint,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, key)
);

CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,      -- UUIDv7; also the email Message-ID and webhook-id
    notification_id uuid NOT NULL REFERENCES notifications(id) ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel IN ('email', 'webhook')),
    target          text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'in_flight', 'succeeded', 'retrying', 'failed', 'cancelled')),
    -- Rendered content, fixed at acceptance so every retry sends the same thing.
    content         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    -- While in_flight: until when the worker that started the attempt owns it.
    lease_until     timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_notification_idx ON deliveries (notification_id);
CREATE INDEX deliveries_open_idx ON deliveries (status, next_attempt_at)
    WHERE status IN ('pending', 'in_flight', 'retrying');

-- Every try of a delivery. Append-only.
CREATE TABLE attempts (
    delivery_id      uuid NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    attempt_no       integer NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    outcome          text NOT NULL CHECK (outcome IN ('succeeded', 'transient_failure', 'permanent_failure')),
    smtp_code        smallint,
    smtp_reply       text,
    http_status      smallint,
    response_excerpt text,
    error            text,
    PRIMARY KEY (delivery_id, attempt_no)
);

-- The outbox. Rows are written in the same transaction as the work they announce.
-- With HERALD_BUS=postgres this table *is* the bus: dispatchers claim rows with
-- FOR UPDATE SKIP LOCKED and delete them once the outcome is recorded. A claim is a
-- lease (`claimed_until`): a crashed worker's rows become claimable again when it ends.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    topic         text NOT NULL,
    key           text NOT NULL,
    payload       jsonb NOT NULL,
    available_at  timestamptz NOT NULL DEFAULT now(),
    claimed_until timestamptz,
    claim_token   uuid,
    deliveries    integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_claimable_idx ON outbox (topic, available_at, id);

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
