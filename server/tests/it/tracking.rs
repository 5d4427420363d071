//! Email tracking: a template version opts into opens and clicks; the email received by
//! a real SMTP server is parsed, its pixel and a link fetched over HTTP, and the open and
//! click appear on the delivery, on the dashboard and as `email.opened` /
//! `email.clicked` webhooks. Forged tokens change nothing and redirect nowhere; opted-out
//! links and `mailto:` stay; with tracking off the HTML goes out as rendered.

use std::time::Duration;

use herald_testkit::receiver::Receiver;
use reqwest::Method;
use serde_json::{json, Value};

use herald_core::tracking;

use crate::harness::*;

const HTML: &str = r#"<!doctype html><html><body><h1>Welcome, {{ user.name }}!</h1>
<p><a href="https://app.example.test/start?who={{ user.name }}&amp;step=1">Get started</a></p>
<p><a href="mailto:help@example.test">Write to us</a> ·
<a data-herald-notrack href="https://app.example.test/private/{{ user.name }}">Your private page</a> ·
<a href="https://app.example.test/unsubscribe?u=1">Unsubscribe</a></p>
</body></html>"#;
const TEXT: &str =
    "Welcome, {{ user.name }}!\n\nGet started: https://app.example.test/start?who={{ user.name }}&step=1\n";
const START: &str = "https://app.example.test/start?who=Ada&step=1";

