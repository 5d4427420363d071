-- Wake-ups per topic, and only for work a consumer can claim.
--
-- Before: one statement trigger notified `herald_outbox` after every INSERT on the
-- outbox, even one that inserted nothing, so every accepted notification woke every
-- consumer of every topic (and the relay), and most of them claimed nothing.
-- Now: `herald_outbox_<topic>` per topic with unclaimed rows in the statement. Rows
-- inserted already claimed (the fast lane: the API hands them to the dispatcher of its
-- own process) wake nobody; if that process dies, their lease ends and the next claim,
-- at the latest one poll interval later, takes them.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT DISTINCT topic FROM new_rows WHERE claim_token IS NULL LOOP
        PERFORM pg_notify('herald_outbox_' || t, '');
    END LOOP;
    RETURN NULL;
END $$;

DROP TRIGGER outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- The webhook dispatcher caches endpoints (URL, headers, decrypted secrets) between
-- batches; any change to an endpoint or its secrets tells it to forget them. Row
-- triggers: only statements that change rows notify (PostgreSQL folds the repeats of a
-- transaction into one notification).
CREATE FUNCTION endpoints_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_endpoints', '');
    RETURN NULL;
END $$;

CREATE TRIGGER endpoints_changed AFTER INSERT OR UPDATE OR DELETE ON endpoints
    FOR EACH ROW EXECUTE FUNCTION endpoints_changed();
CREATE TRIGGER endpoint_secrets_changed AFTER INSERT OR UPDATE OR DELETE ON endpoint_secrets
    FOR EACH ROW EXECUTE FUNCTION endpoints_changed();

-- The API caches keys by prefix; a change that matters to authentication or
-- authorization (not the once-a-minute `last_used_at`) tells every process to forget them.
CREATE FUNCTION api_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_api_keys', '');
    RETURN NULL;
END $$;

CREATE TRIGGER api_keys_changed
    AFTER INSERT OR DELETE OR UPDATE OF key_hash, scopes, owner, revoked_at, rate_limit, addressable_owners, prefix
    ON api_keys FOR EACH ROW EXECUTE FUNCTION api_keys_changed();

-- Accepting a notification reads its event type and published template from memory;
-- any change to them tells every process to read them again.
CREATE FUNCTION catalog_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_catalog', '');
    RETURN NULL;
END $$;

CREATE TRIGGER event_types_changed AFTER INSERT OR UPDATE OR DELETE ON event_types
    FOR EACH ROW EXECUTE FUNCTION catalog_changed();
CREATE TRIGGER templates_changed AFTER INSERT OR UPDATE OR DELETE ON templates
    FOR EACH ROW EXECUTE FUNCTION catalog_changed();
CREATE TRIGGER template_versions_changed AFTER INSERT OR UPDATE OR DELETE ON template_versions
    FOR EACH ROW EXECUTE FUNCTION catalog_changed();
