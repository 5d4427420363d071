-- Email tracking (opens and clicks): opted into per template version, recorded as
-- events. With HERALD_TRACKING=full an event names its delivery; with anonymous it
-- names only the template (delivery_id NULL), so nothing is kept per recipient.
ALTER TABLE template_versions
    ADD COLUMN track_opens  boolean NOT NULL DEFAULT false,
    ADD COLUMN track_clicks boolean NOT NULL DEFAULT false;

-- Which email deliveries track, and with which template: copied from the rendered
-- content when accepted, so the dashboard's rates never read (detoast) the content.
ALTER TABLE deliveries
    ADD COLUMN email_template text,
    ADD COLUMN tracked boolean NOT NULL DEFAULT false;

CREATE TABLE email_events (
    id               bigserial PRIMARY KEY,
    at               timestamptz NOT NULL,
    delivery_id      uuid REFERENCES deliveries (id) ON DELETE CASCADE,
    template_key     text NOT NULL,
    template_version integer NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('open', 'click')),
    -- Clicks: the link's number in the email (its URL is read from the stored delivery).
    link_index       integer CHECK ((kind = 'click') = (link_index IS NOT NULL)),
    -- NULL: a person. Otherwise why it is not counted as one: 'head' (a HEAD request),
    -- 'proxy' (a known mail-privacy or link-scanning proxy), 'too_soon' (within a
    -- second of delivery, before a person could have opened it).
    machine          text CHECK (machine IN ('head', 'proxy', 'too_soon'))
);
CREATE INDEX email_events_delivery_idx ON email_events (delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX email_events_at_idx ON email_events (at);

-- Herald's own events about tracked emails: internal (admins' endpoints) until an
-- admin grants them; an owner granted them receives only those about its own
-- notifications.
INSERT INTO event_types (name, description, operational, visibility) VALUES
    ('email.opened', 'A person opened a tracked email (the first open of a delivery).', true, 'internal'),
    ('email.clicked', 'A person clicked a link of a tracked email (the first click of each link of a delivery).', true, 'internal');
