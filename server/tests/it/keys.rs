//! `/api/v1/api-keys`: callers manage their own keys — an owner only for themselves and
//! with at most their own scopes, an admin for anyone — and every change is audited.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;

#[tokio::test]
async fn owners_manage_their_own_keys_within_their_scopes() {
    let (_sink, h, other_owner_key) = setup(&[], &[]).await;
    let acme = h.api_key_for(&["endpoints:read", "endpoints:write"], Some("acme"), None).await;
    let admin = h.api_key(&["admin"]).await;

    let (status, k) = h
        .call(Method::POST, "/api/v1/api-keys", &acme, Some(&json!({"name": "ci", "scopes": ["endpoints:read"]})))
        .await;
    assert_eq!(status, 201, "{k}");
    assert_eq!(k["owner"], "team:acme");
    let new_key = k["key"].as_str().unwrap().to_owned();
    assert_eq!(h.call(Method::GET, "/api/v1/endpoints", &new_key, None).await.0, 200);
    assert_eq!(
        h.call(Method::POST, "/api/v1/endpoints", &new_key, Some(&json!({"url": "https://example.com/"}))).await.0,
        403
    );

    // Not more than one holds, not for someone else.
    for body in [
        json!({"name": "x", "scopes": ["admin"]}),
        json!({"name": "x", "scopes": ["notifications:write"]}),
        json!({"name": "x", "scopes": ["endpoints:read"], "owner": "globex"}),
    ] {
        let (status, v) = h.call(Method::POST, "/api/v1/api-keys", &acme, Some(&body)).await;
        assert_eq!(status, 403, "{body}: {v}");
        assert_eq!(v["type"], "urn:herald:problem:forbidden");
    }
    let (status, v) =
        h.call(Method::POST, "/api/v1/api-keys", &acme, Some(&json!({"name": "x", "scopes": ["everything"]}))).await;
    assert_eq!(status, 400, "{v}");
    let (status, _) = h.call(Method::POST, "/api/v1/api-keys", &acme, Some(&json!({"name": "", "scopes": []}))).await;
    assert_eq!(status, 400);

    // An owner sees only their keys; another owner's key is not found.
    let (_, list) = h.call(Method::GET, "/api/v1/api-keys", &acme, None).await;
    let owners: Vec<&str> = list["data"].as_array().unwrap().iter().map(|k| k["owner"].as_str().unwrap()).collect();
    assert_eq!(owners, ["team:acme", "team:acme"]);
    assert!(!list.to_string().contains("key_hash") && !list.to_string().contains(&new_key));
    let (_, theirs) = h.call(Method::GET, "/api/v1/api-keys", &other_owner_key, None).await;
    let foreign = theirs["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(h.call(Method::DELETE, &format!("/api/v1/api-keys/{foreign}"), &acme, None).await.0, 404);

    let id = k["id"].as_str().unwrap();
    assert_eq!(h.call(Method::DELETE, &format!("/api/v1/api-keys/{id}"), &acme, None).await.0, 204);
    assert_eq!(h.call(Method::GET, "/api/v1/endpoints", &new_key, None).await.0, 401, "a revoked key stops working");

    // An admin may make a key for any owner.
    let (status, v) = h
        .call(
            Method::POST,
            "/api/v1/api-keys",
            &admin,
            Some(&json!({"name": "globex", "scopes": ["admin"], "owner": "globex"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");

    let (_, created) = h.call(Method::GET, &format!("/api/v1/audit?target={id}"), &admin, None).await;
    let actions: Vec<&str> =
        created["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect::<Vec<_>>();
    assert_eq!(actions, ["api_key.revoked", "api_key.created"]);
    let entries: &Vec<Value> = created["data"].as_array().unwrap();
    assert!(entries.iter().all(|e| e["actor_kind"] == "api_key" && e["owner"] == "team:acme"));
    h.stop().await;
}

/// Keys are served from memory between changes; a revocation made by another process
/// (the CLI here) reaches the API by `NOTIFY`, within milliseconds, not at the cache's
/// 60 s expiry.
#[tokio::test]
async fn a_key_revoked_by_another_process_stops_working_at_once() {
    let (_sink, h, _key) = setup(&[], &[]).await;
    let key = h.api_key(&["endpoints:read"]).await;
    for _ in 0..3 {
        assert_eq!(h.call(Method::GET, "/api/v1/endpoints", &key, None).await.0, 200);
    }
    let prefix = key.split('_').nth(1).unwrap();
    let (ok, listing, _) = run_cli(&h.env, &["api-key", "list"]).await;
    assert!(ok);
    let id = listing.lines().find(|l| l.contains(prefix)).unwrap().split_whitespace().next().unwrap().to_owned();
    let (ok, _, err) = run_cli(&h.env, &["api-key", "revoke", &id]).await;
    assert!(ok, "{err}");
    eventually(std::time::Duration::from_secs(2), "the revoked key to be refused", || async {
        (h.call(Method::GET, "/api/v1/endpoints", &key, None).await.0 == 401).then_some(())
    })
    .await;
    // And an event type changed behind the API's back (another process) is read again.
    let writer = h.api_key(&["notifications:write"]).await;
    assert_eq!(h.post(&writer, &welcome("Ada", "ada@example.test")).await.status(), 202);
    sqlx::query(
        "UPDATE event_types SET payload_schema = '{\"type\": \"object\", \"required\": [\"must\"]}', updated_at = now()
         WHERE name = 'user.registered'",
    )
    .execute(&h.db)
    .await
    .unwrap();
    eventually(std::time::Duration::from_secs(2), "the new schema to apply", || async {
        (h.post(&writer, &welcome("Ada", "ada@example.test")).await.status() == 422).then_some(())
    })
    .await;
    h.stop().await;
}
