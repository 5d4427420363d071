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

-- Caches of rows on the hot path (`core/src/cache.rs`) are emptied when their rows
-- change: one function notifies the channel its trigger names. Row triggers: only
-- statements that change rows notify (PostgreSQL folds the repeats of a transaction
-- into one notification).
CREATE FUNCTION herald_cache_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END $$;

-- The webhook dispatcher caches endpoints (URL, headers, decrypted secrets) between
-- batches.
CREATE TRIGGER endpoints_changed AFTER INSERT OR UPDATE OR DELETE ON endpoints
    FOR EACH ROW EXECUTE FUNCTION herald_cache_changed('herald_endpoints');
CREATE TRIGGER endpoint_secrets_changed AFTER INSERT OR UPDATE OR DELETE ON endpoint_secrets
    FOR EACH ROW EXECUTE FUNCTION herald_cache_changed('herald_endpoints');

-- The API caches keys by prefix: only changes that matter to authentication or
-- authorization notify (not the once-a-minute `last_used_at`).
CREATE TRIGGER api_keys_changed
    AFTER INSERT OR DELETE OR UPDATE OF key_hash, scopes, owner, revoked_at, rate_limit, addressable_owners, prefix
    ON api_keys FOR EACH ROW EXECUTE FUNCTION herald_cache_changed('herald_api_keys');

-- Accepting a notification reads its event type and published template from memory.
CREATE TRIGGER event_types_changed AFTER INSERT OR UPDATE OR DELETE ON event_types
    FOR EACH ROW EXECUTE FUNCTION herald_cache_changed('herald_catalog');
CREATE TRIGGER templates_changed AFTER INSERT OR UPDATE OR DELETE ON templates
    FOR EACH ROW EXECUTE FUNCTION herald_cache_changed('herald_catalog');
CREATE TRIGGER template_versions_changed AFTER INSERT OR UPDATE OR DELETE ON template_versions
    FOR EACH ROW EXECUTE FUNCTION herald_cache_changed('herald_catalog');
