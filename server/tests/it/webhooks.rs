//! The webhook dispatcher end to end: the real binary, real HTTP receivers on
//! 127.0.0.1, signatures checked by an independent Standard Webhooks implementation
//! (the `standardwebhooks` crate).

use std::time::Duration;

use base64::Engine;
use herald_testkit::receiver::{Receiver, Request, Respond};
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;

const ENDPOINT_SCOPES: &[&str] = &["endpoints:read", "endpoints:write"];

fn verifies(secret: &str, r: &Request) -> bool {
    standardwebhooks::Webhook::new(secret).unwrap().verify(&r.body, &r.headers).is_ok()
}

fn header(r: &Request, name: &str) -> String {
    r.headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

/// The webhook delivery of a notification (there is one endpoint in these tests).
fn webhook_delivery(n: &Value) -> Value {
    n["deliveries"].as_array().unwrap().iter().find(|d| d["channel"] == "webhook").cloned().expect("a webhook delivery")
}

fn disable_mail_to(sink: &SmtpSink, to: &str) -> bool {
    sink.accepted().iter().any(|m| {
        m.rcpt_to.iter().any(|r| r.contains(to))
            && m.header("subject").is_some_and(|s| s.contains("disabled your webhook endpoint"))
    })
}

async fn wait_requests(rx: &Receiver, n: usize) -> Vec<Request> {
    eventually(Duration::from_secs(30), &format!("{n} requests at the receiver"), || async {
        let r = rx.requests();
        (r.len() >= n).then_some(r)
    })
    .await
}

/// A delivery as the endpoint's owner sees it (with errors and response excerpts).
pub async fn owner_view(h: &Herald, owner: &str, endpoint: &Value, delivery: &Value) -> Value {
    let path = format!(
        "/api/v1/endpoints/{}/deliveries/{}",
        endpoint["id"].as_str().unwrap(),
        delivery["id"].as_str().unwrap()
    );
    let (status, v) = h.call(Method::GET, &path, owner, None).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn endpoint(h: &Herald, key: &str, id: &str) -> Value {
    let (status, v) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}"), key, None).await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn welcome_reaches_a_subscribed_endpoint_signed_and_retried_with_the_same_id_and_bytes() {
    let (sink, h, key) = setup(&[], &[]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    rx.script(vec![Respond::Status(500), Respond::Status(503), Respond::Big(502, 10_000)]);
    let ep = h
        .create_endpoint(&owner, &json!({"url": rx.url("/hooks"), "event_types": ["user.*"], "description": "CRM"}))
        .await;
    let secret = ep["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_") && secret.len() >= 6 + 32, "{secret}");
    let (status, got) =
        h.call(Method::GET, &format!("/api/v1/endpoints/{}/secret", ep["id"].as_str().unwrap()), &owner, None).await;
    assert_eq!((status, got["key"].as_str().unwrap()), (200, secret.as_str()));
    // Encrypted at rest: the secret does not appear in the database.
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT sealed FROM endpoint_secrets").fetch_one(&h.db).await.unwrap();
    assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_bytes()));

    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    assert_eq!(n["status"], "succeeded", "{n}");
    let d = webhook_delivery(&n);
    assert_eq!(d["target"], ep["id"]);
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4, "3 failures then success: {d}");
    assert_eq!(attempts.iter().map(|a| a["http_status"].as_i64().unwrap()).collect::<Vec<_>>(), [500, 503, 502, 200]);
    assert!(
        attempts.iter().all(|a| a["response_excerpt"].is_null()),
        "another owner's responses are not shown to the sender"
    );
    // The endpoint's owner sees them.
    let (status, d) = h
        .call(
            Method::GET,
            &format!("/api/v1/endpoints/{}/deliveries/{}", ep["id"].as_str().unwrap(), d["id"].as_str().unwrap()),
            &owner,
            None,
        )
        .await;
    assert_eq!(status, 200, "{d}");
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts[2]["response_excerpt"].as_str().unwrap().len(), 4096, "excerpt capped at 4 KiB");
    assert!(attempts[0]["response_excerpt"].as_str().unwrap().contains("status 500"));
    assert_eq!(sink.accepted_count(), 1, "the welcome email went out too");

    let reqs = rx.requests();
    assert_eq!(reqs.len(), 4);
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hooks");
        assert_eq!(header(r, "webhook-id"), d["id"].as_str().unwrap(), "webhook-id is stable across retries");
        assert_eq!(r.body, reqs[0].body, "the same bytes on every attempt");
        assert_eq!(header(r, "content-type"), "application/json");
        assert!(verifies(&secret, r), "signature verifies with the standardwebhooks crate");
        assert!(!verifies("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", r), "and not with another secret");
    }
    let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(body["type"], "user.registered");
    assert_eq!(body["data"], json!({"user": {"name": "Ada", "email": "ada@example.test"}}));
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    h.stop().await;
}