/// Publishes a new version of the welcome template with these tracking choices.
async fn publish_welcome(h: &Herald, admin: &str, opens: bool, clicks: bool) {
    let (s, v) = h
        .call(
            Method::POST,
            "/api/v1/templates/welcome-email/versions",
            admin,
            Some(&json!({"subject": "Welcome, {{ user.name }}", "html_body": HTML, "text_body": TEXT,
                         "track_opens": opens, "track_clicks": clicks})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let version = v["version"].as_i64().unwrap();
    let (s, v) = h
        .call(Method::POST, "/api/v1/templates/welcome-email/publish", admin, Some(&json!({"version": version})))
        .await;
    assert_eq!(s, 200, "{v}");
}

/// The (html, text) of the only email the sink accepted, decoded from MIME.
async fn received(sink: &herald_testkit::smtp::SmtpSink) -> (String, String) {
    eventually(Duration::from_secs(20), "the email", || async { (sink.accepted_count() == 1).then_some(()) }).await;
    let mail = sink.accepted().remove(0);
    let msg = mail_parser::MessageParser::default().parse(mail.data.as_bytes()).expect("a MIME message");
    (msg.body_html(0).unwrap().into_owned(), msg.body_text(0).unwrap().into_owned())
}

/// Every `href="…"` of an HTML document, in order.
fn hrefs(html: &str) -> Vec<String> {
    html.split("href=\"").skip(1).map(|rest| rest[..rest.find('"').unwrap()].to_owned()).collect()
}

/// The tracking pixel's URL (the email's first `src="…"`).
fn pixel_of(html: &str) -> String {
    html.split("src=\"").nth(1).map(|r| r[..r.find('"').unwrap()].to_owned()).expect("a pixel")
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0";

#[tokio::test]
async fn a_tracked_welcome_email_records_its_open_and_click_on_the_delivery_the_dashboard_and_as_events() {
    let (sink, h, key) = setup(&[], &[]).await;
    let admin = h.api_key(&["admin"]).await;
    // Internal events: an owner cannot subscribe; an admin's endpoint gets them.
    let owner = h.api_key(&["endpoints:write", "endpoints:read"]).await;
    let rx = Receiver::start().await;
    let (s, v) = h
        .call(
            Method::POST,
            "/api/v1/endpoints",
            &owner,
            Some(&json!({"url": rx.url("/owner"), "event_types": ["email.opened"]})),
        )
        .await;
    assert!((400..500).contains(&s), "an owner may not receive internal events: {s} {v}");
    h.create_endpoint(&admin, &json!({"url": rx.url("/admin"), "event_types": ["email.opened", "email.clicked"]}))
        .await;
    publish_welcome(&h, &admin, true, true).await;

    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let (html, text) = received(&sink).await;
    let links = hrefs(&html);
    let click = format!("{}/t/c/", h.base);
    assert!(links[0].starts_with(&click), "the start link goes through Herald: {links:?}");
    assert_eq!(links[1], "mailto:help@example.test", "mailto: is left alone");
    assert_eq!(links[2], "https://app.example.test/private/Ada", "an opted-out link is left alone");
    assert!(!html.contains("data-herald-notrack"), "the opt-out attribute is removed");
    assert_eq!(links[3], "https://app.example.test/unsubscribe?u=1", "unsubscribe links are left alone");
    let pixel = pixel_of(&html);
    assert!(pixel.starts_with(&format!("{}/t/o/", h.base)), "{pixel}");
    assert!(html.find(&pixel).unwrap() < html.find("</body>").unwrap(), "the pixel is inside the body");
    let text_link = text.split_whitespace().find(|w| w.starts_with(&click)).expect("the text part's link is tracked");
    for token in [&pixel, &links[0], &text_link.to_owned()] {
        assert!(!token.contains("ada") && !token.contains("app.example"), "tokens name nobody and nowhere: {token}");
    }
    // The stored delivery keeps the content as rendered.
    let (stored,): (String,) =
        sqlx::query_as("SELECT content->>'html' FROM deliveries WHERE notification_id = $1::uuid")
            .bind(&id)
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert!(stored.contains("href=\"https://app.example.test/start?who=Ada&amp;step=1\"") && !stored.contains("/t/o/"));

    let http = no_redirects();
    let n = h.wait_terminal(&key, &id).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A scanner that follows links within a second of delivery is not a person: recorded
    // with the time it came (taken here at delivery + 300 ms), through the recorder itself.
    let delivery: uuid::Uuid = n["deliveries"][0]["id"].as_str().unwrap().parse().unwrap();
    let delivered: chrono::DateTime<chrono::Utc> = n["deliveries"][0]["updated_at"].as_str().unwrap().parse().unwrap();
    let soon = delivered + chrono::Duration::milliseconds(300);
    let hits = [tracking::Kind::Open, tracking::Kind::Click].map(|kind| tracking::Hit {
        token: tracking::Token { delivery, kind, link: 0 },
        at: soon,
        machine: None,
    });
    let processor = herald_core::notifications::accept::Processor::new(h.db.clone());
    tracking::record(&h.db, &processor, hits.to_vec(), herald_core::config::TrackingMode::Full).await.unwrap();

    // A person opens it (twice), a privacy proxy and a HEAD request fetch the pixel.
    for ua in [BROWSER, BROWSER, "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"] {
        let r = http.get(&pixel).header("user-agent", ua).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "image/gif");
        assert_eq!(r.headers()["cache-control"], "no-store, private");
        assert_eq!(r.bytes().await.unwrap().len(), 43);
    }
    assert_eq!(http.head(&pixel).header("user-agent", BROWSER).send().await.unwrap().status(), 200);
    // ...and clicks the link from the HTML and then the one from the text part.
    for link in [&links[0], &text_link.to_owned()] {
        let r = http.get(link).header("user-agent", BROWSER).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (302, START));
    }

    let tracking = eventually(Duration::from_secs(20), "opens and clicks on the delivery", || async {
        let n = h.get_notification(&key, &id).await;
        let t = n["deliveries"][0]["tracking"].clone();
        (t["opens"] == 2 && t["clicks"][0]["clicks"] == 2 && t["machine_opens"] == 3).then_some(t)
    })
    .await;
    assert_eq!(tracking["track_opens"], true);
    assert_eq!(tracking["clicks"].as_array().unwrap().len(), 1, "one link, clicked twice: {tracking}");
    assert_eq!(tracking["clicks"][0]["url"], START);
    assert_eq!(tracking["clicks"][0]["index"], 0);
    assert_eq!(tracking["machine_clicks"], 1, "the scanner's click within a second of delivery");
    assert!(tracking["first_opened_at"].as_str() < tracking["last_opened_at"].as_str(), "{tracking}");

    // Events: the first open and the link's first click, each once, to the admin's endpoint.
    let events = eventually(Duration::from_secs(20), "email.opened and email.clicked webhooks", || async {
        let got: Vec<Value> = rx.requests().iter().map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()).collect();
        (got.len() >= 2).then_some(got)
    })
    .await;
    // Events are notifications: with the outbox empty, no other is on its way.
    h.wait_count("outbox", 0).await;
    assert_eq!(rx.count(), 2, "one event per first open and per link's first click");
    assert!(rx.requests().iter().all(|r| r.path == "/admin"));
    let opened = events.iter().find(|e| e["type"] == "email.opened").expect("email.opened");
    let clicked = events.iter().find(|e| e["type"] == "email.clicked").expect("email.clicked");
    assert_eq!(opened["data"]["notification_id"], id.as_str());
    assert_eq!(opened["data"]["event_type"], "user.registered");
    assert_eq!(opened["data"]["template"]["key"], "welcome-email");
    assert_eq!(clicked["data"]["link"], json!({"index": 0, "url": START}));
    assert!(!opened.to_string().contains("ada@example.test"), "no address in the event: {opened}");

    // The dashboard: a rate per template.
    let (s, stats) = h.call(Method::GET, "/api/v1/stats?window=1h", &admin, None).await;
    assert_eq!(s, 200, "{stats}");
    assert_eq!(stats["tracking_mode"], "full");
    let row = stats["email_tracking"].as_array().unwrap().iter().find(|r| r["template"] == "welcome-email").cloned();
    let row = row.expect("the welcome template's row");
    assert_eq!((row["delivered"].as_i64(), row["unique_opens"].as_i64()), (Some(1), Some(1)), "{row}");
    assert_eq!((row["opens"].as_i64(), row["clicks"].as_i64(), row["machine"].as_i64()), (Some(2), Some(2), Some(4)));
    assert_eq!((row["open_rate"].as_f64(), row["click_rate"].as_f64()), (Some(1.0), Some(1.0)));

    // Forged, altered, swapped and unknown tokens: the same answers, nothing recorded.
    let before = h.count("email_events").await;
    let token = links[0].rsplit('/').next().unwrap().to_owned();
    let mut altered = token.clone().into_bytes();
    altered[30] = if altered[30] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let open_token = pixel.rsplit('/').next().unwrap().to_owned();
    let nowhere = http.get(format!("{}/t/c/{}", h.base, "x".repeat(79))).send().await.unwrap();
    let (nowhere_status, nowhere_body) = (nowhere.status(), nowhere.text().await.unwrap());
    assert_eq!(nowhere_status, 404);
    // (The open token at /t/c is a token of the wrong kind; at /t/o it is a real open.)
    for bad in [altered.as_str(), open_token.as_str(), "", "%00", &"A".repeat(5000)] {
        let r = http.get(format!("{}/t/c/{bad}", h.base)).header("user-agent", BROWSER).send().await.unwrap();
        assert!(r.headers().get("location").is_none(), "no redirect for a forged token");
        if !bad.is_empty() {
            assert_eq!((r.status(), r.text().await.unwrap()), (nowhere_status, nowhere_body.clone()), "{bad}");
        }
        let r = http.get(format!("{}/t/o/{bad}", h.base)).header("user-agent", BROWSER).send().await.unwrap();
        if !bad.is_empty() && bad != open_token {
            assert_eq!(r.status(), 200, "the pixel for any open token");
            assert_eq!(r.bytes().await.unwrap().len(), 43);
        }
    }
    // An open token's delivery with a click token's shape: Herald's redirect target comes
    // only from the stored email, whatever the request says.
    let r = http.get(format!("{}?url=https://evil.example/", links[0])).send().await.unwrap();
    assert_eq!(r.headers()["location"].to_str().unwrap(), START);
    // The recorder takes hits in order: once a genuine open sent after them is recorded,
    // the forged ones have been dealt with.
    assert_eq!(http.get(&pixel).header("user-agent", BROWSER).send().await.unwrap().status(), 200);
    eventually(Duration::from_secs(20), "the last genuine open", || async {
        (h.count("email_events").await >= before + 3).then_some(())
    })
    .await;
    assert_eq!(h.count("email_events").await, before + 3, "only the genuine opens and click were recorded");
    h.stop().await;
}

