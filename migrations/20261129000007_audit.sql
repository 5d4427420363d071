-- The audit log: append-only, hash-chained. Every administrative change (endpoints,
-- secrets, resends, API keys, Herald's own disabling) writes one row in the same
-- transaction as the change. Notifications and delivery attempts are not in it: they
-- are their own append-only records.
--
-- Chain: hash = sha256(prev_hash || canonical content), prev_hash of the first row is
-- 32 zero bytes. Writers take the advisory lock below, so the chain never forks, and
-- seq has no gaps. UPDATE, DELETE and TRUNCATE are refused by triggers.
CREATE TABLE audit_log (
    seq         bigint PRIMARY KEY,
    at          timestamptz NOT NULL,
    actor_kind  text NOT NULL CHECK (actor_kind IN ('user', 'api_key', 'client', 'system', 'cli')),
    actor       text NOT NULL,
    owner       text,
    action      text NOT NULL,
    target_kind text,
    target      text,
    before      jsonb,
    after       jsonb,
    request_id  text,
    source      text,
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL
);
CREATE INDEX audit_log_action_idx ON audit_log (action, seq);
CREATE INDEX audit_log_target_idx ON audit_log (target, seq);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, seq);

-- The canonical content of a row, hashed: a JSON array in a fixed order, the time as
-- microseconds since the epoch (independent of the session's time zone).
CREATE FUNCTION herald_audit_hash(prev bytea, seq bigint, at timestamptz, actor_kind text, actor text, owner text,
                                  action text, target_kind text, target text, before jsonb, after jsonb,
                                  request_id text, source text)
RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(prev || convert_to(jsonb_build_array(
        seq, (extract(epoch FROM at) * 1000000)::bigint, actor_kind, actor, owner, action, target_kind, target,
        before, after, request_id, source)::text, 'UTF8'))
$$;

CREATE FUNCTION herald_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % is refused', TG_OP;
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION herald_audit_refuse();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION herald_audit_refuse();
