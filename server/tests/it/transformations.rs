//! Webhook transformations end to end: an endpoint's JavaScript reshapes the body,
//! changes the URL and headers, or cancels; hostile scripts (throwing, looping, eating
//! memory, reaching for the network or the disk) fail only their own attempt, quickly,
//! and the dispatcher goes on. The receiver checks the signature over the transformed
//! body with an independent Standard Webhooks implementation.

use std::time::{Duration, Instant};

use herald_testkit::receiver::Receiver;
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;

const SCOPES: &[&str] = &["endpoints:read", "endpoints:write"];

const SLACK: &str = r#"function handler(webhook) {
    const d = webhook.payload.data;
    webhook.payload = { text: `${webhook.event_type}: ${d.user.name} joined` };
    webhook.url = webhook.url.replace("/raw", "/slack");
    webhook.headers["X-Team"] = "growth";
    return webhook;
}"#;

async fn deliveries_of(h: &Herald, key: &str, ep: &str) -> Vec<Value> {
    let (s, v) = h.call(Method::GET, &format!("/api/v1/endpoints/{ep}/deliveries"), key, None).await;
    assert_eq!(s, 200, "{v}");
    v.as_array().unwrap().clone()
}

/// The endpoint's one delivery, once its first attempt is recorded.
async fn first_attempt(h: &Herald, key: &str, ep: &str) -> Value {
    let d = eventually(Duration::from_secs(20), "an attempt on the endpoint", || async {
        deliveries_of(h, key, ep).await.into_iter().find(|d| d["attempt_count"].as_i64() >= Some(1))
    })
    .await;
    let (s, v) = h
        .call(Method::GET, &format!("/api/v1/endpoints/{ep}/deliveries/{}", d["id"].as_str().unwrap()), key, None)
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test]
async fn transformations_reshape_or_cancel_and_hostile_scripts_fail_only_their_attempt() {
    let (_sink, h, key) = setup(&[], &[]).await;
    let owner = h.api_key_for(SCOPES, Some("acme"), None).await;
    let rx = Receiver::start().await;
    let mk = |path: &str, script: &str| json!({"url": rx.url(path), "event_types": ["*"], "transformation": script, "retry_schedule": "1h"});

    // A script that does not compile, or defines no handler, is refused at save: nothing made.
    let before = h.count("endpoints").await;
    for bad in ["function handler(w) { return w", "function handle(w) { return w; }", "for (;;) {}"] {
        let (s, p) = h.call(Method::POST, "/api/v1/endpoints", &owner, Some(&mk("/x", bad))).await;
        assert_eq!(s, 400, "{bad}: {p}");
        assert!(p["detail"].as_str().unwrap().starts_with("transformation:"), "{p}");
    }
    assert_eq!(h.count("endpoints").await, before);

    let slack = h.create_endpoint(&owner, &mk("/raw", SLACK)).await;
    let cancel = h
        .create_endpoint(
            &owner,
            &mk("/cancel", "function handler(w) { return { ...w, cancel: w.event_type === 'user.registered' }; }"),
        )
        .await;
    let hostile = [
        ("/throws", "function handler(w) { throw new Error('bad mood'); }", "Error: bad mood"),
        ("/loops", "function handler(w) { while (true) {} }", "longer than 50 ms"),
        ("/eats", "function handler(w) { const a = []; for (;;) a.push(new Array(1e5).fill(a.length)); }", "memory"),
        ("/net", "function handler(w) { fetch('http://127.0.0.1/'); return w; }", "fetch is not defined"),
        ("/disk", "function handler(w) { std.loadFile('/etc/passwd'); return w; }", "std is not defined"),
        ("/rebind", "function handler(w) { w.url = 'http://10.0.0.1/'; return w; }", "refused by the network policy"),
    ];
    let mut hostile_eps = Vec::new();
    for (path, script, _) in &hostile {
        hostile_eps.push(h.create_endpoint(&owner, &mk(path, script)).await);
    }
    // The API shows the script to its owner.
    let (_, got) =
        h.call(Method::GET, &format!("/api/v1/endpoints/{}", slack["id"].as_str().unwrap()), &owner, None).await;
    assert_eq!(got["transformation"], SLACK);

    let started = Instant::now();
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;

    // Reshaped, sent to the changed URL with the added header, signed over the new body.
    let reqs = eventually(Duration::from_secs(20), "the transformed webhook", || async {
        let r: Vec<_> = rx.requests().into_iter().filter(|r| r.path == "/slack").collect();
        (!r.is_empty()).then_some(r)
    })
    .await;
    let r = &reqs[0];
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body, json!({"text": "user.registered: Ada joined"}));
    assert_eq!(r.headers.get("x-team").unwrap(), "growth");
    let secret = slack["secret"].as_str().unwrap();
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .expect("signature over the transformed body");
    assert_eq!(r.headers.get("webhook-id").unwrap().to_str().unwrap(), {
        let d = first_attempt(&h, &owner, slack["id"].as_str().unwrap()).await;
        d["id"].as_str().unwrap().to_owned()
    });

    // Cancelled: nothing sent, the delivery is cancelled with the reason.
    let d = first_attempt(&h, &owner, cancel["id"].as_str().unwrap()).await;
    assert_eq!(d["status"], "cancelled", "{d}");
    assert_eq!(d["attempts"][0]["outcome"], "cancelled", "{d}");
    assert!(d["last_error"].as_str().unwrap().contains("cancelled by the endpoint's transformation"), "{d}");

    // Each hostile script failed its own attempt with a clear error, quickly, and is
    // retried on its schedule (the owner may fix the script meanwhile).
    for ((path, _, want), ep) in hostile.iter().zip(&hostile_eps) {
        let d = first_attempt(&h, &owner, ep["id"].as_str().unwrap()).await;
        assert_eq!(d["status"], "retrying", "{path}: {d}");
        let a = &d["attempts"][0];
        assert_eq!(a["outcome"], "transient_failure", "{path}: {a}");
        assert!(a["error"].as_str().unwrap().contains(want), "{path}: {a}");
        assert!(a["duration_ms"].as_i64().unwrap() < 2_000, "{path}: {a}");
    }
    assert!(rx.requests().iter().all(|r| r.path == "/slack"), "nothing reached any other path");
    assert!(started.elapsed() < Duration::from_secs(20));

    // The dispatcher goes on: the next notification is delivered as before.
    let next = h.send_welcome(&key, "Grace", "grace@example.test").await;
    eventually(Duration::from_secs(20), "the next transformed webhook", || async {
        rx.requests()
            .iter()
            .any(|r| r.path == "/slack" && String::from_utf8_lossy(&r.body).contains("Grace"))
            .then_some(())
    })
    .await;
    assert_ne!(id, next);

    // The owner fixes a failing script; a resend uses it.
    let broken = hostile_eps[0]["id"].as_str().unwrap();
    let (s, v) = h
        .call(
            Method::PATCH,
            &format!("/api/v1/endpoints/{broken}"),
            &owner,
            Some(&json!({"transformation": "function handler(w) { w.payload = {fixed: true}; return w; }"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Clearing it with null works too (checked on another endpoint).
    let (s, v) = h
        .call(
            Method::PATCH,
            &format!("/api/v1/endpoints/{}", hostile_eps[3]["id"].as_str().unwrap()),
            &owner,
            Some(&json!({"transformation": null})),
        )
        .await;
    assert_eq!((s, v["transformation"].clone()), (200, Value::Null), "{v}");
    // The audit log has the change.
    let admin = h.api_key(&["admin"]).await;
    let (_, audit) = h.call(Method::GET, "/api/v1/audit?action=endpoint.updated", &admin, None).await;
    assert!(audit.to_string().contains("fixed: true"), "{audit}");
}

#[tokio::test]
async fn a_trial_runs_a_script_on_the_sample_without_saving_or_sending() {
    let (_sink, h, _key) = setup(&[], &[]).await;
    let owner = h.api_key_for(SCOPES, Some("acme"), None).await;
    let trial = |script: &str| json!({"script": script});
    let call = |body: Value| {
        let (h, owner) = (&h, owner.clone());
        async move { h.call(Method::POST, "/api/v1/transformations/test", &owner, Some(&body)).await }
    };

    let (s, r) = call(trial(SLACK)).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["outcome"], "send");
    assert_eq!(r["webhook"]["payload"], json!({"text": "user.registered: Ada Lovelace joined"}));
    assert_eq!(r["webhook"]["headers"]["X-Team"], "growth");

    let (_, r) = call(trial("function handler(w) { w.cancel = true; return w; }")).await;
    assert_eq!(r["outcome"], "cancel", "{r}");
    let (_, r) = call(trial("function handler(w) { for(;;){} }")).await;
    assert_eq!(r["outcome"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("longer than 50 ms"), "{r}");
    let (_, r) = call(trial("function handler(w) { w.headers['webhook-signature'] = 'forged'; return w; }")).await;
    assert!(r["error"].as_str().unwrap().contains("set by Herald"), "{r}");
    // A given webhook instead of the sample.
    let (_, r) = call(json!({
        "script": "function handler(w) { w.payload.seen = w.payload.n + 1; return w; }",
        "webhook": {"event_type": "order.paid", "payload": {"n": 41}, "url": "http://127.0.0.1:9/x", "headers": {}}
    }))
    .await;
    assert_eq!(r["webhook"]["payload"], json!({"n": 41, "seen": 42}), "{r}");

    // Bad input: problem+json, nothing run (this server takes bodies up to 8 KiB).
    let (s, p) = call(json!({"script": "x".repeat(70_000)})).await;
    assert_eq!((s, p["type"].as_str()), (413, Some("urn:herald:problem:payload-too-large")), "{p}");
    let (s, p) = call(json!({"scrip": "x"})).await;
    assert_eq!(s, 400, "{p}");
    // A key without endpoints:write may not.
    let reader = h.api_key_for(&["endpoints:read"], Some("acme"), None).await;
    let (s, _) = h.call(Method::POST, "/api/v1/transformations/test", &reader, Some(&trial(SLACK))).await;
    assert_eq!(s, 403);
}
