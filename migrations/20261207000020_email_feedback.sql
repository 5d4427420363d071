-- What happens to an email after the relay's 250: bounces, complaints, unsubscribes,
-- and the suppression list they feed (see core/src/email_feedback.rs).

-- Three statuses an email delivery can end in (core/src/delivery_status.rs makes
-- every change): bounced (a permanent bounce after it was accepted), complained (its
-- recipient reported it as spam), suppressed (never sent: the address is suppressed).
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'in_flight', 'succeeded', 'retrying', 'failed', 'cancelled',
                      'bounced', 'complained', 'suppressed'));

-- The history's status filter for the new statuses (rare, like failed and cancelled).
CREATE INDEX deliveries_feedback_idx ON deliveries (status, notification_id)
    WHERE status IN ('bounced', 'complained', 'suppressed');

-- Event types are sorted into categories a person can unsubscribe from; transactional
-- mail (password resets, security notices) is never unsubscribable.
ALTER TABLE event_types
    ADD COLUMN category text NOT NULL DEFAULT 'general' CHECK (category ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    ADD COLUMN transactional boolean NOT NULL DEFAULT false;

-- Addresses Herald does not send to. One row per address and category; category NULL
-- is every category. A bounce, a complaint, repeated soft bounces or an admin suppress
-- every email to the address, transactional included; an unsubscribe only the
-- non-transactional mail of its category (or of all, category NULL).
CREATE TABLE suppressions (
    id          bigserial PRIMARY KEY,
    -- Lower-cased bare address (herald_ordering_key('email', …)).
    address     text NOT NULL CHECK (address = lower(address) AND address LIKE '%@%'),
    category    text,
    reason      text NOT NULL CHECK (reason IN ('bounce', 'complaint', 'unsubscribe', 'soft_bounces', 'manual')),
    -- What was reported (an enhanced status code and diagnostic, capped), never a body.
    detail      text,
    -- Where it came from: inbound_smtp, ses, postmark, one_click, preferences, api, console.
    source      text NOT NULL,
    delivery_id uuid REFERENCES deliveries (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (address, category)
);
CREATE INDEX suppressions_created_idx ON suppressions (created_at, id);

-- Why an email to `addr` (a bare address) of `category` must not be sent, or NULL.
-- The one definition, used when accepting and again when sending.
CREATE FUNCTION herald_suppression(addr text, category text, transactional boolean) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT 'the address is suppressed (' || s.reason
           || CASE WHEN s.category IS NOT NULL THEN ', category ' || s.category ELSE '' END
           || ' since ' || to_char(s.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') || ')'
    FROM suppressions s
    WHERE s.address = lower(addr)
      AND (s.reason <> 'unsubscribe'
           OR (NOT coalesce(transactional, false) AND (s.category IS NULL OR s.category = herald_suppression.category)))
    ORDER BY (s.reason = 'unsubscribe'), s.id
    LIMIT 1
$$;

-- Reports about a delivered email: permanent and soft bounces, complaints, unsubscribes.
CREATE TABLE email_feedback (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    delivery_id uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('bounce', 'soft_bounce', 'complaint', 'unsubscribe')),
    source      text NOT NULL,
    -- RFC 3463 enhanced status code of a bounce (5.1.1), if reported.
    status_code text,
    detail      text
);
CREATE INDEX email_feedback_delivery_idx ON email_feedback (delivery_id);
CREATE INDEX email_feedback_at_idx ON email_feedback (at);

-- Which SMTP relay made an email attempt (HERALD_SMTP_URL may list several).
ALTER TABLE attempts ADD COLUMN relay text;

-- An address's email deliveries (soft-bounce runs look for its last clean delivery).
CREATE INDEX deliveries_email_address_idx ON deliveries (herald_ordering_key('email', target), id)
    WHERE channel = 'email';
