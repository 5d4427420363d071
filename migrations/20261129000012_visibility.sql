-- Who may receive an event type's webhooks: `internal` (admins' endpoints only),
-- `public` (every owner; the default, as before), or `granted` (the owners listed in
-- event_type_grants, an owner being a team or user:<subject>). Checked when an endpoint
-- subscribes and again when each notification fans out, so a changed grant applies to
-- the next notification.
ALTER TABLE event_types ADD COLUMN visibility text NOT NULL DEFAULT 'public'
    CHECK (visibility IN ('internal', 'public', 'granted'));

CREATE TABLE event_type_grants (
    event_type text NOT NULL REFERENCES event_types (name) ON DELETE CASCADE,
    grantee    text NOT NULL,
    PRIMARY KEY (event_type, grantee)
);

-- Herald's own events go only to the owner they are about, whatever this says.
-- May `owner` (an admin's endpoint when `admin`) receive `event`?
CREATE FUNCTION herald_may_receive(event text, owner text, admin boolean) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT admin OR EXISTS (
        SELECT 1 FROM event_types e
        WHERE e.name = event
          AND (e.visibility = 'public'
               OR (e.visibility = 'granted'
                   AND EXISTS (SELECT 1 FROM event_type_grants g WHERE g.event_type = e.name AND g.grantee = owner)))
    )
$$;

-- An API key may be limited to the owners whose endpoints its notifications may reach
-- (NULL: any), so one customer's integration cannot send into another's endpoints.
ALTER TABLE api_keys ADD COLUMN addressable_owners text[];
