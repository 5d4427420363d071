use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn welcome_email_flow_end_to_end() {
    let (sink, h, key) = setup(&[], &[]).await;

    let r = h.post(&key, &welcome("Ada", "ada@example.test")).await;
    assert_eq!(r.status(), 202);
    let accepted: serde_json::Value = r.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["status"], "pending");
    let deliveries = accepted["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["channel"], "email");
    assert_eq!(deliveries[0]["target"], "ada@example.test");
    let delivery_id = deliveries[0]["id"].as_str().unwrap().to_owned();

    let n = h.wait_terminal(&key, &id).await;
    assert_eq!(n["status"], "succeeded");
    assert_eq!(n["event_type"], "user.registered");
    let d = &n["deliveries"][0];
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["attempt_count"], 1);
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["outcome"], "succeeded");
    assert_eq!(attempts[0]["smtp_code"], 250);
    assert!(attempts[0]["smtp_reply"].as_str().unwrap().starts_with("250"));

    let mails = sink.accepted();
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(m.rcpt_to, vec!["ada@example.test"]);
    assert!(m.mail_from.contains("herald@test.example"));
    assert!(m.header("Subject").unwrap().contains("Ada"), "subject: {:?}", m.header("Subject"));
    assert!(m.data.contains("Welcome, Ada!"), "body: {}", m.data);
    assert!(m.data.contains("text/html") && m.data.contains("text/plain"));
    assert_eq!(m.header("Message-ID").unwrap(), format!("<{delivery_id}@127.0.0.1>"));
    // The bus message was consumed.
    h.wait_count("outbox", 0).await;
    h.stop().await;
}

#[tokio::test]
async fn explicit_recipients_override_the_route() {
    let (sink, h, key) = setup(&[], &[]).await;
    let mut body = welcome("Grace", "grace@example.test");
    body["recipients"] = json!(["Ops <ops@example.test>", "audit@example.test"]);
    let r = h.post(&key, &body).await;
    assert_eq!(r.status(), 202);
    let a: serde_json::Value = r.json().await.unwrap();
    let n = h.wait_terminal(&key, a["id"].as_str().unwrap()).await;
    assert_eq!(n["status"], "succeeded");
    let mut to: Vec<String> = sink.accepted().into_iter().flat_map(|m| m.rcpt_to).collect();
    to.sort();
    assert_eq!(to, vec!["audit@example.test", "ops@example.test"]);
    h.stop().await;
}

#[tokio::test]
async fn idempotency_key_replays_and_refuses_other_bodies() {
    let (_sink, h, key) = setup(&[], &[]).await;
    let body = welcome("Ada", "ada@example.test");
    let send = |body: serde_json::Value| {
        let (h, key) = (&h, &key);
        async move { h.post_idempotent(key, "signup-42", &body).await }
    };
    let first = send(body.clone()).await;
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    let second = send(body.clone()).await;
    assert_eq!(second.status(), 202);
    let second: serde_json::Value = second.json().await.unwrap();
    assert_eq!(first, second, "same key and body → same response");
    assert_eq!(h.count("notifications").await, 1);
    assert_eq!(h.count("deliveries").await, 1);

    let other = send(welcome("Eve", "eve@example.test")).await;
    assert_eq!(other.status(), 422);
    let p: serde_json::Value = other.json().await.unwrap();
    assert_eq!(p["type"], "urn:herald:problem:idempotency-key-reused");
    assert_eq!(h.count("notifications").await, 1);

    // Concurrent repeats still make one notification.
    let futs = (0..8).map(|_| {
        let (h, key) = (&h, &key);
        async move {
            h.post_idempotent(key, "burst", &welcome("Bob", "bob@example.test"))
                .await
                .json::<serde_json::Value>()
                .await
                .unwrap()["id"]
                .clone()
        }
    });
    let ids = futures::future::join_all(futs).await;
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(h.count("notifications").await, 2);
    h.stop().await;
}

#[tokio::test]
async fn transient_smtp_failures_are_retried_then_succeed() {
    let (sink, h, key) = setup(&[Reply::Code(451), Reply::Code(451)], &[]).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    let d = &n["deliveries"][0];
    assert_eq!(d["status"], "succeeded");
    let attempts = d["attempts"].as_array().unwrap();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["transient_failure", "transient_failure", "succeeded"]);
    assert_eq!(attempts[0]["smtp_code"], 451);
    assert!(attempts[0]["smtp_reply"].as_str().unwrap().contains("451"));
    assert_eq!(sink.accepted().len(), 1);
    assert_eq!(sink.data_ends(), 3);
    // Every retry carried the same Message-ID.
    assert_eq!(sink.accepted()[0].header("Message-ID").unwrap(), format!("<{}@127.0.0.1>", d["id"].as_str().unwrap()));
    h.stop().await;
}

#[tokio::test]
async fn permanent_smtp_failure_fails_after_one_attempt() {
    let (sink, h, key) = setup(&[Reply::Code(550)], &[]).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    assert_eq!(n["status"], "failed");
    let d = &n["deliveries"][0];
    assert_eq!(d["status"], "failed");
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["outcome"], "permanent_failure");
    assert_eq!(attempts[0]["smtp_code"], 550);
    assert_eq!(sink.accepted().len(), 0);
    // Nothing is left to do: no retry was scheduled (a retry is an outbox row written
    // with the attempt's outcome; none is left, so no later attempt can come).
    h.wait_count("outbox", 0).await;
    assert_eq!(sink.data_ends(), 1);
    h.stop().await;
}

