//! The audit log: every administrative change recorded once, in the same transaction,
//! with its actor and source; append-only in the database; `herald audit verify`
//! catches an entry changed or removed behind Herald's back.

use std::time::Duration;

use herald_testkit::receiver::{Receiver, Respond};
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;

/// What the database's own role can do without `HERALD_SECRET_KEY` (triggers off):
/// recompute every entry's hash, from the first, in the unkeyed form.
const RECHAIN: &str = "UPDATE audit_log a SET prev_hash = x.prev, hash = x.hash FROM (
            WITH RECURSIVE c AS (
                SELECT seq, prev_hash AS prev, herald_audit_hash(prev_hash, seq, at, actor_kind, actor, owner, action,
                        target_kind, target, before, after, request_id, source) AS hash
                FROM audit_log WHERE seq = 1
                UNION ALL
                SELECT l.seq, c.hash, herald_audit_hash(c.hash, l.seq, l.at, l.actor_kind, l.actor, l.owner, l.action,
                        l.target_kind, l.target, l.before, l.after, l.request_id, l.source)
                FROM audit_log l JOIN c ON l.seq = c.seq + 1)
            SELECT * FROM c) x WHERE a.seq = x.seq";

const ENDPOINT_SCOPES: &[&str] = &["endpoints:read", "endpoints:write", "notifications:write", "notifications:read"];

async fn entries(h: &Herald, admin: &str, query: &str) -> Vec<Value> {
    let (status, v) = h.call(Method::GET, &format!("/api/v1/audit{query}"), admin, None).await;
    assert_eq!(status, 200, "{v}");
    v["data"].as_array().unwrap().clone()
}

fn actions(list: &[Value]) -> Vec<String> {
    let mut a: Vec<String> = list.iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect();
    a.reverse(); // oldest first
    a
}

#[tokio::test]
async fn every_change_is_recorded_once_with_its_actor() {
    let (_sink, h, _key) = setup(&[], &[]).await;
    let admin = h.api_key(&["admin"]).await;
    let owner = h.api_key_for(ENDPOINT_SCOPES, Some("acme"), None).await;
    let rx = Receiver::start().await;

    let ep = h.create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["user.registered"]})).await;
    let id = ep["id"].as_str().unwrap();
    let path = format!("/api/v1/endpoints/{id}");
    assert_eq!(h.call(Method::PATCH, &path, &owner, Some(&json!({"description": "CRM"}))).await.0, 200);
    assert_eq!(h.call(Method::GET, &format!("{path}/secret"), &owner, None).await.0, 200);
    assert_eq!(h.call(Method::POST, &format!("{path}/secret/rotate"), &owner, None).await.0, 200);
    assert_eq!(h.call(Method::POST, &format!("{path}/disable"), &owner, None).await.0, 200);
    assert_eq!(h.call(Method::POST, &format!("{path}/enable"), &owner, None).await.0, 200);
    // Refused changes leave no entry.
    let bad = json!({"url": "ftp://example.test/"});
    assert_eq!(h.call(Method::POST, "/api/v1/endpoints", &owner, Some(&bad)).await.0, 400);
    assert_eq!(h.call(Method::PATCH, &path, &owner, Some(&json!({"rate_limit": 0}))).await.0, 400);
    assert_eq!(h.call(Method::DELETE, &path, &owner, None).await.0, 204);
    // Reads change nothing and are not recorded (the secret and header reveals are).
    assert_eq!(h.call(Method::GET, "/api/v1/endpoints", &owner, None).await.0, 200);

    let all = entries(&h, &admin, "").await;
    let ours: Vec<Value> = all.iter().filter(|e| e["target"] == id).cloned().collect();
    assert_eq!(
        actions(&ours),
        [
            "endpoint.created",
            "endpoint.updated",
            "endpoint.secret.revealed",
            "endpoint.secret.rotated",
            "endpoint.disabled",
            "endpoint.enabled",
            "endpoint.deleted"
        ]
    );
    for e in &ours {
        assert_eq!(e["actor_kind"], "api_key", "{e}");
        assert_eq!(e["owner"], "team:acme");
        assert_eq!(e["source"], "127.0.0.1");
        assert!(e["request_id"].as_str().is_some_and(|r| r.len() >= 32), "{e}");
    }
    let updated = ours.iter().find(|e| e["action"] == "endpoint.updated").unwrap();
    assert_eq!(updated["before"]["description"], "");
    assert_eq!(updated["after"]["description"], "CRM");
    let deleted = ours.iter().find(|e| e["action"] == "endpoint.deleted").unwrap();
    assert_eq!(deleted["before"]["id"], id);
    assert!(!all.iter().any(|e| e.to_string().contains("whsec_")), "no secret is ever recorded");

    // The keys made by the CLI are on record too, with the CLI as their actor.
    let created: Vec<&Value> = all.iter().filter(|e| e["action"] == "api_key.created").collect();
    assert_eq!(created.len(), 3, "the test key, the admin key and the owner's key");
    assert!(created.iter().all(|e| e["actor_kind"] == "cli"));

    // Filters and keyset pagination.
    let page1 = entries(&h, &admin, &format!("?target={id}&limit=4")).await;
    assert_eq!(page1.len(), 4);
    let (_, v) = h.call(Method::GET, &format!("/api/v1/audit?target={id}&limit=4"), &admin, None).await;
    let next = v["next_before"].as_i64().unwrap();
    let page2 = entries(&h, &admin, &format!("?target={id}&limit=4&before={next}")).await;
    assert_eq!(page2.len(), 3);
    assert_eq!(entries(&h, &admin, "?action=endpoint.rotated").await.len(), 0);
    assert_eq!(entries(&h, &admin, "?action=endpoint.secret.rotated").await.len(), 1);

    // Only admins read the log.
    let (status, v) = h.call(Method::GET, "/api/v1/audit", &owner, None).await;
    assert_eq!(status, 403, "{v}");
    let (status, _) = h.call(Method::GET, "/api/v1/audit?limit=0", &admin, None).await;
    assert_eq!(status, 400);
    h.stop().await;
}