#[tokio::test]
async fn rotation_signs_with_both_keys_in_the_grace_period_then_only_the_new_one() {
    let (_sink, h, key) = setup(&[], &[]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    let ep = h.create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["*"]})).await;
    let id = ep["id"].as_str().unwrap();
    let old = ep["secret"].as_str().unwrap().to_owned();
    let (status, rotated) = h
        .call(Method::POST, &format!("/api/v1/endpoints/{id}/secret/rotate"), &owner, Some(&json!({"grace": "3s"})))
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let (_, current) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}/secret"), &owner, None).await;
    assert_eq!(current["key"], new.as_str());

    h.send_welcome(&key, "Ada", "ada@example.test").await;
    let r = wait_requests(&rx, 1).await.remove(0);
    assert_eq!(header(&r, "webhook-signature").split(' ').count(), 2, "one signature per live key");
    assert!(verifies(&old, &r) && verifies(&new, &r), "both keys verify inside the grace period");

    tokio::time::sleep(Duration::from_millis(3500)).await;
    h.send_welcome(&key, "Bob", "bob@example.test").await;
    let r = wait_requests(&rx, 2).await.remove(1);
    assert_eq!(header(&r, "webhook-signature").split(' ').count(), 1);
    assert!(verifies(&new, &r), "the new key verifies");
    assert!(!verifies(&old, &r), "the old key no longer does");

    // At most 10 old keys are kept however often it rotates.
    for _ in 0..12 {
        let (s, _) = h.call(Method::POST, &format!("/api/v1/endpoints/{id}/secret/rotate"), &owner, None).await;
        assert_eq!(s, 200);
    }
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM endpoint_secrets").fetch_one(&h.db).await.unwrap();
    assert_eq!(kept, 11, "the current key and 10 old ones");
    h.stop().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_tells_the_owner_by_email_and_operational_event() {
    let (sink, h, key) = setup(&[], &[]).await;
    let owner = h.api_key_for(ENDPOINT_SCOPES, Some("team-crm"), Some("crm-team@example.test")).await;
    let other = h.api_key_for(ENDPOINT_SCOPES, Some("someone-else"), None).await;
    let gone = Receiver::start().await;
    gone.set_default(Respond::Status(410));
    let ops = Receiver::start().await;
    let foreign_ops = Receiver::start().await;
    let ep = h.create_endpoint(&owner, &json!({"url": gone.url("/"), "event_types": ["user.registered"]})).await;
    h.create_endpoint(&owner, &json!({"url": ops.url("/ops"), "event_types": ["endpoint.disabled"]})).await;
    // Another owner's endpoint hears nothing about this owner's endpoints, and '*' does
    // not match operational events.
    h.create_endpoint(&other, &json!({"url": foreign_ops.url("/"), "event_types": ["endpoint.*"]})).await;
    let star = Receiver::start().await;
    h.create_endpoint(&owner, &json!({"url": star.url("/"), "event_types": ["*"]})).await;

    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    let d = n["deliveries"].as_array().unwrap().iter().find(|d| d["target"] == ep["id"]).unwrap().clone();
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "410 is not retried");
    let e = endpoint(&h, &owner, ep["id"].as_str().unwrap()).await;
    assert_eq!(e["enabled"], false);
    assert!(e["disabled_reason"].as_str().unwrap().contains("410"), "{e}");

    let r = wait_requests(&ops, 1).await.remove(0);
    let event: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(event["type"], "endpoint.disabled");
    assert_eq!(event["data"]["endpoint"]["id"], ep["id"]);
    eventually(Duration::from_secs(20), "the owner's email", || async {
        disable_mail_to(&sink, "crm-team@example.test").then_some(())
    })
    .await;
    h.wait_count("outbox", 0).await;
    assert_eq!(foreign_ops.count(), 0, "another owner's endpoint is not told");
    assert_eq!(star.count(), 1, "'*' got user.registered but not endpoint.disabled");
    // Clients cannot post operational events.
    let r = h.post(&key, &json!({"event_type": "endpoint.disabled", "payload": {}})).await;
    assert_eq!(r.status(), 422);
    h.stop().await;
}

