//! Every refusal: right status, right problem type, and nothing written.

use serde_json::{json, Value};

use crate::harness::*;

async fn assert_nothing_written(h: &Herald) {
    for table in ["notifications", "deliveries", "outbox", "idempotency_keys", "attempts"] {
        assert_eq!(h.count(table).await, 0, "{table} must stay empty");
    }
}

async fn problem(r: reqwest::Response, status: u16, slug: &str) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], format!("urn:herald:problem:{slug}"), "{p}");
    assert_eq!(p["status"], status);
    assert!(p["title"].is_string() && p["detail"].is_string());
    p
}

#[tokio::test]
async fn refusals_are_problem_json_and_write_nothing() {
    let sink = SmtpSink::start().await;
    let h = Herald::start(&fresh_database().await, &sink.url(), &[]).await;
    let key = h.api_key(&["notifications:write"]).await;
    let url = format!("{}/api/v1/notifications", h.base);
    let raw = |body: &'static str| {
        h.http.post(&url).bearer_auth(&key).header("content-type", "application/json").body(body).send()
    };

    // Malformed JSON.
    problem(raw("{\"event_type\": ").await.unwrap(), 400, "malformed-json").await;
    // Well-formed JSON of the wrong shape.
    problem(raw("{\"payload\": {}}").await.unwrap(), 400, "invalid-request").await;

    // Unknown event type.
    let p = problem(h.post(&key, &json!({"event_type": "nope.never", "payload": {}})).await, 422, "unknown-event-type")
        .await;
    assert!(p["detail"].as_str().unwrap().contains("nope.never"));

    // Payload failing the schema: the field is named.
    let p = problem(
        h.post(&key, &json!({"event_type": "user.registered", "payload": {"user": {"name": "Ada"}}})).await,
        422,
        "schema-violation",
    )
    .await;
    let errors = p["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e["pointer"] == "/user" && e["message"].as_str().unwrap().contains("email")), "{p}");
    let p = problem(
        h.post(&key, &json!({"event_type": "user.registered", "payload": {"user": {"name": 7, "email": "a@b.test"}}}))
            .await,
        422,
        "schema-violation",
    )
    .await;
    assert_eq!(p["errors"][0]["pointer"], "/user/name");

    // Invalid recipient.
    problem(h.post(&key, &welcome("Ada", "not-an-address")).await, 422, "invalid-recipient").await;

    // Template render failure and no recipient need event types of their own.
    sqlx::raw_sql(
        "INSERT INTO templates (key, published_version) VALUES ('broken', 1);
         INSERT INTO template_versions (template_key, version, subject, html_body, text_body)
           VALUES ('broken', 1, 'Hi {{ user.nickname }}', '<p>x</p>', 'x');
         INSERT INTO event_types (name, email_template, recipient_path) VALUES ('test.broken', 'broken', 'to');
         INSERT INTO event_types (name, email_template) VALUES ('test.nowhere', 'welcome-email');",
    )
    .execute(&h.db)
    .await
    .unwrap();
    let p = problem(
        h.post(&key, &json!({"event_type": "test.broken", "payload": {"to": "a@b.test", "user": {}}})).await,
        422,
        "template-render-failed",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("subject"), "{p}");
    problem(
        h.post(&key, &json!({"event_type": "test.nowhere", "payload": {"user": {"name": "A"}}})).await,
        422,
        "no-recipient",
    )
    .await;

    // Over the body limit (8 KiB in tests).
    let big = json!({"event_type": "user.registered", "payload": {"user": {"name": "x".repeat(20_000), "email": "a@b.test"}}});
    problem(h.post(&key, &big).await, 413, "payload-too-large").await;

    // Authentication: missing, malformed, unknown, revoked.
    let r = h.http.post(&url).json(&welcome("Ada", "ada@example.test")).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    problem(r, 401, "unauthorized").await;
    let r = h.http.post(&url).header("authorization", "Basic Zm9vOmJhcg==").send().await.unwrap();
    problem(r, 401, "unauthorized").await;
    problem(h.post("hk_000000000000_00", &welcome("Ada", "ada@example.test")).await, 401, "unauthorized").await;
    let forged = format!("{}0", &key[..key.len() - 1]);
    let forged = if forged == key { format!("{}1", &key[..key.len() - 1]) } else { forged };
    problem(h.post(&forged, &welcome("Ada", "ada@example.test")).await, 401, "unauthorized").await;

    let revoked = h.api_key(&["notifications:write"]).await;
    let (ok, listing, _) = run_cli(&h.env, &["api-key", "list"]).await;
    assert!(ok);
    assert!(!listing.contains(&revoked), "list must not print secrets");
    let prefix = revoked.split('_').nth(1).unwrap();
    let id = listing.lines().find(|l| l.contains(prefix)).unwrap().split_whitespace().next().unwrap().to_owned();
    let (ok, _, err) = run_cli(&h.env, &["api-key", "revoke", &id]).await;
    assert!(ok, "{err}");
    problem(h.post(&revoked, &welcome("Ada", "ada@example.test")).await, 401, "unauthorized").await;

    // Authorization: a read-only key cannot send.
    let reader = h.api_key(&["notifications:read"]).await;
    let p = problem(h.post(&reader, &welcome("Ada", "ada@example.test")).await, 403, "forbidden").await;
    assert!(p["detail"].as_str().unwrap().contains("notifications:write"));
    // ... and a write-only key cannot read.
    let r = h.http.get(format!("{url}/0190a0a0-0000-7000-8000-000000000000")).bearer_auth(&key).send().await.unwrap();
    problem(r, 403, "forbidden").await;

    assert_nothing_written(&h).await;
    assert_eq!(sink.data_ends(), 0);
    h.stop().await;
}

