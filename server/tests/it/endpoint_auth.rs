//! Authenticating to endpoints: OAuth 2.0 client credentials against a real token
//! endpoint (an HTTP server answering token requests): the token is fetched with the
//! client's credentials, cached, refreshed once it expires and after a 401; a token
//! endpoint that refuses fails the attempt with a clear error and no secret in it; the
//! client secret is sealed at rest and masked in the API.

use std::time::Duration;

use base64::Engine;
use herald_testkit::receiver::{Receiver, Respond};
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::*;

const SCOPES: &[&str] = &["endpoints:read", "endpoints:write"];
const SECRET: &str = "s3cr3t/with+odd=chars";

fn token(t: &str, expires_in: u64) -> Respond {
    Respond::Body(
        200,
        json!({"access_token": t, "token_type": "Bearer", "expires_in": expires_in}).to_string().into_bytes(),
    )
}

async fn hits(rx: &Receiver, n: usize) -> Vec<herald_testkit::receiver::Request> {
    eventually(Duration::from_secs(20), &format!("{n} requests"), || async {
        let r = rx.requests();
        (r.len() >= n).then_some(r)
    })
    .await
}

fn bearer(r: &herald_testkit::receiver::Request) -> String {
    r.headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn oauth_tokens_are_fetched_cached_refreshed_and_never_shown() {
    let (_sink, h, key) = setup(&[], &[]).await;
    let owner = h.api_key_for(SCOPES, Some("acme"), None).await;
    let (idp, rx) = (Receiver::start().await, Receiver::start().await);
    // The first token lives 2 s, so the third notification needs a new one.
    idp.script(vec![token("tok-1", 2), token("tok-2", 3600), token("tok-3", 3600)]);
    let auth = json!({"type": "oauth2", "token_url": idp.url("/oauth/token"), "client_id": "herald-app",
                      "client_secret": SECRET, "scope": "hooks.write"});
    let ep = h.create_endpoint(&owner, &json!({"url": rx.url("/hook"), "event_types": ["*"], "auth": auth})).await;
    let id = ep["id"].as_str().unwrap().to_owned();

    // Masked in answers, sealed at rest.
    assert_eq!(ep["auth"]["client_secret"], "********", "{ep}");
    assert_eq!(ep["auth"]["client_id"], "herald-app");
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT auth_sealed FROM endpoints WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert!(!sealed.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    let row: Value =
        sqlx::query_scalar("SELECT auth FROM endpoints WHERE id = $1::uuid").bind(&id).fetch_one(&h.db).await.unwrap();
    assert!(!row.to_string().contains(SECRET));

    // Two notifications, one token request: the token is cached.
    h.send_welcome(&key, "Ada", "ada@example.test").await;
    h.send_welcome(&key, "Bob", "bob@example.test").await;
    let got = hits(&rx, 2).await;
    assert!(got.iter().all(|r| bearer(r) == "Bearer tok-1"), "{:?}", got.iter().map(bearer).collect::<Vec<_>>());
    assert_eq!(idp.count(), 1, "one token request for both");
    let t = &idp.requests()[0];
    assert_eq!(t.method, "POST");
    assert_eq!(t.path, "/oauth/token");
    let basic = t.headers.get("authorization").unwrap().to_str().unwrap().strip_prefix("Basic ").unwrap().to_owned();
    let creds = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(basic).unwrap()).unwrap();
    assert_eq!(creds, "herald-app:s3cr3t%2Fwith%2Bodd%3Dchars", "RFC 6749 2.3.1: form-encoded, then Basic");
    let form = String::from_utf8_lossy(&t.body);
    assert!(form.contains("grant_type=client_credentials") && form.contains("scope=hooks.write"), "{form}");

    // Expired (2 s, renewed a second early): the next attempt fetches a new one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    h.send_welcome(&key, "Cy", "cy@example.test").await;
    let got = hits(&rx, 3).await;
    assert_eq!(bearer(&got[2]), "Bearer tok-2");
    assert_eq!(idp.count(), 2);

    // A 401 from the endpoint drops the token: the retry brings a new one.
    rx.script(vec![Respond::Status(401)]);
    h.send_welcome(&key, "Di", "di@example.test").await;
    let got = hits(&rx, 5).await;
    assert_eq!((bearer(&got[3]), bearer(&got[4])), ("Bearer tok-2".to_owned(), "Bearer tok-3".to_owned()));
    assert_eq!(idp.count(), 3);

    // The token endpoint refuses the client: the attempt fails with its answer, no secret.
    idp.script(vec![Respond::Body(401, br#"{"error":"invalid_client"}"#.to_vec())]);
    let (s, v) = h
        .call(
            Method::PATCH,
            &format!("/api/v1/endpoints/{id}"),
            &owner,
            Some(&json!({"auth": {"type": "oauth2", "token_url": idp.url("/oauth/token"), "client_id": "other",
                                   "client_secret": "********"}, "retry_schedule": "1h"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["auth"]["client_id"], "other");
    let before = rx.count();
    let n = h.send_welcome(&key, "Ed", "ed@example.test").await;
    let d = eventually(Duration::from_secs(20), "the failed attempt", || async {
        let (_, list) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}/deliveries"), &owner, None).await;
        list.as_array().unwrap().iter().find(|d| d["notification_id"] == n.as_str() && d["attempt_count"] == 1).cloned()
    })
    .await;
    assert_eq!(d["status"], "retrying", "{d}");
    let e = d["last_error"].as_str().unwrap();
    assert!(e.contains("token endpoint answered HTTP 401") && e.contains("invalid_client"), "{e}");
    assert!(!e.contains(SECRET) && !e.contains("s3cr3t"), "{e}");
    assert_eq!(rx.count(), before, "nothing was sent without a token");
    // The masked secret was kept: the token request still carried it.
    let last = idp.requests().pop().unwrap();
    let basic = last.headers.get("authorization").unwrap().to_str().unwrap().strip_prefix("Basic ").unwrap().to_owned();
    let creds = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(basic).unwrap()).unwrap();
    assert_eq!(creds, "other:s3cr3t%2Fwith%2Bodd%3Dchars");

    // Bad definitions are refused and change nothing; a token URL the guard refuses too.
    for (bad, want) in [
        (json!({"type": "oauth2", "token_url": "ftp://x/", "client_id": "a", "client_secret": "b"}), 400),
        (json!({"type": "oauth2", "token_url": idp.url("/t"), "client_id": "", "client_secret": "b"}), 400),
        (json!({"type": "oauth2", "token_url": idp.url("/t"), "client_id": "a:b", "client_secret": "b"}), 400),
        (json!({"type": "basic", "user": "a"}), 400),
        (
            json!({"type": "oauth2", "token_url": "http://169.254.169.254/token", "client_id": "a", "client_secret": "b"}),
            422,
        ),
    ] {
        let (s, p) =
            h.call(Method::PATCH, &format!("/api/v1/endpoints/{id}"), &owner, Some(&json!({"auth": bad}))).await;
        assert_eq!(s, want, "{bad}: {p}");
    }
    let (_, now) = h.call(Method::GET, &format!("/api/v1/endpoints/{id}"), &owner, None).await;
    assert_eq!(now["auth"]["client_id"], "other");
    // Removed with null.
    let (s, v) = h.call(Method::PATCH, &format!("/api/v1/endpoints/{id}"), &owner, Some(&json!({"auth": null}))).await;
    assert_eq!((s, v["auth"].clone()), (200, Value::Null), "{v}");
    // No secret in the audit log.
    let admin = h.api_key(&["admin"]).await;
    let (_, audit) = h.call(Method::GET, "/api/v1/audit?action=endpoint.updated", &admin, None).await;
    assert!(audit.to_string().contains("herald-app") && !audit.to_string().contains("s3cr3t"), "{audit}");
}
