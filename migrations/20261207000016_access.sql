-- One access policy (core/src/access.rs), and the rows and functions it needs.

-- Which rows a caller sees: its own owner's, or every row for an admin. Every owner-
-- scoped query calls this instead of writing the rule out. Plain SQL, so the planner
-- inlines it (an index on owner still serves `WHERE herald_owns(owner, $1, false)`).
CREATE FUNCTION herald_owns(row_owner text, caller_owner text, caller_admin boolean) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT caller_admin OR row_owner = caller_owner
$$;

-- Which endpoints a caller manages: an endpoint with admin reach (made by an admin: it
-- receives every owner's operational events and internal event types) is managed by
-- admins only, whoever else shares its owner name.
CREATE FUNCTION herald_manages(row_owner text, row_admin boolean, caller_owner text, caller_admin boolean)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT caller_admin OR (row_owner = caller_owner AND NOT row_admin)
$$;

-- Who may receive an event type, in one place: admins' endpoints always; every owner
-- for `public`; the grantees for `granted`; nobody else (`internal`). The fan-out reads
-- a notification's visibility and grantees once and calls herald_visible per endpoint
-- (plain SQL without a subquery, so the planner inlines it); the catalog and the
-- subscription check call herald_may_receive, which reads them and calls the same.
CREATE FUNCTION herald_visible(visibility text, grantees text[], owner text, admin boolean) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT admin OR visibility = 'public' OR (visibility = 'granted' AND owner = ANY(grantees))
$$;

CREATE OR REPLACE FUNCTION herald_may_receive(event text, owner text, admin boolean) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT herald_visible(e.visibility,
                                           ARRAY(SELECT g.grantee FROM event_type_grants g WHERE g.event_type = e.name),
                                           owner, admin)
                     FROM event_types e WHERE e.name = event), false)
$$;

-- Who made an endpoint (`<actor kind>:<actor id>`), so that its admin reach goes when
-- its creator's role does (an admin logging in as an owner, an admin key revoked).
ALTER TABLE endpoints ADD COLUMN created_by text;
UPDATE endpoints e SET created_by = a.actor_kind || ':' || a.actor
FROM audit_log a WHERE a.action = 'endpoint.created' AND a.target = e.id::text;
-- Looked up at every login of an owner and every key revocation (revoke_admin_reach).
CREATE INDEX endpoints_admin_reach_idx ON endpoints (created_by) WHERE admin;

-- Keys made from portal links outlived them; a portal visitor can make none now, and
-- those it made end here.
UPDATE api_keys SET revoked_at = now()
WHERE revoked_at IS NULL
  AND id::text IN (SELECT target FROM audit_log WHERE action = 'api_key.created' AND actor LIKE 'portal:%');

-- The audit chain, keyed: from here on each entry's hash is HMAC-SHA256 under a key
-- derived from HERALD_SECRET_KEY, which the database never sees, over the previous
-- hash and the canonical content (computed below, by the database, so both sides read
-- the same bytes). Entries written before are marked unkeyed and keep their SHA-256.
ALTER TABLE audit_log ADD COLUMN keyed boolean NOT NULL DEFAULT false;

CREATE FUNCTION herald_audit_canonical(seq bigint, at timestamptz, actor_kind text, actor text, owner text,
                                       action text, target_kind text, target text, before jsonb, after jsonb,
                                       request_id text, source text)
RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT convert_to(jsonb_build_array(
        seq, (extract(epoch FROM at) * 1000000)::bigint, actor_kind, actor, owner, action, target_kind, target,
        before, after, request_id, source)::text, 'UTF8')
$$;

-- Verified points of the chain: an entry's sequence number and hash, with a tag (HMAC
-- under the same key) so that the database alone cannot make one. The console verifies
-- from the newest valid checkpoint instead of from the first entry.
CREATE TABLE audit_checkpoints (
    seq  bigint PRIMARY KEY,
    hash bytea NOT NULL,
    tag  bytea NOT NULL,
    at   timestamptz NOT NULL DEFAULT now()
);