#[tokio::test]
async fn herald_disabling_an_endpoint_is_recorded_as_the_system() {
    let (_sink, h, key) = setup(&[], &[]).await;
    let admin = h.api_key(&["admin"]).await;
    let owner = h.api_key_for(ENDPOINT_SCOPES, Some("acme"), None).await;
    let gone = Receiver::start().await;
    gone.set_default(Respond::Status(410));
    let ep = h.create_endpoint(&owner, &json!({"url": gone.url("/"), "event_types": ["user.registered"]})).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    h.wait_terminal(&key, &id).await;
    let e = eventually(Duration::from_secs(20), "the system's entry", || async {
        let list = entries(&h, &admin, "?action=endpoint.disabled").await;
        list.into_iter().find(|e| e["target"] == ep["id"])
    })
    .await;
    assert_eq!(e["actor_kind"], "system");
    assert!(e["after"]["disabled_reason"].as_str().unwrap().contains("410"));
    h.stop().await;
}

#[tokio::test]
async fn the_log_is_append_only_and_verify_catches_tampering() {
    let (_sink, h, _key) = setup(&[], &[]).await;
    let owner = h.api_key_for(ENDPOINT_SCOPES, Some("acme"), None).await;
    let rx = Receiver::start().await;
    for i in 0..3 {
        h.create_endpoint(&owner, &json!({"url": rx.url(&format!("/{i}")), "event_types": ["*"]})).await;
    }
    let (ok, out, err) = run_cli(&h.env, &["audit", "verify"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("OK: 5 entries, head "), "{out}");

    // Herald's own role cannot change or remove an entry.
    let e = sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3").execute(&h.db).await.unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    assert!(sqlx::query("DELETE FROM audit_log WHERE seq = 3").execute(&h.db).await.is_err());
    assert!(sqlx::query("TRUNCATE audit_log").execute(&h.db).await.is_err());

    // A superuser who switches the triggers off can; verify then names the entry.
    let mut conn = h.db.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica").execute(&mut *conn).await.unwrap();
    sqlx::query("UPDATE audit_log SET after = jsonb_set(after, '{url}', '\"http://evil.test/\"') WHERE seq = 4")
        .execute(&mut *conn)
        .await
        .unwrap();
    let (ok, _, err) = run_cli(&h.env, &["audit", "verify"]).await;
    assert!(!ok);
    assert!(err.contains("broken at entry 4: its content does not match its hash"), "{err}");

    // Herald's own role cannot rewrite the chain either: recomputing the edited entry's
    // hash and every later one without HERALD_SECRET_KEY (the unkeyed SHA-256 that the
    // database can compute) does not pass, since every entry is keyed.
    let (ok, checkpoint, err) = run_cli(&h.env, &["audit", "checkpoint"]).await;
    assert!(!ok, "a broken chain is not checkpointed: {checkpoint}");
    assert!(err.contains("broken at entry 4"), "{err}");
    sqlx::query(RECHAIN).execute(&mut *conn).await.unwrap();
    let (ok, _, err) = run_cli(&h.env, &["audit", "verify"]).await;
    assert!(!ok, "a chain rewritten without the key must not verify");
    assert!(err.contains("broken at entry 1: its content does not match its hash"), "{err}");
    // A removed entry is a gap.
    sqlx::query("DELETE FROM audit_log WHERE seq = 1").execute(&mut *conn).await.unwrap();
    let (ok, _, err) = run_cli(&h.env, &["audit", "verify"]).await;
    assert!(!ok);
    assert!(err.contains("broken at entry 1: entry 1 is missing"), "{err}");
    drop(conn);
    h.stop().await;
}

/// A signed checkpoint kept outside the database detects what the chain alone cannot:
/// entries removed from its end, and a chain rewritten whole into the unkeyed form of
/// entries from before the chain was keyed.
#[tokio::test]
async fn a_checkpoint_kept_outside_detects_removal_and_rewriting() {
    let (_sink, h, _key) = setup(&[], &[]).await;
    let owner = h.api_key_for(ENDPOINT_SCOPES, Some("acme"), None).await;
    let rx = Receiver::start().await;
    for i in 0..2 {
        h.create_endpoint(&owner, &json!({"url": rx.url(&format!("/{i}")), "event_types": ["*"]})).await;
    }
    let (ok, line, err) = run_cli(&h.env, &["audit", "checkpoint"]).await;
    assert!(ok, "{err}");
    let line = line.trim().to_owned();
    assert!(line.starts_with("herald-audit-checkpoint v1 seq=4 hash="), "{line}");
    let (ok, out, err) = run_cli(&h.env, &["audit", "verify", "--since-checkpoint", &line]).await;
    assert!(ok && out.starts_with("OK: 4 entries"), "{out} {err}");
    // From a file too; a forged or altered line is refused.
    let file = std::env::temp_dir().join(format!("herald-checkpoint-{}", uuid::Uuid::new_v4()));
    std::fs::write(&file, &line).unwrap();
    let arg = format!("@{}", file.display());
    assert!(run_cli(&h.env, &["audit", "verify", "--since-checkpoint", &arg]).await.0);
    let forged = line.replace("seq=4", "seq=3");
    let (ok, _, err) = run_cli(&h.env, &["audit", "verify", "--since-checkpoint", &forged]).await;
    assert!(!ok && err.contains("tag is not valid"), "{err}");
    // Later entries verify from the checkpoint on.
    h.create_endpoint(&owner, &json!({"url": rx.url("/2"), "event_types": ["*"]})).await;
    let (ok, out, err) = run_cli(&h.env, &["audit", "verify", "--since-checkpoint", &line]).await;
    assert!(ok && out.starts_with("OK: 5 entries"), "{out} {err}");

    // The database's role rewrites the whole chain in the unkeyed form: the chain alone
    // cannot tell (it reports the entries as unkeyed), the checkpoint can.
    let mut conn = h.db.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica").execute(&mut *conn).await.unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3").execute(&mut *conn).await.unwrap();
    sqlx::query("UPDATE audit_log SET keyed = false").execute(&mut *conn).await.unwrap();
    sqlx::query(RECHAIN).execute(&mut *conn).await.unwrap();
    sqlx::query("DELETE FROM audit_checkpoints").execute(&mut *conn).await.unwrap();
    let (ok, out, _) = run_cli(&h.env, &["audit", "verify"]).await;
    assert!(ok && out.contains("5 written before the chain was keyed"), "{out}");
    let (ok, _, err) = run_cli(&h.env, &["audit", "verify", "--since-checkpoint", &line]).await;
    assert!(!ok && err.contains("broken at entry 4: the checkpoint's entry was rewritten"), "{err}");
    // Entries removed from the end leave an intact chain; the checkpoint sees them gone.
    sqlx::query("DELETE FROM audit_log WHERE seq >= 4").execute(&mut *conn).await.unwrap();
    let (ok, _, err) = run_cli(&h.env, &["audit", "verify", "--since-checkpoint", &line]).await;
    assert!(!ok && err.contains("the checkpoint's entry is gone"), "{err}");
    drop(conn);
    let _ = std::fs::remove_file(file);
    h.stop().await;
}