#[tokio::test]
async fn notifications_are_visible_only_to_their_owner() {
    let sink = SmtpSink::start().await;
    let h = Herald::start(&fresh_database().await, &sink.url(), &[]).await;
    let a = h.api_key(&["notifications:write", "notifications:read"]).await;
    let b = h.api_key(&["notifications:read"]).await;
    let admin = h.api_key(&["admin"]).await;
    let n: Value = h.post(&a, &welcome("Ada", "ada@example.test")).await.json().await.unwrap();
    let url = format!("{}/api/v1/notifications/{}", h.base, n["id"].as_str().unwrap());
    let r = h.http.get(&url).bearer_auth(&b).send().await.unwrap();
    problem(r, 404, "not-found").await;
    assert_eq!(h.http.get(&url).bearer_auth(&admin).send().await.unwrap().status(), 200);
    assert_eq!(h.http.get(&url).bearer_auth(&a).send().await.unwrap().status(), 200);
    let r = h.http.get(format!("{}/api/v1/notifications/not-a-uuid", h.base)).bearer_auth(&a).send().await.unwrap();
    problem(r, 404, "not-found").await;
    h.stop().await;
}

#[tokio::test]
async fn unknown_paths_methods_and_query_strings_under_api_are_problem_json() {
    let sink = SmtpSink::start().await;
    let h = Herald::start(&fresh_database().await, &sink.url(), &[]).await;
    let key = h.api_key(&["endpoints:read", "endpoints:write"]).await;
    problem(h.http.get(format!("{}/api/v1/no-such-thing", h.base)).send().await.unwrap(), 404, "not-found").await;
    problem(h.http.get(format!("{}/api", h.base)).send().await.unwrap(), 404, "not-found").await;
    problem(h.http.put(format!("{}/api/v1/notifications", h.base)).send().await.unwrap(), 405, "method-not-allowed")
        .await;
    let r = h.http.get(format!("{}/api/v1/endpoints?limit=lots", h.base)).bearer_auth(&key).send().await.unwrap();
    let p = problem(r, 400, "invalid-request").await;
    assert!(p["detail"].as_str().unwrap().contains("query string"), "{p}");
    // The console still answers its own pages.
    assert_eq!(h.http.get(format!("{}/", h.base)).send().await.unwrap().status(), 200);
    h.stop().await;
}

/// The console's assets come from the binary: an unknown path is the console's own page
/// with status 404, and nothing outside the embedded assets is served (no file from the
/// working directory, however the path is spelled).
#[tokio::test]
async fn unknown_console_paths_are_404_and_no_file_leaks() {
    let sink = SmtpSink::start().await;
    let h = Herald::start(&fresh_database().await, &sink.url(), &[]).await;
    for path in ["/no-such-page", "/pkg/herald.js", "/Cargo.toml", "/pkg/..%2f..%2fCargo.toml", "/server/build.rs"] {
        let r = h.http.get(format!("{}{path}", h.base)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"), "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains("Page not found"), "{path}: the console's own page");
        assert!(!body.contains("[workspace]") && !body.contains("fn main"), "{path}");
    }
    // The stylesheet and the favicon are served from memory, with an ETag that revalidates.
    let page = h.http.get(format!("{}/", h.base)).send().await.unwrap().text().await.unwrap();
    let css =
        page.split("href=\"").find_map(|s| s.split('"').next().filter(|h| h.ends_with(".css"))).unwrap().to_owned();
    assert!(css.starts_with("/pkg/herald-"), "{css}");
    let r = h.http.get(format!("{}{css}", h.base)).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["cache-control"].to_str().unwrap().contains("immutable"));
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = h.http.get(format!("{}{css}", h.base)).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), 304);
    let r = h.http.get(format!("{}/favicon.svg", h.base)).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    h.stop().await;
}
