//! Attacks from the outside: hostile receivers, hostile input, another owner's keys,
//! slow peers. Each test here failed against the code before the hardening it checks
//! (see ARCHITECTURE.md, "Invariants").

use std::time::Duration;

use herald_testkit::receiver::{Receiver, Respond};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::webhooks::owner_view;

const ENDPOINT_SCOPES: &[&str] = &["endpoints:read", "endpoints:write"];

fn delivery_to<'a>(n: &'a Value, endpoint: &Value) -> &'a Value {
    n["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["target"] == endpoint["id"])
        .expect("a delivery to the endpoint")
}

#[tokio::test]
async fn a_nul_byte_in_a_response_does_not_stall_anyone() {
    let (_sink, h, key) = setup(&[], &[]).await;
    let hostile = h.api_key(ENDPOINT_SCOPES).await;
    let other = h.api_key(ENDPOINT_SCOPES).await;
    let bad = Receiver::start().await;
    bad.set_default(Respond::Body(200, b"ok\0\xff\xfe then more".to_vec()));
    let good = Receiver::start().await;
    let bad_ep = h.create_endpoint(&hostile, &json!({"url": bad.url("/"), "event_types": ["user.*"]})).await;
    let good_ep = h.create_endpoint(&other, &json!({"url": good.url("/"), "event_types": ["user.*"]})).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(h.send_welcome(&key, "Ada", &format!("ada{i}@example.test")).await);
    }
    for id in &ids {
        let n = h.wait_terminal(&key, id).await;
        assert_eq!(delivery_to(&n, &good_ep)["status"], "succeeded", "{n}");
        assert_eq!(delivery_to(&n, &bad_ep)["status"], "succeeded", "{n}");
    }
    // Each was POSTed once: no batch was handed back and re-sent (with the outbox empty,
    // no message is left that could send one again).
    h.wait_count("outbox", 0).await;
    assert_eq!((bad.count(), good.count()), (5, 5));
    let n = h.get_notification(&key, &ids[0]).await;
    let d = owner_view(&h, &hostile, &bad_ep, delivery_to(&n, &bad_ep)).await;
    let excerpt = d["attempts"][0]["response_excerpt"].as_str().unwrap();
    assert!(excerpt.starts_with("ok\u{FFFD}") && !excerpt.contains('\0'), "{excerpt:?}");
    h.stop().await;
}

#[tokio::test]
async fn an_outcome_that_cannot_be_recorded_is_dead_lettered_after_the_limit() {
    let (_sink, h, key) = setup(&[], &[("HERALD_BUS_MAX_REDELIVERIES", "3")]).await;
    // A row the database refuses, whatever the reason: here a trigger refuses 418s.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_418() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.http_status = 418 THEN RAISE EXCEPTION 'this row cannot be stored'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER refuse_418 BEFORE INSERT ON attempts FOR EACH ROW EXECUTE FUNCTION refuse_418();",
    )
    .execute(&h.db)
    .await
    .unwrap();
    let a = h.api_key(ENDPOINT_SCOPES).await;
    let b = h.api_key(ENDPOINT_SCOPES).await;
    let poison = Receiver::start().await;
    poison.set_default(Respond::Status(418));
    let fine = Receiver::start().await;
    let poison_ep = h.create_endpoint(&a, &json!({"url": poison.url("/"), "event_types": ["user.*"]})).await;
    let fine_ep = h.create_endpoint(&b, &json!({"url": fine.url("/"), "event_types": ["user.*"]})).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    assert_eq!(delivery_to(&n, &fine_ep)["status"], "succeeded", "the other owner's delivery went through: {n}");
    assert_eq!(delivery_to(&n, &poison_ep)["status"], "failed", "{n}");
    let d = owner_view(&h, &a, &poison_ep, delivery_to(&n, &poison_ep)).await;
    assert!(d["last_error"].as_str().unwrap().contains("could not be recorded"), "{d}");
    assert_eq!(poison.count(), 3, "sent once per allowed delivery of the message, then given up");
    assert_eq!(fine.count(), 1);
    // The delivery is failed just before its message is dead-lettered: wait for that.
    let reason: String = eventually(Duration::from_secs(20), "the dead letter", || async {
        sqlx::query_scalar("SELECT reason FROM dead_letters").fetch_optional(&h.db).await.unwrap()
    })
    .await;
    assert!(reason.contains("could not be recorded"), "{reason}");
    eventually(Duration::from_secs(10), "the dead-letter metric", || async {
        (metric(&h, "herald_bus_dead_lettered_total").await == 1.0).then_some(())
    })
    .await;
    assert!(metric(&h, "herald_attempts_unrecorded_total").await >= 3.0);
    h.wait_count("outbox", 0).await;
    h.stop().await;
}