#[tokio::test]
async fn redirects_are_failures_and_never_followed() {
    let (_sink, h, key) = setup(&[], &[("HERALD_WEBHOOK_RETRY_SCHEDULE", "100ms")]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let target = Receiver::start().await;
    let rx = Receiver::start().await;
    rx.set_default(Respond::WithHeaders(302, vec![("location", target.url("/elsewhere"))]));
    let ep = h.create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["user.registered"]})).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    let d = webhook_delivery(&n);
    assert_eq!(d["status"], "failed");
    assert!(
        d["attempts"][0]["error"].is_null() && d["last_error"].is_null(),
        "the sender does not see another owner's errors: {d}"
    );
    let d = owner_view(&h, &owner, &ep, &d).await;
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "retried on the schedule, then failed");
    assert_eq!(attempts[0]["http_status"], 302);
    assert!(attempts[0]["error"].as_str().unwrap().contains("not followed"), "{d}");
    assert_eq!(target.count(), 0, "the redirect target received nothing");
    h.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_and_timeouts_are_recorded_and_retried() {
    let (_sink, h, key) = setup(&[], &[("HERALD_WEBHOOK_TIMEOUT", "500ms")]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    rx.script(vec![
        Respond::WithHeaders(429, vec![("retry-after", "2".into())]),
        Respond::After(Duration::from_secs(3), 200),
        Respond::Status(200),
    ]);
    let ep = h.create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["user.registered"]})).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    let d = webhook_delivery(&n);
    assert_eq!(d["status"], "succeeded", "{d}");
    let d = owner_view(&h, &owner, &ep, &d).await;
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[0]["http_status"], 429);
    assert!(attempts[1]["http_status"].is_null());
    assert!(attempts[1]["error"].as_str().unwrap().contains("timed out"), "{d}");
    let reqs = rx.requests();
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(1900), "Retry-After: 2 was honoured (waited {gap:?})");
    // After a timeout the wait is at least the throttle floor (300ms in tests), more
    // than the 200ms schedule.
    let gap = reqs[2].at - reqs[1].at;
    assert!(gap >= Duration::from_millis(500 + 280), "timeout then floor ({gap:?})");
    h.stop().await;
}

#[tokio::test]
async fn endpoints_failing_for_the_window_are_disabled_and_the_owner_is_emailed() {
    let (sink, h, key) = setup(
        &[],
        &[
            ("HERALD_ENDPOINT_DISABLE_AFTER", "2s"),
            ("HERALD_WEBHOOK_RETRY_SCHEDULE", "400ms,400ms,400ms,400ms,400ms,400ms,400ms,400ms"),
        ],
    )
    .await;
    let owner = h.api_key_for(ENDPOINT_SCOPES, Some("partner-7"), Some("ops@partner.test")).await;
    let rx = Receiver::start().await;
    rx.set_default(Respond::Status(500));
    let ep = h.create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["user.registered"]})).await;
    let eid = ep["id"].as_str().unwrap().to_owned();
    h.send_welcome(&key, "Ada", "ada@example.test").await;
    let e = eventually(Duration::from_secs(30), "the endpoint to be disabled", || async {
        let e = endpoint(&h, &owner, &eid).await;
        (e["enabled"] == false).then_some(e)
    })
    .await;
    assert!(e["disabled_reason"].as_str().unwrap().contains("failed for longer than 2s"), "{e}");
    let failing_since: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT failing_since FROM endpoints WHERE id = $1::uuid")
            .bind(&eid)
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert!(failing_since.is_none());
    eventually(Duration::from_secs(20), "the disable email", || async {
        disable_mail_to(&sink, "ops@partner.test").then_some(())
    })
    .await;
    // Deliveries still queued for it fail without reaching it.
    let before = rx.count();
    h.wait_count("outbox", 0).await;
    assert_eq!(rx.count(), before, "a disabled endpoint receives nothing");

    // Re-enabling resets the clock.
    let (status, e) = h.call(Method::POST, &format!("/api/v1/endpoints/{eid}/enable"), &owner, None).await;
    assert_eq!(
        (status, &e["enabled"], &e["failing_since"], &e["disabled_reason"]),
        (200, &json!(true), &Value::Null, &Value::Null)
    );
    h.stop().await;
}