#[tokio::test]
async fn with_tracking_off_the_html_goes_out_byte_for_byte_and_tokens_record_nothing() {
    let (sink, h, key) = setup(&[], &[("HERALD_TRACKING", "off")]).await;
    let admin = h.api_key(&["admin"]).await;
    publish_welcome(&h, &admin, true, true).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let (html, text) = received(&sink).await;
    let (stored_html, stored_text): (String, String) =
        sqlx::query_as("SELECT content->>'html', content->>'text' FROM deliveries WHERE notification_id = $1::uuid")
            .bind(&id)
            .fetch_one(&h.db)
            .await
            .unwrap();
    // SMTP carries text in CRLF lines (RFC 5322); apart from that, byte for byte.
    let lines = |s: &str| s.replace("\r\n", "\n");
    assert_eq!(lines(&html).as_bytes(), stored_html.as_bytes(), "the HTML as rendered, byte for byte");
    assert_eq!(lines(&text), stored_text);
    assert!(!html.contains("/t/o/") && !html.contains("/t/c/"));
    let http = no_redirects();
    let r = http.get(format!("{}/t/o/{}", h.base, "x".repeat(79))).send().await.unwrap();
    assert_eq!(r.status(), 200, "the pixel still answers");
    let r = http.get(format!("{}/t/c/{}", h.base, "x".repeat(79))).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(h.count("email_events").await, 0);
    h.stop().await;
}

