-- One namespace for owners, in which two kinds can never meet: `team:<name>` (a team
-- from the provider's team claim, or a name an admin gives), `user:<subject>` (a person
-- without a team), `client:<id>` (an API client holding the provider's tokens) and
-- `key:<id>` (a key that is its own owner). Before, a team and an API client of the
-- same name were one owner. Bare names stored until now were teams, client ids or
-- admins' names for teams: they become teams.
CREATE FUNCTION herald_owner_kind(owner text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN owner ~ '^(team|user|client|key):' THEN owner ELSE 'team:' || owner END
$$;

UPDATE endpoints SET owner = herald_owner_kind(owner) WHERE owner !~ '^(team|user|client|key):';
UPDATE api_keys SET owner = herald_owner_kind(owner) WHERE owner !~ '^(team|user|client|key):';
UPDATE api_keys SET addressable_owners = ARRAY(SELECT herald_owner_kind(o) FROM unnest(addressable_owners) o)
WHERE addressable_owners IS NOT NULL;
UPDATE notifications SET owner = herald_owner_kind(owner) WHERE owner !~ '^(team|user|client|key):';
UPDATE idempotency_keys SET owner = herald_owner_kind(owner) WHERE owner !~ '^(team|user|client|key):';
UPDATE owners SET subject = herald_owner_kind(subject) WHERE subject !~ '^(team|user|client|key):';
UPDATE users SET owner = herald_owner_kind(owner) WHERE owner !~ '^(team|user|client|key):';
UPDATE portal_links SET owner = herald_owner_kind(owner) WHERE owner !~ '^(team|user|client|key):';
UPDATE event_type_grants SET grantee = herald_owner_kind(grantee) WHERE grantee !~ '^(team|user|client|key):';

DROP FUNCTION herald_owner_kind(text);