#[tokio::test]
async fn the_ssrf_guard_refuses_non_global_targets() {
    let (_sink, h, key) = setup(&[], &[("HERALD_WEBHOOK_ALLOW_CIDRS", "")]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    let port = rx.addr.port();
    for host in [
        "127.0.0.1",
        "127.1.2.3",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.0.1",
        "169.254.169.254",
        "169.254.10.10",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.10",
        "198.51.100.1",
        "203.0.113.1",
        "[fc00::1]",
        "[fd00::5]",
        "[fe80::1]",
        "[ff02::1]",
        "[2001:db8::1]",
        "[::]",
        "2130706433",
        "0x7f.0.0.1",
        "[64:ff9b::7f00:1]",
    ] {
        let url = format!("http://{host}:{port}/");
        let (status, p) = h.call(Method::POST, "/api/v1/endpoints", &owner, Some(&json!({"url": url}))).await;
        assert_eq!(status, 422, "{url} must be refused: {p}");
        assert_eq!(p["type"], "urn:herald:problem:refused-target", "{url}");
    }
    let (status, p) = h
        .call(Method::POST, "/api/v1/endpoints", &owner, Some(&json!({"url": format!("ftp://example.com:{port}/")})))
        .await;
    assert_eq!(status, 400, "{p}");
    assert_eq!(h.count("endpoints").await, 0, "nothing was created");

    // A hostname is checked when connecting: localhost resolves to loopback.
    let ep = h
        .create_endpoint(&owner, &json!({"url": format!("http://localhost:{port}/"), "event_types": ["user.*"]}))
        .await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    let d = webhook_delivery(&n);
    assert_eq!(d["target"], ep["id"]);
    assert_eq!(d["status"], "failed");
    assert!(d["attempts"][0]["error"].is_null(), "the sender sees no error of another owner's endpoint: {d}");
    let d = owner_view(&h, &owner, &ep, &d).await;
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "a refused attempt is not retried: {d}");
    // The owner learns it was refused, not which address their name resolved to: the
    // API is not a probe of the internal network.
    let error = attempts[0]["error"].as_str().unwrap();
    assert!(error.contains("refused by the network policy"), "{error}");
    assert!(!error.contains("127.") && !error.contains("::1") && !error.contains("loopback"), "{error}");
    h.wait_count("outbox", 0).await;
    assert_eq!(rx.count(), 0, "the listener on 127.0.0.1 received nothing");
    h.stop().await;
}

#[tokio::test]
async fn owners_only_reach_their_own_endpoints() {
    let (_sink, h, _key) = setup(&[], &[]).await;
    let a = h.api_key(ENDPOINT_SCOPES).await;
    let b = h.api_key(ENDPOINT_SCOPES).await;
    let admin = h.api_key(&["admin"]).await;
    let reader = h.api_key(&["endpoints:read"]).await;
    let notifier = h.api_key(&["notifications:write"]).await;
    let rx = Receiver::start().await;
    let ep = h.create_endpoint(&a, &json!({"url": rx.url("/a"), "event_types": ["user.registered"]})).await;
    let id = ep["id"].as_str().unwrap();
    assert!(ep["owner"].as_str().unwrap().starts_with("key:"));

    for (method, path, body) in [
        (Method::GET, format!("/api/v1/endpoints/{id}"), None),
        (Method::PATCH, format!("/api/v1/endpoints/{id}"), Some(json!({"description": "mine now"}))),
        (Method::DELETE, format!("/api/v1/endpoints/{id}"), None),
        (Method::GET, format!("/api/v1/endpoints/{id}/secret"), None),
        (Method::GET, format!("/api/v1/endpoints/{id}/headers"), None),
        (Method::POST, format!("/api/v1/endpoints/{id}/secret/rotate"), None),
        (Method::POST, format!("/api/v1/endpoints/{id}/disable"), None),
        (Method::POST, format!("/api/v1/endpoints/{id}/enable"), None),
        (Method::POST, format!("/api/v1/endpoints/{id}/test"), None),
        (Method::POST, format!("/api/v1/endpoints/{id}/recover"), Some(json!({"since": "2020-01-01T00:00:00Z"}))),
        (Method::GET, format!("/api/v1/endpoints/{id}/deliveries"), None),
    ] {
        let (status, p) = h.call(method.clone(), &path, &b, body.as_ref()).await;
        assert_eq!(status, 404, "{method} {path} by another owner: {p}");
        assert_eq!(p["type"], "urn:herald:problem:not-found");
    }
    let (_, list) = h.call(Method::GET, "/api/v1/endpoints", &b, None).await;
    assert_eq!(list["data"], json!([]));
    let e = endpoint(&h, &a, id).await;
    assert_eq!((e["description"].as_str(), e["enabled"].as_bool()), (Some(""), Some(true)), "unchanged");
    let (_, secret) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}/secret"), &a, None).await;
    assert_eq!(secret["key"], ep["secret"], "not rotated");

    // An admin reaches every owner's endpoints.
    let (_, list) = h.call(Method::GET, "/api/v1/endpoints", &admin, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(h.call(Method::GET, &format!("/api/v1/endpoints/{id}"), &admin, None).await.0, 200);
    // Scopes: read cannot write; notifications keys cannot touch endpoints.
    assert_eq!(h.call(Method::GET, &format!("/api/v1/endpoints/{id}"), &reader, None).await.0, 404);
    let (status, _) = h.call(Method::POST, "/api/v1/endpoints", &reader, Some(&json!({"url": rx.url("/")}))).await;
    assert_eq!(status, 403);
    assert_eq!(h.call(Method::GET, "/api/v1/endpoints", &notifier, None).await.0, 403);
    h.stop().await;
}