#[tokio::test]
async fn an_absurd_retry_schedule_is_refused() {
    let (_sink, h, _key) = setup(&[], &[]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    let (s, p) = h
        .call(
            Method::POST,
            "/api/v1/endpoints",
            &owner,
            Some(&json!({"url": rx.url("/"), "retry_schedule": "100000000000000s"})),
        )
        .await;
    assert_eq!((s, p["type"].as_str().unwrap()), (422, "urn:herald:problem:invalid-retry-schedule"), "{p}");
    h.stop().await;
}

#[tokio::test]
async fn a_stored_absurd_retry_schedule_cannot_stop_the_dispatcher() {
    // A huge Retry-After is capped by HERALD_WEBHOOK_RETRY_AFTER_MAX (1s here).
    let (_sink, h, key) = setup(&[], &[("HERALD_WEBHOOK_RETRY_AFTER_MAX", "1s")]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    // One stored before the bound existed: the dispatcher must survive it.
    let ep = h.create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["user.*"]})).await;
    sqlx::query("UPDATE endpoints SET retry_schedule = '100000000000000s'").execute(&h.db).await.unwrap();
    rx.script(vec![
        Respond::Status(500),
        Respond::WithHeaders(503, vec![("retry-after", "18446744073709551615".into())]),
    ]);
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    assert_eq!(delivery_to(&n, &ep)["status"], "succeeded", "{n}");
    let ready: Value = h.http.get(format!("{}/readyz", h.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"]["tasks"]["status"], "ok", "{ready}");
    assert_eq!(ready["checks"]["tasks"]["tasks"]["webhook dispatcher"], "running", "{ready}");
    h.stop().await;
}

#[tokio::test]
async fn nul_characters_are_refused_naming_the_field_and_nothing_is_written() {
    let (_sink, h, key) = setup(&[], &[]).await;
    let r = h
        .post(
            &key,
            &json!({"event_type": "user.registered", "payload": {"user": {"name": "A\u{0}da", "email": "a@b.test"}}}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:herald:problem:nul-character");
    assert_eq!(p["errors"][0]["pointer"], "/payload/user/name", "{p}");
    let r = h.post(&key, &json!({"event_type": "user.registered", "payload": {"us\u{0}er": 1}})).await;
    assert_eq!(r.status(), 400);
    // An escaped backslash followed by "u0000" is not a NUL.
    let r = h
        .post(
            &key,
            &json!({"event_type": "user.registered", "payload": {"user": {"name": "\\u0000", "email": "a@b.test"}}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(h.count("notifications").await, 1);
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    let ep = h.create_endpoint(&owner, &json!({"url": rx.url("/")})).await;
    let (s, p) = h
        .call(
            Method::GET,
            &format!("/api/v1/endpoints/{}/deliveries?status=%00", ep["id"].as_str().unwrap()),
            &owner,
            None,
        )
        .await;
    assert_eq!(s, 400, "{p}");
    h.stop().await;
}

#[tokio::test]
async fn secrets_and_header_values_need_a_write_key_and_are_sealed_at_rest() {
    let (_sink, h, key) = setup(&[], &[]).await;
    let owner = "team-a";
    let writer = h.api_key_for(ENDPOINT_SCOPES, Some(owner), None).await;
    let reader = h.api_key_for(&["endpoints:read"], Some(owner), None).await;
    let rx = Receiver::start().await;
    let ep = h
        .create_endpoint(&writer, &json!({"url": rx.url("/"), "event_types": ["user.*"], "headers": {"Authorization": "Bearer s3cr3t-value"}}))
        .await;
    let id = ep["id"].as_str().unwrap();
    assert_eq!(ep["headers"], json!({"Authorization": "********"}));
    let (s, _) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}/secret"), &reader, None).await;
    assert_eq!(s, 403, "a read-only key cannot reveal the signing secret");
    let (s, _) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}/headers"), &reader, None).await;
    assert_eq!(s, 403);
    let (s, e) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}"), &reader, None).await;
    assert_eq!((s, &e["headers"]), (200, &json!({"Authorization": "********"})));
    let (s, v) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}/headers"), &writer, None).await;
    assert_eq!((s, &v["headers"]["Authorization"]), (200, &json!("Bearer s3cr3t-value")));
    let dump: String =
        sqlx::query_scalar("SELECT row_to_json(e)::text FROM endpoints e").fetch_one(&h.db).await.unwrap();
    assert!(!dump.contains("s3cr3t"), "stored in clear: {dump}");
    // Sending the mask back keeps the value; a new header is added.
    let (s, _) = h
        .call(
            Method::PATCH,
            &format!("/api/v1/endpoints/{id}"),
            &writer,
            Some(&json!({"headers": {"Authorization": "********", "X-Extra": "1"}})),
        )
        .await;
    assert_eq!(s, 200);
    h.send_welcome(&key, "Ada", "ada@example.test").await;
    eventually(Duration::from_secs(20), "the webhook", || async { (rx.count() == 1).then_some(()) }).await;
    let r = &rx.requests()[0];
    assert_eq!(r.headers["authorization"], "Bearer s3cr3t-value");
    assert_eq!(r.headers["x-extra"], "1");
    h.stop().await;
}

#[tokio::test]
async fn a_slow_endpoint_holds_back_only_its_own_deliveries() {
    let (_sink, h, key) = setup(&[], &[("HERALD_WEBHOOK_TIMEOUT", "12s")]).await;
    let a = h.api_key(ENDPOINT_SCOPES).await;
    let b = h.api_key(ENDPOINT_SCOPES).await;
    let slow = Receiver::start().await;
    slow.set_default(Respond::After(Duration::from_secs(8), 200));
    let fast = Receiver::start().await;
    let slow_ep = h.create_endpoint(&a, &json!({"url": slow.url("/"), "event_types": ["user.*"]})).await;
    let fast_ep = h.create_endpoint(&b, &json!({"url": fast.url("/"), "event_types": ["user.*"]})).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = eventually(Duration::from_secs(20), "the fast endpoint's delivery to be recorded", || async {
        let n = h.get_notification(&key, &id).await;
        (delivery_to(&n, &fast_ep)["status"] == "succeeded").then_some(n)
    })
    .await;
    assert_eq!(delivery_to(&n, &slow_ep)["status"], "in_flight", "recorded while the slow one is still waiting: {n}");
    let n = h.wait_terminal(&key, &id).await;
    assert_eq!(delivery_to(&n, &slow_ep)["status"], "succeeded");
    h.stop().await;
}

#[tokio::test]
async fn concurrent_patches_never_undo_each_other() {
    let (_sink, h, _key) = setup(&[], &[]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    let ep = h.create_endpoint(&owner, &json!({"url": rx.url("/")})).await;
    let path = format!("/api/v1/endpoints/{}", ep["id"].as_str().unwrap());
    for round in 1..=15 {
        let d = json!({"description": format!("round {round}")});
        let r = json!({"rate_limit": round});
        let s = json!({"retry_schedule": format!("{round}s")});
        let ((s1, _), (s2, _), (s3, _)) = tokio::join!(
            h.call(Method::PATCH, &path, &owner, Some(&d)),
            h.call(Method::PATCH, &path, &owner, Some(&r)),
            h.call(Method::PATCH, &path, &owner, Some(&s)),
        );
        assert_eq!((s1, s2, s3), (200, 200, 200));
        let (_, e) = h.call(Method::GET, &path, &owner, None).await;
        assert_eq!(
            (
                e["description"].as_str().unwrap(),
                e["rate_limit"].as_i64().unwrap(),
                e["retry_schedule"].as_str().unwrap()
            ),
            (format!("round {round}").as_str(), round as i64, format!("{round}s").as_str()),
            "a concurrent PATCH lost another's change in round {round}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn limits_rate_endpoints_and_recipients() {
    let (_sink, h, _key) = setup(&[], &[("HERALD_MAX_ENDPOINTS_PER_OWNER", "2"), ("HERALD_MAX_RECIPIENTS", "2")]).await;
    // Per-key request rate: a key made with --rate-limit 3.
    let (ok, out, err) =
        run_cli(&h.env, &["api-key", "create", "--name", "slow", "--scope", "notifications:read", "--rate-limit", "2"])
            .await;
    assert!(ok, "{err}");
    let slow = out.lines().last().unwrap().trim().to_owned();
    let answers = futures::future::join_all((0..10).map(|_| async {
        let r = h
            .http
            .get(format!("{}/api/v1/notifications/{}", h.base, uuid::Uuid::nil()))
            .bearer_auth(&slow)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let p: Value = r.json().await.unwrap_or(Value::Null);
        (status, retry_after, p)
    }))
    .await;
    let passed = answers.iter().filter(|a| a.0 == 404).count();
    let limited: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert!(passed >= 2 && !limited.is_empty(), "{answers:?}");
    assert_eq!(passed + limited.len(), 10, "{answers:?}");
    assert_eq!(limited[0].1.as_deref(), Some("1"));
    assert_eq!(limited[0].2["type"], "urn:herald:problem:rate-limited");

    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    for _ in 0..2 {
        h.create_endpoint(&owner, &json!({"url": rx.url("/")})).await;
    }
    let (s, p) = h.call(Method::POST, "/api/v1/endpoints", &owner, Some(&json!({"url": rx.url("/")}))).await;
    assert_eq!((s, p["type"].as_str().unwrap()), (422, "urn:herald:problem:limit-exceeded"), "{p}");
    assert_eq!(h.count("endpoints").await, 2);

    let sender = h.api_key(&["notifications:write"]).await;
    let mut body = welcome("Ada", "ada@example.test");
    body["recipients"] = json!(["a@x.test", "b@x.test", "c@x.test"]);
    let r = h.post(&sender, &body).await;
    assert_eq!(r.status(), 422);
    assert_eq!(h.count("notifications").await, 0);
    h.stop().await;
}

#[tokio::test]
async fn operations_endpoints_on_the_admin_listener_and_slow_clients_are_cut_off() {
    let admin_port = free_port();
    let admin_addr = format!("127.0.0.1:{admin_port}");
    let (_sink, h, _key) =
        setup(&[], &[("HERALD_ADMIN_LISTEN_ADDR", admin_addr.as_str()), ("HERALD_HTTP_HEADER_TIMEOUT", "1s")]).await;
    let r = h.http.get(format!("http://{admin_addr}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = h.http.get(format!("http://{admin_addr}/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    for task in ["email dispatcher", "webhook dispatcher", "sweeper", "retention"] {
        assert_eq!(ready["checks"]["tasks"]["tasks"][task], "running", "{ready}");
    }
    let r = h.http.get(format!("{}/metrics", h.base)).send().await.unwrap();
    assert_ne!(r.status(), 200, "metrics are not on the public listener");
    assert_eq!(h.http.get(format!("{}/healthz", h.base)).send().await.unwrap().status(), 200);

    // A client that never finishes its headers is disconnected.
    let mut c = tokio::net::TcpStream::connect(h.base.trim_start_matches("http://")).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await;
    match read {
        Ok(Ok(_)) | Ok(Err(_)) => {} // closed (0 bytes or a 408/reset)
        Err(_) => panic!("the half-sent request was still open after 10 s"),
    }
    h.stop().await;
}

#[tokio::test]
async fn retention_prunes_finished_notifications_and_keeps_unfinished_ones() {
    let (sink, h, key) = setup(&[], &[("HERALD_RETENTION", "2s"), ("HERALD_EMAIL_RETRY_SCHEDULE", "1h")]).await;
    let done = h.send_welcome(&key, "Ada", "ada@example.test").await;
    h.wait_terminal(&key, &done).await;
    sink.script(&[Reply::Code(451)]);
    let waiting = h.send_welcome(&key, "Bob", "bob@example.test").await;
    eventually(Duration::from_secs(20), "bob's first attempt", || async {
        let n = h.get_notification(&key, &waiting).await;
        (n["deliveries"][0]["status"] == "retrying").then_some(())
    })
    .await;
    h.wait_count("notifications", 1).await;
    let left: uuid::Uuid = sqlx::query_scalar("SELECT id FROM notifications").fetch_one(&h.db).await.unwrap();
    assert_eq!(left.to_string(), waiting, "the retrying notification is kept");
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.notification_id::text = $1",
    )
    .bind(&done)
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert_eq!(orphans, 0);
    assert!(metric(&h, "herald_retention_pruned_total{table=\"notifications\"}").await >= 1.0);
    h.stop().await;
}

#[tokio::test]
async fn the_ordering_key_is_the_lowercased_address_everywhere() {
    let (_sink, h, _key) = setup(&[], &[]).await;
    for (target, key) in [
        ("Ada <Ada@Example.test>", "ada@example.test"),
        ("ADA@EXAMPLE.TEST", "ada@example.test"),
        ("\"Lovelace, Ada\" <ada@example.test>", "ada@example.test"),
    ] {
        let got: String =
            sqlx::query_scalar("SELECT herald_ordering_key('email', $1)").bind(target).fetch_one(&h.db).await.unwrap();
        assert_eq!(got, key, "{target}");
    }
    h.stop().await;
}

#[tokio::test]
async fn a_slow_endpoint_does_not_hold_back_the_next_batch() {
    let (_sink, h, key) = setup(&[], &[("HERALD_WEBHOOK_TIMEOUT", "20s")]).await;
    let a = h.api_key(ENDPOINT_SCOPES).await;
    let b = h.api_key(ENDPOINT_SCOPES).await;
    let slow = Receiver::start().await;
    slow.set_default(Respond::After(Duration::from_secs(12), 200));
    let fast = Receiver::start().await;
    let slow_ep = h.create_endpoint(&a, &json!({"url": slow.url("/"), "event_types": ["user.*"]})).await;
    let fast_ep = h.create_endpoint(&b, &json!({"url": fast.url("/"), "event_types": ["user.*"]})).await;
    let first = h.send_welcome(&key, "Ada", "ada@example.test").await;
    eventually(Duration::from_secs(20), "the slow endpoint's first request", || async {
        (slow.count() == 1).then_some(())
    })
    .await;
    // The first batch is still waiting on the slow endpoint; a later notification's
    // delivery to the fast endpoint must not wait for it.
    let second = h.send_welcome(&key, "Bob", "bob@example.test").await;
    let n = eventually(Duration::from_secs(8), "the second notification's fast delivery", || async {
        let n = h.get_notification(&key, &second).await;
        (delivery_to(&n, &fast_ep)["status"] == "succeeded").then_some(n)
    })
    .await;
    assert_ne!(delivery_to(&n, &slow_ep)["status"], "succeeded", "{n}");
    let first = h.get_notification(&key, &first).await;
    assert_eq!(delivery_to(&first, &slow_ep)["status"], "in_flight", "the slow one is still waiting: {first}");
    // And it is recorded in the end: the detached remainder settles it.
    h.wait_terminal(&key, first["id"].as_str().unwrap()).await;
    h.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_wait_to_be_accepted() {
    let (_sink, h, _key) =
        setup(&[], &[("HERALD_HTTP_MAX_CONNECTIONS", "3"), ("HERALD_HTTP_HEADER_TIMEOUT", "30s")]).await;
    // The harness's own client keeps one pooled connection; two idle sockets take the rest.
    let addr = h.base.trim_start_matches("http://").to_owned();
    let idle = vec![
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
    ];
    let fresh = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let r = fresh.get(format!("{}/healthz", h.base)).send().await;
    assert!(r.is_err(), "a connection over the cap was served: {r:?}");
    drop(idle);
    let fresh = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let r = fresh.get(format!("{}/healthz", h.base)).send().await.unwrap();
    assert_eq!(r.status(), 200, "served once a connection closed");
    h.stop().await;
}
