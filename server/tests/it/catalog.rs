//! `/api/v1/event-types` and `/api/v1/templates`: admins define event types (schema,
//! sample, routing) and templates (immutable versions, publish, roll back, preview);
//! the processor uses what is published; every change is audited.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;

fn invoice(n: u32) -> Value {
    json!({"event_type": "invoice.paid", "payload": {"invoice": {"number": n, "email": "ada@example.test"}}})
}

async fn subject_of_delivery(h: &Herald, notification: &str) -> (String, i64) {
    eventually(Duration::from_secs(20), "the delivery's content", || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT content->>'subject', (content->>'version')::int8 FROM deliveries WHERE notification_id = $1::uuid",
        )
        .bind(notification)
        .fetch_optional(&h.db)
        .await
        .unwrap()
    })
    .await
}

#[tokio::test]
async fn admins_define_event_types_and_templates_that_the_processor_uses() {
    let (sink, h, key) = setup(&[], &[]).await;
    let admin = h.api_key(&["admin"]).await;
    let call = |m: Method, path: &str, body: Option<Value>| {
        let (h, admin, path) = (&h, admin.clone(), path.to_owned());
        async move { h.call(m, &path, &admin, body.as_ref()).await }
    };

    // A template, with a syntax error refused first.
    let (s, v) = call(
        Method::POST,
        "/api/v1/templates",
        Some(json!({"key": "invoice-email", "subject": "Invoice {{ oops", "html_body": "x", "text_body": "x"})),
    )
    .await;
    assert_eq!((s, v["type"].as_str().unwrap()), (422, "urn:herald:problem:template-render-failed"), "{v}");
    let (s, v) = call(
        Method::POST,
        "/api/v1/templates",
        Some(json!({"key": "invoice-email", "subject": "Invoice {{ invoice.number }} paid",
                    "html_body": "<p>Thanks for paying {{ invoice.number }}</p>", "text_body": "Paid {{ invoice.number }}"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["latest_version"], 1);
    assert_eq!(v["published_version"], Value::Null);

    // An event type: the schema must be a schema, the sample must match it.
    let schema = json!({"type": "object", "required": ["invoice"], "properties": {"invoice": {"type": "object",
        "required": ["number", "email"], "properties": {"number": {"type": "integer"}, "email": {"type": "string"}}}}});
    let (s, v) = call(
        Method::POST,
        "/api/v1/event-types",
        Some(json!({"name": "invoice.paid", "payload_schema": {"type": 12}})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(
        Method::POST,
        "/api/v1/event-types",
        Some(json!({"name": "invoice.paid", "payload_schema": schema, "sample_payload": {"invoice": {"number": "x"}}})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(v["errors"][0]["pointer"].as_str().unwrap().starts_with("/sample_payload"), "{v}");
    // Routing to a template with nothing published is refused.
    let sample = json!({"invoice": {"number": 7, "email": "sample@example.test"}});
    let (s, v) = call(
        Method::POST,
        "/api/v1/event-types",
        Some(json!({"name": "invoice.paid", "payload_schema": schema, "sample_payload": sample,
                    "email_template": "invoice-email", "recipient_path": "invoice.email"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("no published version"), "{v}");
    let (s, v) = call(
        Method::POST,
        "/api/v1/event-types",
        Some(json!({"name": "invoice.paid", "payload_schema": schema, "sample_payload": sample})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = call(Method::POST, "/api/v1/event-types", Some(json!({"name": "invoice.paid"}))).await;
    assert_eq!(s, 409, "names are unique");

    // Preview against the event type's sample; an undefined variable is reported.
    let (s, v) =
        call(Method::POST, "/api/v1/templates/invoice-email/preview", Some(json!({"event_type": "invoice.paid"})))
            .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["subject"], "Invoice 7 paid");
    let (s, v) = call(
        Method::POST,
        "/api/v1/templates/invoice-email/preview",
        Some(json!({"event_type": "invoice.paid", "content": {"subject": "Hi", "html_body": "<p>\n{{ customer.name }}</p>", "text_body": ""}})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("undefined") && detail.contains("line 2"), "{detail}");

    // Publish, route, and the processor renders the published version.
    assert_eq!(call(Method::POST, "/api/v1/templates/invoice-email/publish", Some(json!({"version": 9}))).await.0, 400);
    assert_eq!(call(Method::POST, "/api/v1/templates/invoice-email/publish", Some(json!({"version": 1}))).await.0, 200);
    let (s, v) = call(
        Method::PATCH,
        "/api/v1/event-types/invoice.paid",
        Some(json!({"email_template": "invoice-email", "recipient_path": "invoice.nowhere"})),
    )
    .await;
    assert_eq!(s, 400, "a path that is not in the sample: {v}");
    let (s, v) = call(
        Method::PATCH,
        "/api/v1/event-types/invoice.paid",
        Some(json!({"email_template": "invoice-email", "recipient_path": "invoice.email"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let id = h.post(&key, &invoice(1)).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(subject_of_delivery(&h, &id).await, ("Invoice 1 paid".to_owned(), 1));

    // A new version changes nothing until published; publishing an older one rolls back.
    let (s, v) = call(
        Method::POST,
        "/api/v1/templates/invoice-email/versions",
        Some(json!({"subject": "Receipt for {{ invoice.number }}", "html_body": "<p>r</p>", "text_body": "r"})),
    )
    .await;
    assert_eq!((s, v["version"].as_i64()), (201, Some(2)));
    let id = h.post(&key, &invoice(2)).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(subject_of_delivery(&h, &id).await.1, 1);
    assert_eq!(call(Method::POST, "/api/v1/templates/invoice-email/publish", Some(json!({"version": 2}))).await.0, 200);
    let id = h.post(&key, &invoice(3)).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(subject_of_delivery(&h, &id).await, ("Receipt for 3".to_owned(), 2));
    assert_eq!(call(Method::POST, "/api/v1/templates/invoice-email/publish", Some(json!({"version": 1}))).await.0, 200);
    let id = h.post(&key, &invoice(4)).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(subject_of_delivery(&h, &id).await.1, 1);
    let (_, t) = call(Method::GET, "/api/v1/templates/invoice-email", None).await;
    assert_eq!(t["versions"].as_array().unwrap().len(), 2, "versions are kept");
    assert_eq!(t["versions"][1]["subject"], "Receipt for {{ invoice.number }}");

    // A test send: the chosen version, rendered against the sample, to one address only.
    let webhooks_before = h.count("deliveries WHERE channel = 'webhook'").await;
    let (s, v) = call(
        Method::POST,
        "/api/v1/templates/invoice-email/test",
        Some(json!({"to": "QA <qa@example.test>", "version": 2})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let mail = eventually(Duration::from_secs(20), "the test email", || async {
        sink.accepted().into_iter().find(|m| m.rcpt_to.iter().any(|r| r.contains("qa@example.test")))
    })
    .await;
    assert_eq!(mail.header("Subject").as_deref(), Some("Receipt for 7"), "version 2 against the sample");
    let (_, n) = call(Method::GET, &format!("/api/v1/notifications/{}", v["id"].as_str().unwrap()), None).await;
    assert_eq!(n["event_type"], "template.test");
    assert_eq!(n["deliveries"].as_array().unwrap().len(), 1, "email only: {n}");
    assert_eq!(h.count("deliveries WHERE channel = 'webhook'").await, webhooks_before);
    for bad in [
        json!({"to": "not an address"}),
        json!({"to": "qa@example.test", "version": 9}),
        json!({"to": "x@y.z", "bcc": 1}),
    ] {
        let (s, v) = call(Method::POST, "/api/v1/templates/invoice-email/test", Some(bad.clone())).await;
        assert!(s == 400 || s == 422, "{bad}: {s} {v}");
    }
    assert_eq!(call(Method::POST, "/api/v1/templates/nope/test", Some(json!({"to": "qa@example.test"}))).await.0, 404);
    let (s, _) = h
        .call(Method::POST, "/api/v1/notifications", &key, Some(&json!({"event_type": "template.test", "payload": {}})))
        .await;
    assert_eq!(s, 422, "clients cannot post Herald's own event type");

    // The diff between two versions, line by line and part by part.
    let (s, d) = call(Method::GET, "/api/v1/templates/invoice-email/diff?from=1&to=2", None).await;
    assert_eq!(s, 200, "{d}");
    let lines: Vec<(String, String, String)> = d["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (l["part"].as_str().unwrap().into(), l["tag"].as_str().unwrap().into(), l["text"].as_str().unwrap().into())
        })
        .collect();
    assert!(lines.contains(&("subject".into(), "-".into(), "Invoice {{ invoice.number }} paid".into())), "{d}");
    assert!(lines.contains(&("subject".into(), "+".into(), "Receipt for {{ invoice.number }}".into())), "{d}");
    assert!(lines.contains(&("text_body".into(), "+".into(), "r".into())), "{d}");
    assert_eq!(call(Method::GET, "/api/v1/templates/invoice-email/diff?from=1&to=9", None).await.0, 400);
    assert_eq!(call(Method::GET, "/api/v1/templates/invoice-email/diff?from=1", None).await.0, 400);
    assert_eq!(call(Method::GET, "/api/v1/templates/nope/diff?from=1&to=2", None).await.0, 404);
    let (s, _) = h.call(Method::GET, "/api/v1/templates/invoice-email/diff?from=1&to=2", &key, None).await;
    assert_eq!(s, 403, "admins only");

    // A schema change applies to the next notification.
    let stricter = json!({"type": "object", "required": ["invoice"], "properties": {"invoice": {"type": "object",
        "required": ["number", "email", "total"]}}});
    let (s, v) =
        call(Method::PATCH, "/api/v1/event-types/invoice.paid", Some(json!({"payload_schema": stricter}))).await;
    assert_eq!(s, 422, "the stored sample no longer matches: {v}");
    let sample2 = json!({"invoice": {"number": 7, "email": "s@example.test", "total": 10}});
    let (s, v) = call(
        Method::PATCH,
        "/api/v1/event-types/invoice.paid",
        Some(json!({"payload_schema": stricter, "sample_payload": sample2})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let r = h.post(&key, &invoice(5)).await;
    assert_eq!(r.status(), 422, "the new schema applies at once");

    // Herald's own event types cannot be changed; only admins manage the catalog.
    let (s, _) = call(Method::PATCH, "/api/v1/event-types/endpoint.disabled", Some(json!({"description": "x"}))).await;
    assert_eq!(s, 409);
    let (s, _) = h.call(Method::GET, "/api/v1/templates", &key, None).await;
    assert_eq!(s, 403);

    let (_, log) = call(Method::GET, "/api/v1/audit?target=invoice-email", None).await;
    let actions: Vec<&str> = log["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "template.test_sent",
            "template.published",
            "template.published",
            "template.version_added",
            "template.published",
            "template.created"
        ]
    );
    let (_, log) = call(Method::GET, "/api/v1/audit?target=invoice.paid", None).await;
    assert_eq!(log["data"].as_array().unwrap().len(), 3, "created, routed, schema changed");
    drop(sink);
    h.stop().await;
}

/// Every template that ships with Herald previews with the sample of the event type
/// that routes to it (the console's default preview), and every event type Herald ships
/// has a sample.
#[tokio::test]
async fn every_shipped_template_previews_with_its_own_sample() {
    let (_sink, h, _key) = setup(&[], &[]).await;
    let admin = h.api_key(&["admin"]).await;
    let (s, list) = h.call(Method::GET, "/api/v1/templates", &admin, None).await;
    assert_eq!(s, 200, "{list}");
    let keys: Vec<String> =
        list["data"].as_array().unwrap().iter().map(|t| t["key"].as_str().unwrap().to_owned()).collect();
    assert!(keys.contains(&"welcome-email".to_owned()) && keys.contains(&"endpoint-disabled".to_owned()), "{keys:?}");
    for key in keys {
        let (s, v) = h.call(Method::POST, &format!("/api/v1/templates/{key}/preview"), &admin, Some(&json!({}))).await;
        assert_eq!(s, 200, "{key}: {v}");
        assert!(!v["subject"].as_str().unwrap_or_default().is_empty(), "{key}: {v}");
    }
    let missing: Vec<String> =
        sqlx::query_scalar("SELECT name FROM event_types WHERE sample_payload IS NULL ORDER BY name")
            .fetch_all(&h.db)
            .await
            .unwrap();
    assert!(missing.is_empty(), "shipped event types without a sample: {missing:?}");
    h.stop().await;
}