#[tokio::test]
async fn endpoint_crud_validates_and_custom_headers_never_override_signatures() {
    let (_sink, h, key) = setup(&[], &[]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    for (body, status, slug) in [
        (json!({"url": rx.url("/"), "event_types": ["user..x"]}), 400, "invalid-request"),
        (json!({"url": rx.url("/"), "event_types": []}), 400, "invalid-request"),
        (json!({"url": rx.url("/"), "event_types": ["no.such.event"]}), 422, "unknown-event-type"),
        (json!({"url": rx.url("/"), "headers": {"webhook-signature": "v1,forged"}}), 400, "invalid-request"),
        (json!({"url": rx.url("/"), "headers": {"Content-Type": "text/plain"}}), 400, "invalid-request"),
        (json!({"url": rx.url("/"), "rate_limit": 0}), 400, "invalid-request"),
        (json!({"url": rx.url("/"), "retry_schedule": "5s,soon"}), 422, "invalid-retry-schedule"),
        (json!({"url": rx.url("/"), "retry_schedule": "100000000000000s"}), 422, "invalid-retry-schedule"),
        (json!({"url": rx.url("/"), "retry_schedule": "7d,7d,7d,7d,7d"}), 422, "invalid-retry-schedule"),
        (json!({"url": rx.url("/"), "description": "a\u{0}b"}), 400, "nul-character"),
        (json!({"url": "not a url"}), 400, "invalid-request"),
        (json!({"url": "http://user:pw@example.com/"}), 400, "invalid-request"),
        (json!({"url": rx.url("/"), "colour": "red"}), 400, "invalid-request"),
    ] {
        let (s, p) = h.call(Method::POST, "/api/v1/endpoints", &owner, Some(&body)).await;
        assert_eq!(
            (s, p["type"].as_str().unwrap()),
            (status, format!("urn:herald:problem:{slug}").as_str()),
            "{body}: {p}"
        );
    }
    assert_eq!(h.count("endpoints").await, 0);

    let ep = h
        .create_endpoint(
            &owner,
            &json!({"url": rx.url("/x"), "event_types": ["user.registered"], "headers": {"X-Token": "t0k"}, "rate_limit": 5}),
        )
        .await;
    let id = ep["id"].as_str().unwrap();
    let (s, e) = h
        .call(
            Method::PATCH,
            &format!("/api/v1/endpoints/{id}"),
            &owner,
            Some(&json!({"description": "CRM", "rate_limit": null})),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(
        (e["description"].as_str(), &e["rate_limit"], &e["headers"]),
        (Some("CRM"), &Value::Null, &json!({"X-Token": "********"}))
    );
    let (s, _) = h
        .call(Method::PATCH, &format!("/api/v1/endpoints/{id}"), &owner, Some(&json!({"url": "http://10.0.0.1/"})))
        .await;
    assert_eq!(s, 422);
    assert_eq!(endpoint(&h, &owner, id).await["url"], rx.url("/x"), "a refused update changes nothing");

    h.send_welcome(&key, "Ada", "ada@example.test").await;
    let r = wait_requests(&rx, 1).await.remove(0);
    assert_eq!(header(&r, "x-token"), "t0k");
    assert_eq!(r.headers.get_all("webhook-signature").iter().count(), 1);
    assert!(verifies(ep["secret"].as_str().unwrap(), &r));

    let (s, _) = h.call(Method::DELETE, &format!("/api/v1/endpoints/{id}"), &owner, None).await;
    assert_eq!(s, 204);
    assert_eq!(h.call(Method::GET, &format!("/api/v1/endpoints/{id}"), &owner, None).await.0, 404);
    assert_eq!(h.count("endpoint_secrets").await, 0);
    h.stop().await;
}

#[tokio::test]
async fn rate_limited_endpoints_are_paced() {
    let (_sink, h, key) = setup(&[], &[]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    h.create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["user.registered"], "rate_limit": 5})).await;
    for i in 0..10 {
        h.send_welcome(&key, "Ada", &format!("ada{i}@example.test")).await;
    }
    let reqs = wait_requests(&rx, 10).await;
    let span = reqs[9].at - reqs[0].at;
    assert!(span >= Duration::from_millis(1700), "10 requests at 5/s take at least 1.8 s, took {span:?}");
    h.stop().await;
}

