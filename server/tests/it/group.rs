//! Group commit (`notifications::accept`): notifications accepted at the same time are
//! inserted by one statement and one durable commit, each answered with its own result
//! only after it; one that cannot be stored fails alone.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use herald_testkit::receiver::Receiver;
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;

#[tokio::test]
async fn concurrent_notifications_are_committed_in_groups_each_answered_with_its_own() {
    let (_sink, h, _) = setup(&[], &[]).await;
    let admin = h.api_key(&["admin"]).await;
    let scopes = ["endpoints:write", "endpoints:read", "notifications:write"];
    let rx = Receiver::start().await;
    // Two owners with an endpoint each: notifications addressed to one or the other, so a
    // group mixes routes, and each notification must reach exactly its own.
    let mut endpoint = HashMap::new();
    for owner in ["acme", "globex"] {
        let key = h.api_key_for(&scopes, Some(owner), None).await;
        let body = json!({"url": rx.url(&format!("/{owner}")), "event_types": ["user.*"]});
        let (s, v) = h.call(Method::POST, "/api/v1/endpoints", &key, Some(&body)).await;
        assert_eq!(s, 201, "{v}");
        endpoint.insert(owner, v["id"].as_str().unwrap().to_owned());
    }
    const N: usize = 200;
    let sends = (0..N).map(|i| {
        let owner = if i.is_multiple_of(2) { "acme" } else { "globex" };
        // Some with two recipients, some with one: groups mix email fan-outs too.
        let recipients: Vec<String> = (0..1 + i % 2).map(|r| format!("u{i}.{r}@example.test")).collect();
        let body = json!({
            "event_type": "user.registered",
            "payload": {"user": {"name": format!("User {i}"), "email": "ignored@example.test"}},
            "recipients": recipients,
            "owners": [owner],
        });
        let (h, admin) = (&h, admin.clone());
        async move { (i, owner, recipients, h.call(Method::POST, "/api/v1/notifications", &admin, Some(&body)).await) }
    });
    let answers = futures::future::join_all(sends).await;
    let mut ids = BTreeSet::new();
    for (i, owner, recipients, (status, v)) in &answers {
        assert_eq!(*status, 202, "{i}: {v}");
        assert!(ids.insert(v["id"].as_str().unwrap().to_owned()), "each answer its own id");
        let by = |channel: &str| -> Vec<String> {
            v["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["channel"] == channel)
                .map(|d| d["target"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(by("email"), *recipients, "{i}: its own recipients, in order");
        assert_eq!(by("webhook"), vec![endpoint[owner].clone()], "{i}: only its owner's endpoint");
        // What was answered is what was stored.
        let stored: (String, Vec<String>) =
            sqlx::query_as("SELECT payload->'user'->>'name', recipients FROM notifications WHERE id = $1::uuid")
                .bind(v["id"].as_str().unwrap())
                .fetch_one(&h.db)
                .await
                .unwrap();
        assert_eq!(stored, (format!("User {i}"), recipients.clone()));
        let deliveries: Vec<(String, String)> = sqlx::query_as(
            "SELECT channel, target FROM deliveries WHERE notification_id = $1::uuid ORDER BY channel, target",
        )
        .bind(v["id"].as_str().unwrap())
        .fetch_all(&h.db)
        .await
        .unwrap();
        let mut expected: Vec<(String, String)> = recipients.iter().map(|r| ("email".into(), r.clone())).collect();
        expected.push(("webhook".into(), endpoint[owner].clone()));
        assert_eq!(deliveries, expected, "{i}");
    }
    assert_eq!(h.count("notifications").await, N as i64);

    // Every webhook arrives once, at its owner's receiver path.
    eventually(Duration::from_secs(30), "200 webhooks", || async { (rx.count() >= N).then_some(()) }).await;
    // A duplicate would be a message still in the outbox (acked only once its attempt
    // is recorded, after the request): with the outbox empty, nothing more is coming.
    h.wait_count("outbox", 0).await;
    let requests = rx.requests();
    assert_eq!(requests.len(), N, "no duplicates");
    for r in &requests {
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let i: usize = v["data"]["user"]["name"].as_str().unwrap().trim_start_matches("User ").parse().unwrap();
        assert_eq!(r.path, if i.is_multiple_of(2) { "/acme" } else { "/globex" });
    }
    // They were committed in groups: fewer commits than notifications.
    let groups = metric(&h, "herald_accept_groups_total").await;
    let accepted = metric(&h, "herald_notifications_accepted_total").await;
    assert_eq!(accepted, N as f64);
    assert!(groups >= 1.0 && groups < accepted, "{groups} groups for {accepted} notifications");
    h.stop().await;
}

#[tokio::test]
async fn a_notification_that_cannot_be_stored_fails_alone_in_its_group() {
    // Several group commits in flight at once.
    let (_sink, h, key) = setup(&[], &[("HERALD_ACCEPT_COMMITS", "3")]).await;
    // A database that refuses some rows (as a constraint or a full disk might): the
    // group holding them fails, and each of its notifications is tried on its own.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.payload->'user'->>'name' = 'poison' THEN RAISE EXCEPTION 'refused by the test'; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON notifications FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&h.db)
    .await
    .unwrap();
    const N: usize = 120;
    let sends = (0..N).map(|i| {
        let name = if i % 10 == 3 { "poison".to_owned() } else { format!("User {i}") };
        let (h, key) = (&h, key.clone());
        async move {
            let r = h.post(&key, &welcome(&name, &format!("u{i}@example.test"))).await;
            let status = r.status().as_u16();
            let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            (name, status, ct, r.json::<Value>().await.unwrap())
        }
    });
    // Held back, so that the group after the held one mixes refused and good rows.
    let answers = holding_commits(&h, futures::future::join_all(sends)).await;
    let mut accepted = 0;
    for (name, status, ct, v) in &answers {
        if name == "poison" {
            assert_eq!(*status, 500, "{v}");
            assert_eq!(ct.as_deref(), Some("application/problem+json"));
            assert!(!v.to_string().contains("refused by the test"), "the cause is logged, not shown: {v}");
        } else {
            assert_eq!(*status, 202, "{name}: {v}");
            accepted += 1;
            let n = h.get_notification(&key, v["id"].as_str().unwrap()).await;
            assert_eq!(n["payload"]["user"]["name"], json!(name));
        }
    }
    assert_eq!(accepted, N - N / 10);
    assert_eq!(h.count("notifications").await, accepted as i64, "every 202 stored, nothing else");
    assert_eq!(h.count("deliveries").await, accepted as i64, "one email each");
    h.stop().await;
}

#[tokio::test]
async fn large_notifications_are_split_into_several_groups() {
    let (_sink, h, key) = setup(&[], &[("HERALD_MAX_BODY_BYTES", "400000")]).await;
    // 40 notifications of 200 kB each: about 16 MB to insert, so at least four groups
    // of at most 4 MiB after the held one.
    const N: usize = 40;
    let filler = "x".repeat(200_000);
    let sends = (0..N).map(|i| {
        let mut body = welcome(&format!("User {i}"), &format!("u{i}@example.test"));
        body["payload"]["filler"] = json!(filler);
        let (h, key) = (&h, key.clone());
        async move { h.post(&key, &body).await.status().as_u16() }
    });
    // The one commit slot is held while they arrive: the first notification waits in
    // it, the other 39 queue, and without the cap they would all go in the next group.
    let statuses = holding_commits(&h, futures::future::join_all(sends)).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE length(payload->>'filler') = 200000")
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert_eq!(stored, N as i64);
    let groups = metric(&h, "herald_accept_groups_total").await;
    assert!(groups >= 5.0, "{groups} groups for {N} large notifications");
    h.stop().await;
}

/// Runs `sends` while the group commit is held: a lock on `notifications` stops the
/// first group's statement until it is seen waiting and a second has passed for the
/// other requests to queue behind it.
async fn holding_commits<T>(h: &Herald, sends: impl std::future::Future<Output = T>) -> T {
    let mut tx = h.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE notifications IN SHARE MODE").execute(&mut *tx).await.unwrap();
    let release = async {
        eventually(Duration::from_secs(20), "a group commit waiting on the lock", || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'WITH i AS%'",
            )
            .fetch_one(&h.db)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.commit().await.unwrap();
    };
    let (out, ()) = tokio::join!(sends, release);
    out
}