#[tokio::test]
async fn anonymous_tracking_counts_per_template_and_keeps_nothing_per_recipient() {
    let (sink, h, key) = setup(&[], &[("HERALD_TRACKING", "anonymous")]).await;
    let admin = h.api_key(&["admin"]).await;
    h.create_endpoint(&admin, &json!({"url": Receiver::start().await.url("/"), "event_types": ["email.opened"]})).await;
    publish_welcome(&h, &admin, true, false).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let (html, _) = received(&sink).await;
    assert!(!hrefs(&html)[0].contains("/t/c/"), "clicks were not opted into");
    let pixel = pixel_of(&html);
    h.wait_terminal(&key, &id).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let http = no_redirects();
    assert_eq!(http.get(&pixel).header("user-agent", BROWSER).send().await.unwrap().status(), 200);
    eventually(Duration::from_secs(20), "the open counted", || async {
        (h.count("email_events").await == 1).then_some(())
    })
    .await;
    let (with_delivery,): (i64,) = sqlx::query_as("SELECT count(*) FROM email_events WHERE delivery_id IS NOT NULL")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(with_delivery, 0, "nothing names the delivery");
    let n = h.get_notification(&key, &id).await;
    assert_eq!(n["deliveries"][0]["tracking"]["opens"], 0, "nothing per recipient: {n}");
    let (_, stats) = h.call(Method::GET, "/api/v1/stats", &admin, None).await;
    let row = &stats["email_tracking"][0];
    assert_eq!(
        (row["template"].as_str(), row["opens"].as_i64(), row["unique_opens"].as_i64()),
        (Some("welcome-email"), Some(1), Some(0))
    );
    assert_eq!(row["open_rate"].as_f64(), Some(1.0), "opens over delivered: {row}");
    // An event would have been written in the transaction that recorded the open.
    let (events,): (i64,) = sqlx::query_as("SELECT count(*) FROM notifications WHERE event_type LIKE 'email.%'")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(events, 0, "no per-recipient events in anonymous mode");
    // Retention covers tracking events (these name no delivery, so they go by age).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, _, _, pruned) = herald_core::retention::prune_once(&h.db, Duration::from_millis(10)).await.unwrap();
    assert_eq!((pruned, h.count("email_events").await), (1, 0));
    h.stop().await;
}

#[tokio::test]
async fn a_granted_owner_receives_tracking_events_of_its_own_notifications_only() {
    let (sink, h, _) = setup(&[], &[]).await;
    let admin = h.api_key(&["admin"]).await;
    publish_welcome(&h, &admin, true, false).await;
    let scopes = ["notifications:write", "notifications:read", "endpoints:write", "endpoints:read"];
    let (acme, globex) =
        (h.api_key_for(&scopes, Some("acme"), None).await, h.api_key_for(&scopes, Some("globex"), None).await);
    let path = "/api/v1/event-types/email.opened";
    // Herald's own event type: only who receives it can change.
    let (s, v) = h.call(Method::PATCH, path, &admin, Some(&json!({"description": "mine"}))).await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = h.call(Method::PATCH, path, &admin, Some(&json!({"visibility": "granted", "grants": ["acme"]}))).await;
    assert_eq!((s, v["visibility"].as_str()), (200, Some("granted")), "{v}");
    let rx = Receiver::start().await;
    h.create_endpoint(&acme, &json!({"url": rx.url("/acme"), "event_types": ["email.opened"]})).await;
    let (s, _) = h
        .call(
            Method::POST,
            "/api/v1/endpoints",
            &globex,
            Some(&json!({"url": rx.url("/globex"), "event_types": ["email.opened"]})),
        )
        .await;
    assert!((400..500).contains(&s), "globex was not granted it");

    let mine = h.send_welcome(&acme, "Ada", "ada@example.test").await;
    let theirs = h.send_welcome(&globex, "Bob", "bob@example.test").await;
    eventually(Duration::from_secs(20), "both emails", || async { (sink.accepted_count() == 2).then_some(()) }).await;
    h.wait_terminal(&acme, &mine).await;
    h.wait_terminal(&globex, &theirs).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let http = no_redirects();
    for mail in sink.accepted() {
        let msg = mail_parser::MessageParser::default().parse(mail.data.as_bytes()).unwrap();
        let html = msg.body_html(0).unwrap().into_owned();
        let pixel = pixel_of(&html);
        assert_eq!(http.get(&pixel).header("user-agent", BROWSER).send().await.unwrap().status(), 200);
    }
    eventually(Duration::from_secs(20), "acme's email.opened", || async { (rx.count() >= 1).then_some(()) }).await;
    eventually(Duration::from_secs(20), "both opens recorded", || async {
        (h.count("email_events").await == 2).then_some(())
    })
    .await;
    // Both opens are recorded with their events; with the outbox empty, none is on its way.
    h.wait_count("outbox", 0).await;
    let got = rx.requests();
    assert_eq!(got.len(), 1, "acme hears of its own open only");
    let event: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        (event["type"].as_str(), event["data"]["notification_id"].as_str()),
        (Some("email.opened"), Some(mine.as_str()))
    );
    h.stop().await;
}