#[tokio::test]
async fn resend_recover_replay_and_test_events_make_new_attempts() {
    let (_sink, h, key) = setup(&[], &[("HERALD_WEBHOOK_RETRY_SCHEDULE", "100ms")]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    rx.set_default(Respond::Status(500));
    let ep = h.create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["user.registered"]})).await;
    let eid = ep["id"].as_str().unwrap().to_owned();
    let mut failed = Vec::new();
    for name in ["a", "b", "c"] {
        let id = h.send_welcome(&key, name, &format!("{name}@example.test")).await;
        let n = h.wait_terminal(&key, &id).await;
        let d = webhook_delivery(&n);
        assert_eq!(d["status"], "failed");
        assert_eq!(d["attempts"].as_array().unwrap().len(), 2);
        failed.push((id, d["id"].as_str().unwrap().to_owned()));
    }
    let (_, list) =
        h.call(Method::GET, &format!("/api/v1/endpoints/{eid}/deliveries?status=failed"), &owner, None).await;
    assert_eq!(list.as_array().unwrap().len(), 3);
    rx.set_default(Respond::Status(200));

    // Resend one delivery: a third attempt, the first two untouched.
    let (s, _) =
        h.call(Method::POST, &format!("/api/v1/endpoints/{eid}/deliveries/{}/resend", failed[0].1), &owner, None).await;
    assert_eq!(s, 202);
    let n = h.wait_terminal(&key, &failed[0].0).await;
    let d = webhook_delivery(&n);
    assert_eq!(d["status"], "succeeded");
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.iter().map(|a| a["http_status"].as_i64().unwrap()).collect::<Vec<_>>(), [500, 500, 200]);
    // Resending something still in progress is a conflict.
    sqlx::query("UPDATE deliveries SET status = 'retrying' WHERE id = $1::uuid")
        .bind(&failed[1].1)
        .execute(&h.db)
        .await
        .unwrap();
    let (s, p) =
        h.call(Method::POST, &format!("/api/v1/endpoints/{eid}/deliveries/{}/resend", failed[1].1), &owner, None).await;
    assert_eq!(s, 409, "{p}");
    sqlx::query("UPDATE deliveries SET status = 'failed' WHERE id = $1::uuid")
        .bind(&failed[1].1)
        .execute(&h.db)
        .await
        .unwrap();

    // Recover every failed delivery since a time.
    let (s, r) = h
        .call(
            Method::POST,
            &format!("/api/v1/endpoints/{eid}/recover"),
            &owner,
            Some(&json!({"since": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!((s, r["resent"].as_i64()), (202, Some(2)), "{r}");
    for (nid, _) in &failed[1..] {
        let n = h.wait_terminal(&key, nid).await;
        assert_eq!(webhook_delivery(&n)["attempts"].as_array().unwrap().len(), 3);
    }

    // Replay a notification to its endpoints (even a delivered one).
    let (s, r) = h.call(Method::POST, &format!("/api/v1/notifications/{}/replay", failed[0].0), &key, None).await;
    assert_eq!((s, r["resent"].as_i64()), (202, Some(1)), "{r}");
    eventually(Duration::from_secs(20), "the replayed attempt", || async {
        let n = h.get_notification(&key, &failed[0].0).await;
        let d = webhook_delivery(&n);
        (d["status"] == "succeeded" && d["attempts"].as_array().unwrap().len() == 4).then_some(())
    })
    .await;
    let other = h.api_key(&["notifications:write"]).await;
    assert_eq!(
        h.call(Method::POST, &format!("/api/v1/notifications/{}/replay", failed[0].0), &other, None).await.0,
        404
    );

    // A test event reaches the endpoint whatever its filter.
    let before = rx.count();
    let (s, t) = h.call(Method::POST, &format!("/api/v1/endpoints/{eid}/test"), &owner, None).await;
    assert_eq!(s, 202, "{t}");
    let r = wait_requests(&rx, before + 1).await.pop().unwrap();
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["type"], "webhook.test");
    assert_eq!(header(&r, "webhook-id"), t["deliveries"][0]["id"].as_str().unwrap());
    assert!(verifies(ep["secret"].as_str().unwrap(), &r));
    h.stop().await;
}

#[tokio::test]
async fn an_endpoint_that_times_out_does_not_hold_up_the_others() {
    // Two requests at a time to one endpoint, 1 s timeout: without deferral, 30 queued
    // attempts to a hanging endpoint would hold the batch for 15 s.
    // The api process takes the notifications first, so the webhook process's first
    // batch holds all 30 attempts to the hanging endpoint.
    let (_sink, h, key) = setup(
        &[],
        &[
            ("HERALD_WEBHOOK_ENDPOINT_CONCURRENCY", "2"),
            ("HERALD_WEBHOOK_TIMEOUT", "1s"),
            ("HERALD_ROLES", "api,email"),
        ],
    )
    .await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let slow = Receiver::start().await;
    slow.set_default(Respond::After(Duration::from_secs(30), 200));
    let fast = Receiver::start().await;
    h.create_endpoint(&owner, &json!({"url": slow.url("/"), "event_types": ["user.registered"]})).await;
    let ep = h.create_endpoint(&owner, &json!({"url": fast.url("/"), "event_types": ["endpoint.disabled"]})).await;
    futures::future::join_all((0..30).map(|i| {
        let (h, key) = (&h, &key);
        async move { h.send_welcome(key, "Ada", &format!("ada{i}@example.test")).await }
    }))
    .await;
    let mut env = h.env.clone();
    env.retain(|(k, _)| k != "HERALD_ROLES");
    env.push(("HERALD_ROLES".into(), "webhook".into()));
    let worker = Herald::start_with_env(env).await;
    // Wait until the slow endpoint's batch is under way, then ask for a test event.
    wait_requests(&slow, 1).await;
    let (s, _) =
        h.call(Method::POST, &format!("/api/v1/endpoints/{}/test", ep["id"].as_str().unwrap()), &owner, None).await;
    assert_eq!(s, 202);
    let asked = std::time::Instant::now();
    wait_requests(&fast, 1).await;
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "the test event waited {:?} behind the hanging endpoint",
        asked.elapsed()
    );
    // The hanging endpoint's other attempts were deferred, not made: no attempt rows for them.
    let attempted: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT a.delivery_id) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
         WHERE d.channel = 'webhook' AND d.target <> $1",
    )
    .bind(ep["id"].as_str().unwrap())
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert!(attempted < 30, "only some deliveries were attempted ({attempted}); the rest were deferred");
    worker.stop().await;
    h.stop().await;
}

