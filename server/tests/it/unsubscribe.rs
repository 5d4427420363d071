//! One-click unsubscribe (RFC 8058) as a mail provider does it, the preference page,
//! the API's preferences, and transactional mail that is never unsubscribable.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;

async fn ok(h: &Herald, key: &str, m: Method, path: &str, body: Value) -> Value {
    let (s, v) = h.call(m, path, key, Some(&body)).await;
    assert!((200..300).contains(&s), "{path}: {s} {v}");
    v
}

async fn notify(h: &Herald, key: &str, event_type: &str, email: &str) -> Value {
    let r = h.post(key, &json!({"event_type": event_type, "payload": {"user": {"name": "Ann", "email": email}}})).await;
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

async fn terminal(h: &Herald, key: &str, accepted: &Value) -> Value {
    let id = accepted["id"].as_str().unwrap();
    eventually(Duration::from_secs(15), "a terminal delivery", || async {
        let d = h.get_notification(key, id).await["deliveries"][0].clone();
        (!["pending", "in_flight", "retrying"].contains(&d["status"].as_str().unwrap())).then_some(d)
    })
    .await
}

#[tokio::test]
async fn one_click_unsubscribes_a_category_and_transactional_mail_still_goes() {
    let inbound = format!("127.0.0.1:{}", free_port());
    let (sink, h, key) = setup(
        &[],
        &[
            ("HERALD_BOUNCE_ADDRESS", "bounces@mail.test"),
            ("HERALD_INBOUND_SMTP_ADDR", inbound.as_str()),
            ("HERALD_PUBLIC_URL", "http://127.0.0.1:1"),
        ],
    )
    .await;
    let admin = h.api_key(&["admin"]).await;
    // A template using the links, a newsletter in category `news`, a transactional notice.
    ok(&h, &admin, Method::POST, "/api/v1/templates", json!({"key": "digest", "subject": "News for {{ user.name }}",
        "html_body": "<p>News.</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a> · <a href=\"{{ preferences_url }}\">Preferences</a></p>",
        "text_body": "News.\nUnsubscribe: {{ unsubscribe_url }}\n"}))
    .await;
    ok(&h, &admin, Method::POST, "/api/v1/templates/digest/publish", json!({"version": 1})).await;
    ok(&h, &admin, Method::POST, "/api/v1/event-types", json!({"name": "news.weekly", "email_template": "digest",
        "recipient_path": "user.email", "category": "news", "sample_payload": {"user": {"name": "A", "email": "a@x.test"}}}))
    .await;
    ok(
        &h,
        &admin,
        Method::POST,
        "/api/v1/event-types",
        json!({"name": "security.alert", "email_template": "digest",
        "recipient_path": "user.email", "transactional": true, "category": "security",
        "sample_payload": {"user": {"name": "A", "email": "a@x.test"}}}),
    )
    .await;
    let (s, v) = h
        .call(Method::POST, "/api/v1/event-types", &admin, Some(&json!({"name": "bad.cat", "category": "No Spaces"})))
        .await;
    assert_eq!(s, 400, "{v}");

    // The newsletter carries the headers and the recipient's own links.
    let a = notify(&h, &key, "news.weekly", "Ann@Example.net").await;
    assert_eq!(terminal(&h, &key, &a).await["status"], "succeeded");
    let mail = sink.accepted().pop().unwrap();
    let list = mail.header("List-Unsubscribe").expect("List-Unsubscribe");
    assert_eq!(mail.header("List-Unsubscribe-Post").as_deref(), Some("List-Unsubscribe=One-Click"));
    let url = list.split(['<', '>']).find(|p| p.starts_with("http://")).unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:1/u/"), "{list}");
    assert!(list.contains("<mailto:bounces+") && list.contains("?subject=unsubscribe>"), "{list}");
    let body = mail.data.replace("=\r\n", "");
    assert!(!body.contains("HERALD_UNSUBSCRIBE_URL") && body.contains("/u/"), "the link in the body");
    let path = url.trim_start_matches("http://127.0.0.1:1").to_owned();
    let local = format!("{}{path}", h.base);

    // A mail provider's one-click POST: no login, no page, no cookie.
    let r = h
        .http
        .post(&local)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The next newsletter is suppressed; the transactional notice and another category go.
    let b = notify(&h, &key, "news.weekly", "ann@example.net").await;
    assert_eq!(b["deliveries"][0]["status"], "suppressed", "{b}");
    let c = notify(&h, &key, "security.alert", "ann@example.net").await;
    assert_eq!(terminal(&h, &key, &c).await["status"], "succeeded");
    let notice = sink.accepted().pop().unwrap();
    assert!(notice.header("List-Unsubscribe").is_none(), "transactional mail is not unsubscribable");
    let d = notify(&h, &key, "user.registered", "ann@example.net").await;
    assert_eq!(terminal(&h, &key, &d).await["status"], "succeeded");
    let feedback: i64 =
        sqlx::query_scalar("SELECT count(*) FROM email_feedback WHERE kind = 'unsubscribe' AND source = 'one_click'")
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert_eq!(feedback, 1);

    // The page: server-rendered, no script, the address masked; a forged link is refused.
    let page = h.http.get(&local).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script") && html.contains("a•••@example.net") && !html.contains("ann@example.net"));
    assert!(html.contains("value=\"news\">") && html.contains("value=\"general\" checked"), "{html}");
    assert!(!html.contains("value=\"security\""), "transactional categories are not offered");
    let mut forged = local.clone();
    forged.insert(forged.len() - 3, 'x');
    assert_eq!(h.http.get(&forged).send().await.unwrap().status(), 404);
    assert_eq!(h.http.post(&forged).body("List-Unsubscribe=One-Click").send().await.unwrap().status(), 404);

    // The page's form: leave everything.
    let r = h
        .http
        .post(&local)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("save=1&all=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("saved"));
    let e = notify(&h, &key, "user.registered", "ann@example.net").await;
    assert_eq!(e["deliveries"][0]["status"], "suppressed");

    // Services read and set preferences over the API.
    let p = ok(&h, &key, Method::GET, "/api/v1/recipients/ANN@example.net/preferences", json!(null)).await;
    assert_eq!(p["unsubscribed_from_all"], true, "{p}");
    let (s, _) = h
        .call(
            Method::PUT,
            "/api/v1/recipients/ann@example.net/preferences",
            &key,
            Some(&json!({"categories": [{"category": "nope", "subscribed": true}], "unsubscribed_from_all": false})),
        )
        .await;
    assert_eq!(s, 400);
    // Another owner never learns about this owner's recipients.
    let other = h.api_key_for(&["notifications:write"], Some("bob"), None).await;
    let (s, _) = h.call(Method::GET, "/api/v1/recipients/ann@example.net/preferences", &other, None).await;
    assert_eq!(s, 404);
    let (s, _) = h
        .call(
            Method::PUT,
            "/api/v1/recipients/ann@example.net/preferences",
            &other,
            Some(&json!({"categories": [], "unsubscribed_from_all": false})),
        )
        .await;
    assert_eq!(s, 404);
    let reader = h.api_key(&["notifications:read"]).await;
    let (s, _) = h.call(Method::GET, "/api/v1/recipients/ann@example.net/preferences", &reader, None).await;
    assert_eq!(s, 403);
    let p = ok(
        &h,
        &key,
        Method::PUT,
        "/api/v1/recipients/ann@example.net/preferences",
        json!({"categories": [{"category": "news", "subscribed": true}, {"category": "general", "subscribed": true}],
               "unsubscribed_from_all": false}),
    )
    .await;
    assert!(p["categories"].as_array().unwrap().iter().all(|c| c["subscribed"] == true), "{p}");
    let f = notify(&h, &key, "news.weekly", "ann@example.net").await;
    assert_eq!(terminal(&h, &key, &f).await["status"], "succeeded");
}
