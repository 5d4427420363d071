//! `GET /api/v1/notifications`: the history, filtered and keyset-paginated, an owner's
//! own notifications only (an admin's: everyone's); bad filters are 400s.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::Value;

use crate::harness::*;
use herald_testkit::smtp::Reply;

async fn page(h: &Herald, key: &str, query: &str) -> (Vec<String>, Option<String>, Value) {
    let (s, v) = h.call(Method::GET, &format!("/api/v1/notifications?{query}"), key, None).await;
    assert_eq!(s, 200, "{query}: {v}");
    let ids = v["data"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect();
    (ids, v["next_before"].as_str().map(str::to_owned), v)
}

#[tokio::test]
async fn the_history_filters_and_pages_an_owners_notifications() {
    // The first email is refused for good: one notification with a failed delivery.
    let (_sink, h, _) = setup(&[Reply::Code(550)], &[]).await;
    let acme = h.api_key_for(&["notifications:write", "notifications:read"], Some("acme"), None).await;
    let globex = h.api_key_for(&["notifications:write", "notifications:read"], Some("globex"), None).await;
    let admin = h.api_key(&["admin"]).await;

    let mut mine = Vec::new();
    for i in 0..5 {
        let id = h.send_welcome(&acme, "Ada", &format!("ada{i}@example.test")).await;
        h.wait_terminal(&acme, &id).await;
        mine.push(id);
    }
    let mut theirs = Vec::new();
    for i in 0..2 {
        let id = h.send_welcome(&globex, "Bob", &format!("bob{i}@example.test")).await;
        h.wait_terminal(&globex, &id).await;
        theirs.push(id);
    }
    let newest_first: Vec<String> = mine.iter().rev().cloned().collect();

    // Everything of the owner's, newest first, and nothing of anyone else's.
    let (ids, next, v) = page(&h, &acme, "").await;
    assert_eq!(ids, newest_first);
    assert_eq!(next, None);
    let first = &v["data"][0];
    assert_eq!(first["event_type"], "user.registered");
    assert_eq!(first["recipients"][0], "ada4@example.test");
    assert_eq!(first["deliveries"], 1);
    let (ids, ..) = page(&h, &globex, "").await;
    assert_eq!(ids, theirs.iter().rev().cloned().collect::<Vec<_>>());
    let (ids, ..) = page(&h, &admin, "limit=200").await;
    assert_eq!(ids.len(), 7);

    // Pages of two: every notification once, in order, then no cursor.
    let (mut all, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let q = match &cursor {
            Some(c) => format!("limit=2&before={c}"),
            None => "limit=2".into(),
        };
        let (ids, next, _) = page(&h, &acme, &q).await;
        assert!(ids.len() <= 2);
        all.extend(ids);
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(all, newest_first);
    // Another owner's id as a cursor reveals nothing of theirs.
    let (ids, ..) = page(&h, &globex, &format!("before={}", mine[4])).await;
    assert!(ids.iter().all(|i| theirs.contains(i)), "{ids:?}");

    // By recipient, event type, status, channel and time.
    let (ids, ..) = page(&h, &acme, "recipient=ada2%40example.test").await;
    assert_eq!(ids, vec![mine[2].clone()]);
    let (ids, ..) = page(&h, &globex, "recipient=ada2%40example.test").await;
    assert!(ids.is_empty(), "another owner's recipient: {ids:?}");
    let (ids, ..) = page(&h, &acme, "event_type=user.registered").await;
    assert_eq!(ids.len(), 5);
    let (ids, ..) = page(&h, &acme, "event_type=invoice.paid").await;
    assert!(ids.is_empty());
    let (ids, ..) = page(&h, &acme, "channel=webhook").await;
    assert!(ids.is_empty());
    let (ids, ..) = page(&h, &acme, "channel=email").await;
    assert_eq!(ids.len(), 5);
    let failed: HashSet<String> = {
        let (ids, _, v) = page(&h, &admin, "status=failed").await;
        assert!(v["data"].as_array().unwrap().iter().all(|n| n["status"] == "failed" && n["failed"] == 1), "{v}");
        ids.into_iter().collect()
    };
    assert_eq!(failed.len(), 1, "the one refused email");
    let (ok, ..) = page(&h, &admin, "status=succeeded&limit=200").await;
    assert_eq!(ok.len(), 6);
    assert!(ok.iter().all(|i| !failed.contains(i)));
    let (ids, ..) = page(&h, &acme, "since=2020-01-01T00:00:00Z&until=2999-01-01T00:00:00Z").await;
    assert_eq!(ids.len(), 5);
    let (ids, ..) = page(&h, &acme, "since=2999-01-01T00:00:00Z").await;
    assert!(ids.is_empty());
    let (ids, ..) = page(&h, &acme, "until=2020-01-01T00:00:00%2B02:00").await;
    assert!(ids.is_empty());
    let created: String = sqlx::query_scalar(
        "SELECT to_char(created_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') FROM notifications WHERE id = $1::uuid",
    )
    .bind(&mine[2])
    .fetch_one(&h.db)
    .await
    .unwrap();
    let (ids, ..) = page(&h, &acme, &format!("until={created}")).await;
    assert!(ids.iter().all(|i| *i == mine[0] || *i == mine[1] || *i == mine[2]), "{ids:?}");
    assert!(ids.contains(&mine[0]) && ids.contains(&mine[1]));
    // The first email was the refused one.
    assert_eq!(failed, HashSet::from([mine[0].clone()]));
    let (ids, ..) = page(&h, &acme, "status=succeeded&recipient=ada3%40example.test&event_type=user.registered").await;
    assert_eq!(ids, vec![mine[3].clone()]);
    let (ids, ..) = page(&h, &acme, "status=failed&recipient=ada3%40example.test").await;
    assert!(ids.is_empty());

    // A notification's page carries the rendered email.
    let n = h.get_notification(&acme, &mine[0]).await;
    let email = &n["deliveries"][0]["email"];
    assert_eq!(email["template"], "welcome-email", "{n}");
    assert!(email["subject"].as_str().unwrap().contains("Ada"), "{n}");
    assert!(email["html"].as_str().unwrap().contains("Ada"), "{n}");

    // Bad filters: a 400 problem that names what is wrong, never a 500.
    for (q, names) in [
        ("status=bogus", "status"),
        ("channel=pigeon", "channel"),
        ("since=yesterday", "since"),
        ("until=99999-01-01T00:00:00Z", "until"),
        ("before=not-an-id", "before"),
        ("endpoint=1", "endpoint"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("colour=red", "colour"),
        ("recipient=a%00b", "NUL"),
        ("event_type=%00", "NUL"),
    ] {
        let (s, v) = h.call(Method::GET, &format!("/api/v1/notifications?{q}"), &acme, None).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert!(v["detail"].as_str().unwrap_or_default().contains(names), "{q}: {v}");
    }
    // The dashboard's figures (admins).
    for window in ["1h", "24h", "7d"] {
        let (s, d) = h.call(Method::GET, &format!("/api/v1/stats?window={window}"), &admin, None).await;
        assert_eq!(s, 200, "{d}");
        assert_eq!(d["accepted"], 7, "{d}");
        let count = |status: &str| {
            d["outcomes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o["channel"] == "email" && o["status"] == status)
                .map(|o| o["count"].as_i64().unwrap())
                .sum::<i64>()
        };
        assert_eq!((count("succeeded"), count("failed")), (6, 1), "{d}");
        assert!((d["success_rate"].as_f64().unwrap() - 6.0 / 7.0).abs() < 1e-9, "{d}");
        assert_eq!(d["attempts"], 7, "{d}");
        assert!(d["attempt_p99_ms"].as_f64().unwrap() >= d["attempt_p50_ms"].as_f64().unwrap());
        let buckets = d["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 12);
        assert_eq!(buckets.iter().map(|b| b["accepted"].as_i64().unwrap()).sum::<i64>(), 7, "{d}");
        assert_eq!(d["backlog"], 0, "{d}");
    }
    assert_eq!(h.call(Method::GET, "/api/v1/stats?window=1y", &admin, None).await.0, 400);
    assert_eq!(h.call(Method::GET, "/api/v1/stats", &acme, None).await.0, 403);

    // Reading needs notifications:read.
    let writer = h.api_key(&["notifications:write"]).await;
    let (s, _) = h.call(Method::GET, "/api/v1/notifications", &writer, None).await;
    assert_eq!(s, 403);
    let (s, _) = h.call(Method::GET, "/api/v1/notifications", "nope", None).await;
    assert_eq!(s, 401);
}