/// A client's `x-request-id` is recorded (and logged, and answered) only when it is
/// short and plain; a long one, or one with a newline, is replaced by one Herald makes.
#[tokio::test]
async fn a_hostile_request_id_is_replaced_not_recorded() {
    let (_sink, h, _key) = setup(&[], &[]).await;
    let admin = h.api_key(&["admin"]).await;
    let owner = h.api_key_for(ENDPOINT_SCOPES, Some("acme"), None).await;
    let rx = Receiver::start().await;
    let long = "r".repeat(5000);
    for (sent, kept) in [("req-7.a:b_c", true), (long.as_str(), false), ("two\tparts", false)] {
        let r = h
            .http
            .post(format!("{}/api/v1/endpoints", h.base))
            .bearer_auth(&owner)
            .header("x-request-id", sent)
            .json(&json!({"url": rx.url("/"), "event_types": ["*"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let answered = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        let recorded = entries(&h, &admin, &format!("?target={id}")).await[0]["request_id"].clone();
        assert_eq!(recorded.as_str(), Some(answered.as_str()));
        assert_eq!(answered == sent, kept, "{sent:.20}: answered {answered:.40}");
        if !kept {
            assert_eq!(answered.len(), 36, "a UUID of Herald's: {answered}");
        }
    }
    h.stop().await;
}