#[tokio::test]
async fn exhausted_retries_fail_the_delivery() {
    let (_sink, h, key) = setup(
        &[Reply::Code(421), Reply::Code(450), Reply::Code(451), Reply::Code(452)],
        &[("HERALD_EMAIL_RETRY_SCHEDULE", "100ms,100ms")],
    )
    .await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    let d = &n["deliveries"][0];
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempts"].as_array().unwrap().len(), 3);
    h.stop().await;
}

#[tokio::test]
async fn smtp_server_down_is_transient() {
    // Nothing listens on this port at first: connection refused.
    let port = free_port();
    let db = fresh_database().await;
    let h = Herald::start(
        &db,
        &format!("smtp://127.0.0.1:{port}"),
        &[("HERALD_EMAIL_RETRY_SCHEDULE", "300ms,300ms,300ms,300ms,300ms")],
    )
    .await;
    let key = h.api_key(&["notifications:write", "notifications:read"]).await;
    let a: serde_json::Value = h.post(&key, &welcome("Ada", "ada@example.test")).await.json().await.unwrap();
    let id = a["id"].as_str().unwrap().to_owned();
    let first = eventually(Duration::from_secs(10), "a refused attempt", || async {
        let n = h.get_notification(&key, &id).await;
        n["deliveries"][0]["attempts"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(first["outcome"], "transient_failure");
    assert!(first["error"].as_str().is_some());
    h.stop().await;
}

#[tokio::test]
async fn killed_dispatcher_loses_nothing() {
    let sink = SmtpSink::start().await;
    sink.script(&[Reply::Hang]);
    let db = fresh_database().await;
    let extra = [("HERALD_BUS_CLAIM_TIMEOUT", "2s"), ("HERALD_SMTP_TIMEOUT", "60s")];
    let mut h = Herald::start(&db, &sink.url(), &extra).await;
    let key = h.api_key(&["notifications:write", "notifications:read"]).await;
    let a: serde_json::Value = h.post(&key, &welcome("Ada", "ada@example.test")).await.json().await.unwrap();
    let id = a["id"].as_str().unwrap().to_owned();

    // The dispatcher is mid-send: it holds the bus claim and the delivery's lease.
    eventually(Duration::from_secs(10), "the SMTP transaction to hang", || async {
        (sink.data_ends() == 1).then_some(())
    })
    .await;
    let claimed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE claimed_until > now()").fetch_one(&h.db).await.unwrap();
    assert_eq!(claimed, 1);
    let status: String = sqlx::query_scalar("SELECT status FROM deliveries").fetch_one(&h.db).await.unwrap();
    assert_eq!(status, "in_flight");

    h.kill();
    h.child.wait().await.unwrap();
    sink.release_hung();

    let h = Herald::start(&db, &sink.url(), &extra).await;
    // (Failed once in CI with a timeout here; not reproduced since: a timeout now says
    // what the database held.)
    let n = h.wait_terminal_explained(&key, &id).await;
    let d = &n["deliveries"][0];
    assert_eq!(d["status"], "succeeded");
    // The killed attempt left no record; the retried one did.
    assert_eq!(d["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(sink.accepted().len(), 1);
    h.wait_count("outbox", 0).await;
    h.stop().await;
}

#[tokio::test]
async fn undecodable_bus_messages_are_dead_lettered_and_counted() {
    let (sink, h, key) = setup(&[], &[]).await;
    sqlx::query("INSERT INTO outbox (topic, key, payload) VALUES ('email', 'x', '{\"nonsense\": true}')")
        .execute(&h.db)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the dead letter", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&h.db).await.unwrap();
        (n == 1).then_some(())
    })
    .await;
    let reason: String = sqlx::query_scalar("SELECT reason FROM dead_letters").fetch_one(&h.db).await.unwrap();
    assert!(reason.contains("undecodable"), "{reason}");
    h.wait_count("outbox", 0).await;
    let metrics = h.http.get(format!("{}/metrics", h.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("herald_bus_dead_lettered_total{topic=\"email\"} 1"), "{metrics}");
    // The pipeline keeps working.
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    assert_eq!(h.wait_terminal(&key, &id).await["status"], "succeeded");
    assert_eq!(sink.accepted_count(), 1);
    h.stop().await;
}

#[tokio::test]
async fn sweeper_recovers_a_delivery_whose_bus_message_vanished() {
    let (sink, h, key) = setup(&[], &[("HERALD_SWEEP_AFTER", "1s")]).await;
    // Simulate a bus that lost the message: a pending delivery with no outbox row.
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    h.wait_terminal(&key, &id).await;
    sqlx::query("UPDATE deliveries SET status = 'pending', attempts = 0, created_at = now() - interval '1 minute'")
        .execute(&h.db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM attempts").execute(&h.db).await.unwrap();
    let n = h.wait_terminal(&key, &id).await;
    assert_eq!(n["deliveries"][0]["status"], "succeeded");
    assert_eq!(sink.accepted_count(), 2);
    h.stop().await;
}