/// `herald secret-key rotate`: every endpoint's signing secrets and custom headers move
/// to the new key, the audit chain still verifies from its first entry with the new key
/// alone (and no longer with the old one), webhooks after the restart are signed with
/// the secrets owners already hold, and a rotation onto the same key or with a wrong
/// current key changes nothing.
#[tokio::test]
async fn the_secret_key_rotates_without_losing_secrets_headers_or_the_chain() {
    const NEW_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let (_sink, h, key) = setup(&[], &[]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    let ep = h
        .create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["*"], "headers": {"X-Tenant": "acme"}}))
        .await;
    let id = ep["id"].as_str().unwrap().to_owned();
    let secret = ep["secret"].as_str().unwrap().to_owned();
    // A rotated-out secret still in its grace period moves too.
    let (s, _) = h
        .call(Method::POST, &format!("/api/v1/endpoints/{id}/secret/rotate"), &owner, Some(&json!({"grace": "1h"})))
        .await;
    assert_eq!(s, 200);
    let (_, current) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}/secret"), &owner, None).await;
    let current = current["key"].as_str().unwrap().to_owned();
    // An endpoint with OAuth client credentials: its client secret moves too.
    let (idp, oauth_rx) = (Receiver::start().await, Receiver::start().await);
    idp.set_default(Respond::Body(200, json!({"access_token": "tok", "expires_in": 3600}).to_string().into_bytes()));
    let auth = json!({"type": "oauth2", "token_url": idp.url("/t"), "client_id": "c", "client_secret": "kept-secret"});
    h.create_endpoint(&owner, &json!({"url": oauth_rx.url("/o"), "event_types": ["*"], "auth": auth})).await;
    let env = h.env.clone();
    h.stop().await;

    let with = |pairs: &[(&str, &str)]| {
        let mut e = env.clone();
        for (k, v) in pairs {
            e.retain(|(ek, _)| ek != k);
            e.push((k.to_string(), v.to_string()));
        }
        e
    };
    let (ok, _, err) = run_cli(&with(&[]), &["secret-key", "rotate"]).await;
    assert!(!ok && err.contains("HERALD_NEW_SECRET_KEY: is not set"), "{err}");
    let (ok, _, err) = run_cli(&with(&[("HERALD_NEW_SECRET_KEY", TEST_SECRET_KEY)]), &["secret-key", "rotate"]).await;
    assert!(!ok && err.contains("the new key is the current key"), "{err}");
    let wrong = with(&[("HERALD_SECRET_KEY", &"ab".repeat(32)), ("HERALD_NEW_SECRET_KEY", NEW_KEY)]);
    let (ok, _, err) = run_cli(&wrong, &["secret-key", "rotate"]).await;
    assert!(!ok && err.contains("audit log is broken"), "a wrong current key rotates nothing: {err}");

    let (ok, out, err) = run_cli(&with(&[("HERALD_NEW_SECRET_KEY", NEW_KEY)]), &["secret-key", "rotate"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("rotated: 3 endpoint secret(s) and 1 header set(s) re-sealed"), "{out}");
    assert!(out.contains("also re-sealed: 1 endpoint OAuth client secret(s)"), "{out}");

    let after = with(&[("HERALD_SECRET_KEY", NEW_KEY), ("HERALD_PREVIOUS_SECRET_KEY", TEST_SECRET_KEY)]);
    let (ok, out, err) = run_cli(&after, &["audit", "verify"]).await;
    assert!(ok && out.starts_with("OK: "), "the chain verifies with the new key alone: {out} {err}");
    let (ok, _, _) = run_cli(&with(&[]), &["audit", "verify"]).await;
    assert!(!ok, "the old key no longer verifies the chain");

    let h = Herald::start_with_env(after.clone()).await;
    let (_, read) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}/secret"), &owner, None).await;
    assert_eq!(read["key"], current.as_str(), "the current secret reads back");
    let (_, headers) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}/headers"), &owner, None).await;
    assert_eq!(headers["headers"]["X-Tenant"], "acme");
    h.send_welcome(&key, "Ada", "ada@example.test").await;
    let r = wait_requests(&rx, 1).await.remove(0);
    assert!(verifies(&current, &r) && verifies(&secret, &r), "both live secrets still sign");
    assert_eq!(header(&r, "x-tenant"), "acme");
    let o = wait_requests(&oauth_rx, 1).await.remove(0);
    assert_eq!(header(&o, "authorization"), "Bearer tok");
    let basic = header(&idp.requests()[0], "authorization");
    assert_eq!(basic, format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("c:kept-secret")));
    // New entries go on the chain under the new key, and a checkpoint takes it.
    h.create_endpoint(&owner, &json!({"url": rx.url("/b"), "event_types": ["*"]})).await;
    let (ok, out, err) = run_cli(&after, &["audit", "checkpoint"]).await;
    assert!(ok && out.starts_with("herald-audit-checkpoint v1"), "{out} {err}");
    let (ok, _, err) = run_cli(&after, &["audit", "verify", "--since-checkpoint", out.trim()]).await;
    assert!(ok, "{err}");
    h.stop().await;
}
