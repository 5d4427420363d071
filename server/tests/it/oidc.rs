//! Login with a real OpenID Connect provider (tools/oidc/provider.mjs), server-side
//! sessions, CSRF, and the provider's access tokens on the API.

use herald_testkit::oidc::Provider;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;

pub(crate) const AUDIENCE: &str = "urn:herald:api";

pub(crate) struct Idp {
    pub(crate) h: Herald,
    pub(crate) idp: Provider,
    pub(crate) _sink: SmtpSink,
}

/// Herald with login configured against a fresh provider (team claim on; access tokens
/// for `token_audience` accepted when Herald expects `AUDIENCE`).
pub(crate) async fn start(provider_audience: &str) -> Idp {
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let idp = Provider::start(&public, provider_audience).await;
    let sink = SmtpSink::start().await;
    let db = fresh_database().await;
    let listen = format!("127.0.0.1:{port}");
    let settings = [
        ("HERALD_LISTEN_ADDR", listen.as_str()),
        ("HERALD_OIDC_ISSUER", idp.issuer.as_str()),
        ("HERALD_OIDC_CLIENT_ID", "herald"),
        ("HERALD_OIDC_CLIENT_SECRET", "herald-dev-secret"),
        ("HERALD_OIDC_SCOPES", "openid email profile groups"),
        ("HERALD_OIDC_TEAM_CLAIM", "team"),
        ("HERALD_OIDC_AUDIENCE", AUDIENCE),
    ];
    let h = Herald::start(&db, &sink.url(), &settings).await;
    Idp { h, idp, _sink: sink }
}

pub(crate) fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

pub(crate) fn location(r: &reqwest::Response) -> String {
    let l = r.headers().get("location").unwrap_or_else(|| panic!("no Location on {} {}", r.status(), r.url()));
    let l = l.to_str().unwrap();
    r.url().join(l).unwrap().to_string()
}

fn session_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("herald_session="))
        .map(|c| c.split(';').next().unwrap().trim_start_matches("herald_session=").to_owned())
}

/// Logs `user` in through the provider's real login form. Returns the browser, the
/// session cookie before and after login, and the callback URL the provider sent.
pub(crate) async fn log_in(b: &reqwest::Client, base: &str, user: &str) -> (Option<String>, String, String) {
    log_in_then(b, base, user, "/", "/").await
}

/// The same, asking to go to `next` afterwards and expecting to land on `lands`.
async fn log_in_then(
    b: &reqwest::Client,
    base: &str,
    user: &str,
    next: &str,
    lands: &str,
) -> (Option<String>, String, String) {
    let next = url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>();
    let r = b.get(format!("{base}/auth/login?next={next}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let before = session_cookie(&r);
    let r = b.get(location(&r)).send().await.unwrap();
    let interaction = location(&r);
    assert!(interaction.contains("/interaction/"), "{interaction}");
    let page = b.get(&interaction).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("name=\"login\""), "the provider's login form: {page}");
    let r =
        b.post(&interaction).form(&[("prompt", "login"), ("login", user), ("password", "any")]).send().await.unwrap();
    let mut next = location(&r);
    // The provider resumes the authorization, then sends the browser back to Herald.
    while !next.starts_with(base) {
        let r = b.get(&next).send().await.unwrap();
        next = location(&r);
    }
    assert!(next.starts_with(&format!("{base}/auth/callback?")), "{next}");
    let r = b.get(&next).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{}", r.text().await.unwrap_or_default());
    assert_eq!(location(&r), format!("{base}{lands}"));
    let after = session_cookie(&r).expect("a session cookie at login");
    (before, after, next)
}

pub(crate) async fn me(b: &reqwest::Client, base: &str) -> (StatusCode, Value) {
    let r = b.get(format!("{base}/auth/me")).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn audit(h: &Herald, action: &str) -> Vec<Value> {
    let admin = h.api_key(&["admin"]).await;
    let (_, v) = h.call(Method::GET, &format!("/api/v1/audit?action={action}"), &admin, None).await;
    v["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn an_admin_and_an_owner_log_in_and_out() {
    let Idp { h, idp, .. } = start(AUDIENCE).await;
    let base = h.base.clone();

    // The console sends a stranger to the provider, and back to the page asked for.
    let b = browser();
    let r = b.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), format!("{base}/auth/login?next=%2F"));
    assert_eq!(me(&b, &base).await.0, StatusCode::UNAUTHORIZED);

    let (before, after, _) = log_in(&b, &base, "admin").await;
    assert_ne!(before.as_deref(), Some(after.as_str()), "the session id changes at login");
    let (status, v) = me(&b, &base).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["name"], "Ada Admin");
    assert_eq!(v["email"], "admin@herald.test");
    assert_eq!(v["role"], "admin");
    let r = b.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the console opens once logged in");

    let owner = browser();
    log_in(&owner, &base, "alice").await;
    let (_, v) = me(&owner, &base).await;
    assert_eq!(v["role"], "owner");
    assert_eq!(v["owner"], "team:acme", "the team claim names the owner");
    let email: String =
        sqlx::query_scalar("SELECT email FROM owners WHERE subject = 'team:acme'").fetch_one(&h.db).await.unwrap();
    assert_eq!(email, "alice@acme.test", "Herald writes to the owner at the provider's address");
    let roles: Vec<String> =
        sqlx::query_scalar("SELECT roles[1] FROM users ORDER BY subject").fetch_all(&h.db).await.unwrap();
    assert_eq!(roles, ["admin", "owner"]);

    // Logout: a same-origin POST ends the session on the server, then the provider's.
    let r = b.post(format!("{base}/auth/logout")).header("origin", &base).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(location(&r).starts_with(&format!("{}/session/end?", idp.issuer)), "{}", location(&r));
    assert_eq!(me(&b, &base).await.0, StatusCode::UNAUTHORIZED);
    // Replaying the old cookie does not bring the session back.
    let replay = reqwest::Client::new()
        .get(format!("{base}/auth/me"))
        .header("cookie", format!("herald_session={after}"))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(me(&owner, &base).await.0, 200, "another user's session is untouched");

    let logins = audit(&h, "user.login").await;
    assert_eq!(logins.len(), 2, "each login recorded once");
    assert!(logins.iter().all(|e| e["actor_kind"] == "user" && e["source"] == "127.0.0.1"));
    let logouts = audit(&h, "user.logout").await;
    assert_eq!(logouts.len(), 1);
    assert_eq!(logouts[0]["actor"], "admin");
    h.stop().await;
    idp.stop().await;
}

#[tokio::test]
async fn tampered_and_replayed_logins_are_refused() {
    let Idp { h, idp, .. } = start(AUDIENCE).await;
    let base = h.base.clone();
    let b = browser();
    let (_, _, callback) = log_in(&b, &base, "bob").await;
    // The same callback again: the login it belonged to is over.
    let r = b.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("no login is in progress"));

    // A state that is not the one Herald issued.
    let fresh = browser();
    let r = fresh.get(format!("{base}/auth/login")).send().await.unwrap();
    let auth_url = location(&r);
    let state: String = url::Url::parse(&auth_url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let forged = format!("{base}/auth/callback?code=abc&state={}x", state);
    let r = fresh.get(&forged).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("state does not match"));
    assert_eq!(me(&fresh, &base).await.0, StatusCode::UNAUTHORIZED);

    // Only a login Herald started is on record: the forged state above is, the
    // replayed callback is not, and neither are anonymous callbacks, however many
    // (each used to write a permanent entry holding the attacker's text).
    let big = "x".repeat(4000);
    for i in 0..300 {
        let url = format!("{base}/auth/callback?error=access_denied&error_description={big}{i}");
        let r = browser().get(url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(audit(&h, "user.login_failed").await.len(), 1, "anonymous callbacks write nothing");
    assert!(metric(&h, "herald_login_failures_unrecorded_total").await >= 300.0);
    // A login Herald started records the provider's refusal, bounded and without control
    // characters; repeated failures from one source stop being recorded after ten a minute.
    for i in 0..15 {
        let b = browser();
        let r = b.get(format!("{base}/auth/login")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let url = format!("{base}/auth/callback?error=denied%0A{i}&error_description={big}%0D%0Aforged-line");
        let r = b.get(url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
    let failed = audit(&h, "user.login_failed").await;
    assert_eq!(failed.len(), 10, "ten a minute from one source");
    for e in &failed {
        let reason = e["after"]["reason"].as_str().unwrap();
        assert!(reason.chars().count() < 700 && !reason.contains('\n') && !reason.contains('\r'), "{reason}");
    }

    // An anonymous GET /auth/login stores nothing on the server (the login in progress
    // travels in a sealed cookie).
    let sessions = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tower_sessions.session").fetch_one(&h.db).await.unwrap()
    };
    let before = sessions().await;
    for _ in 0..50 {
        assert_eq!(browser().get(format!("{base}/auth/login")).send().await.unwrap().status(), StatusCode::SEE_OTHER);
    }
    assert_eq!(sessions().await, before);

    // An open redirect is not possible through `next`: after login the browser lands on
    // Herald's home, not on another site; a path on Herald is honoured. A tab or a
    // newline (which browsers drop, making `/\t/evil` into `//evil`) is refused, and a
    // CR LF answers no 500.
    let r = browser().get(format!("{base}/auth/login?next=//evil.test/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    log_in_then(&browser(), &base, "bob", "//evil.test/", "/").await;
    log_in_then(&browser(), &base, "bob", "https://evil.test/", "/").await;
    log_in_then(&browser(), &base, "bob", "/\t/evil.example", "/").await;
    log_in_then(&browser(), &base, "bob", "/\\evil.example", "/").await;
    log_in_then(&browser(), &base, "bob", "/ok\r\nSet-Cookie: x=1", "/").await;
    log_in_then(&browser(), &base, "bob", "/no/such/page?x=1", "/no/such/page?x=1").await;
    h.stop().await;
    idp.stop().await;
}

#[tokio::test]
async fn cross_site_posts_are_refused() {
    let Idp { h, idp, .. } = start(AUDIENCE).await;
    let base = h.base.clone();
    let b = browser();
    log_in(&b, &base, "admin").await;
    for (name, value) in [("sec-fetch-site", "cross-site"), ("origin", "http://evil.test"), ("x-none", "1")] {
        let r = b.post(format!("{base}/auth/logout")).header(name, value).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{name}: {value}");
    }
    assert_eq!(me(&b, &base).await.0, 200, "still logged in");
    let r = b.post(format!("{base}/auth/logout")).header("sec-fetch-site", "same-origin").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(me(&b, &base).await.0, StatusCode::UNAUTHORIZED);
    h.stop().await;
    idp.stop().await;
}

fn b64(v: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn provider_access_tokens_on_the_api() {
    let Idp { h, idp, .. } = start(AUDIENCE).await;
    let token = idp.client_token("notifications:write notifications:read").await;
    let r = h.post(&token, &welcome("Ada", "ada@example.test")).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let id: Value = h.post(&token, &welcome("Bob", "bob@example.test")).await.json().await.unwrap();
    let n = h.get_notification(&token, id["id"].as_str().unwrap()).await;
    assert_eq!(n["event_type"], "user.registered");
    // The client is the owner: an API key of another owner cannot see it.
    let other = h.api_key(&["notifications:read"]).await;
    let (status, _) =
        h.call(Method::GET, &format!("/api/v1/notifications/{}", id["id"].as_str().unwrap()), &other, None).await;
    assert_eq!(status, 404);
    // Scopes come from the token: no endpoints, no audit log.
    let (status, _) = h.call(Method::GET, "/api/v1/endpoints", &token, None).await;
    assert_eq!(status, 403);
    let (status, _) = h.call(Method::GET, "/api/v1/audit", &token, None).await;
    assert_eq!(status, 403);

    // Forged tokens: unsigned, HMAC-signed with the provider's public key material, a
    // key the provider does not have, a tampered payload.
    let parts: Vec<&str> = token.split('.').collect();
    let claims: Value = {
        use base64::Engine as _;
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
    };
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), parts[1]);
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("keystore-CHANGE-ME".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"keystore-CHANGE-ME"),
    )
    .unwrap();
    let mut admin_claims = claims.clone();
    admin_claims["scope"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(&admin_claims), parts[2]);
    let unknown_kid = format!("{}.{}.{}", b64(&json!({"alg": "RS256", "kid": "not-a-key"})), parts[1], parts[2]);
    for (what, t) in [("alg none", none), ("HS256", hs), ("tampered", tampered), ("unknown key", unknown_kid)] {
        let (status, v) = h.call(Method::GET, "/api/v1/audit", &t, None).await;
        assert_eq!(status, 401, "{what}: {v}");
        assert_eq!(v["type"], "urn:herald:problem:unauthorized");
    }
    h.stop().await;
    idp.stop().await;
}

#[tokio::test]
async fn tokens_for_another_audience_or_issuer_are_refused() {
    // The provider issues tokens for another API; Herald expects its own audience.
    let Idp { h, idp, .. } = start("urn:another:api").await;
    let token = idp.client_token("notifications:write").await;
    let r = h.post(&token, &welcome("Ada", "ada@example.test")).await;
    assert_eq!(r.status(), 401);
    // A second provider signs with the same development key but is another issuer.
    let stranger = Provider::start(&h.base, AUDIENCE).await;
    let token = stranger.client_token("notifications:write").await;
    let r = h.post(&token, &welcome("Ada", "ada@example.test")).await;
    assert_eq!(r.status(), 401);
    h.stop().await;
    idp.stop().await;
    stranger.stop().await;
}

#[tokio::test]
async fn an_unreachable_issuer_stops_startup_with_its_name() {
    let sink = SmtpSink::start().await;
    let db = fresh_database().await;
    let issuer = format!("http://127.0.0.1:{}", free_port());
    let mut env = base_env(&db, &sink.url());
    env.push(("HERALD_OIDC_ISSUER".into(), issuer.clone()));
    env.push(("HERALD_OIDC_CLIENT_ID".into(), "herald".into()));
    env.push(("HERALD_LISTEN_ADDR".into(), format!("127.0.0.1:{}", free_port())));
    let out = tokio::process::Command::new(BIN.as_str()).arg("serve").env_clear().envs(env).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("OpenID Connect discovery at {issuer} failed")), "{err}");
}

#[tokio::test]
async fn an_expired_access_token_is_refused() {
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let idp = Provider::start_with_ttl(&public, AUDIENCE, 1).await;
    let sink = SmtpSink::start().await;
    let db = fresh_database().await;
    let listen = format!("127.0.0.1:{port}");
    let settings = [
        ("HERALD_LISTEN_ADDR", listen.as_str()),
        ("HERALD_OIDC_ISSUER", idp.issuer.as_str()),
        ("HERALD_OIDC_CLIENT_ID", "herald"),
        ("HERALD_OIDC_AUDIENCE", AUDIENCE),
        ("HERALD_OIDC_CLOCK_SKEW", "1s"),
    ];
    let h = Herald::start(&db, &sink.url(), &settings).await;
    let token = idp.client_token("notifications:read").await;
    let (status, _) =
        h.call(Method::GET, "/api/v1/notifications/01a22744-19b7-7256-bd86-9cd8bd231748", &token, None).await;
    assert_eq!(status, 404, "accepted while fresh");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (status, v) =
        h.call(Method::GET, "/api/v1/notifications/01a22744-19b7-7256-bd86-9cd8bd231748", &token, None).await;
    assert_eq!(status, 401, "refused once expired: {v}");
    h.stop().await;
    idp.stop().await;
}

/// A provider that forges what it is told to, for the refusals a real provider cannot
/// be made to produce: ID tokens with the wrong nonce, issuer, audience or expiry, or
/// signed with a key it does not publish. (The real provider above covers the good
/// path; this one proves Herald's checks on the bad ones.)
mod forging {
    use std::sync::{Arc, Mutex};

    use axum::extract::{Query, State};
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::{json, Value};

    #[derive(Clone, Copy, Debug, PartialEq)]
    pub enum Forgery {
        None,
        WrongNonce,
        OtherIssuer,
        OtherAudience,
        Expired,
        UnknownKey,
        /// The provider rotated its keys: it publishes and signs with a new one.
        Rotated,
        /// An honest token whose email the provider vouches for (`email_verified`).
        VerifiedEmail,
    }

    struct Inner {
        base: String,
        forgery: Mutex<Forgery>,
        nonce: Mutex<String>,
        pem: Vec<u8>,
        other_pem: Vec<u8>,
        n: String,
        other_n: String,
    }

    #[derive(Clone)]
    pub struct Forger(Arc<Inner>);

    fn rsa_key() -> (Vec<u8>, String) {
        let pem = std::process::Command::new("openssl").args(["genrsa", "2048"]).output().expect("openssl").stdout;
        let path = std::env::temp_dir().join(format!("herald-forge-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&path, &pem).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(&path)
            .output()
            .unwrap()
            .stdout;
        // PKCS#1 DER, which jsonwebtoken takes without its PEM feature.
        let der = std::process::Command::new("openssl")
            .args(["rsa", "-outform", "DER", "-traditional", "-in"])
            .arg(&path)
            .output()
            .unwrap()
            .stdout;
        let _ = std::fs::remove_file(&path);
        let hex = String::from_utf8(out).unwrap().trim().trim_start_matches("Modulus=").to_owned();
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        use base64::Engine as _;
        let _ = pem;
        (der, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    impl Forger {
        pub async fn start() -> Forger {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let (pem, n) = rsa_key();
            let (other_pem, other_n) = rsa_key();
            let f = Forger(Arc::new(Inner {
                base,
                forgery: Mutex::new(Forgery::None),
                nonce: Mutex::new(String::new()),
                pem,
                other_pem,
                n,
                other_n,
            }));
            let app = Router::new()
                .route("/.well-known/openid-configuration", get(discovery))
                .route("/jwks", get(jwks))
                .route("/authorize", get(authorize))
                .route("/token", post(token))
                .with_state(f.clone());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            f
        }

        pub fn issuer(&self) -> String {
            self.0.base.clone()
        }

        pub fn forge(&self, what: Forgery) {
            *self.0.forgery.lock().unwrap() = what;
        }
    }

    async fn discovery(State(f): State<Forger>) -> Json<Value> {
        let b = &f.0.base;
        Json(json!({
            "issuer": b,
            "authorization_endpoint": format!("{b}/authorize"),
            "token_endpoint": format!("{b}/token"),
            "jwks_uri": format!("{b}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }))
    }

    async fn jwks(State(f): State<Forger>) -> Json<Value> {
        let (kid, n) = match *f.0.forgery.lock().unwrap() {
            Forgery::Rotated => ("k2", &f.0.other_n),
            _ => ("k1", &f.0.n),
        };
        Json(json!({"keys": [{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"}]}))
    }

    async fn authorize(
        State(f): State<Forger>,
        Query(q): Query<std::collections::HashMap<String, String>>,
    ) -> impl IntoResponse {
        *f.0.nonce.lock().unwrap() = q.get("nonce").cloned().unwrap_or_default();
        let url = format!("{}?code=forged-code&state={}", q["redirect_uri"], q["state"]);
        Redirect::to(&url)
    }

    async fn token(State(f): State<Forger>) -> Json<Value> {
        let forgery = *f.0.forgery.lock().unwrap();
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": f.0.base,
            "sub": "mallory",
            "aud": "herald",
            "iat": now,
            "exp": now + 300,
            "nonce": *f.0.nonce.lock().unwrap(),
            "email": "mallory@example.test",
            "groups": ["herald-admins"],
        });
        match forgery {
            Forgery::WrongNonce => claims["nonce"] = json!("not-the-nonce"),
            Forgery::OtherIssuer => claims["iss"] = json!("http://another-issuer.test"),
            Forgery::OtherAudience => claims["aud"] = json!("another-client"),
            Forgery::Expired => {
                claims["iat"] = json!(now - 7200);
                claims["exp"] = json!(now - 3600);
            }
            Forgery::VerifiedEmail => claims["email_verified"] = json!(true),
            Forgery::None | Forgery::UnknownKey | Forgery::Rotated => {}
        }
        let pem = if matches!(forgery, Forgery::UnknownKey | Forgery::Rotated) { &f.0.other_pem } else { &f.0.pem };
        let header = jsonwebtoken::Header {
            kid: Some(if forgery == Forgery::Rotated { "k2" } else { "k1" }.into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256)
        };
        let id_token = jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_der(pem)).unwrap();
        Json(json!({"access_token": "forged-access", "token_type": "Bearer", "expires_in": 300, "id_token": id_token}))
    }
}

/// Herald logging in at a forging provider, with `extra` settings.
async fn forged(extra: &[(&str, &str)]) -> (forging::Forger, Herald, SmtpSink) {
    let forger = forging::Forger::start().await;
    let sink = SmtpSink::start().await;
    let db = fresh_database().await;
    let issuer = forger.issuer();
    let mut settings = vec![
        ("HERALD_OIDC_ISSUER", issuer.as_str()),
        ("HERALD_OIDC_CLIENT_ID", "herald"),
        ("HERALD_OIDC_CLIENT_SECRET", "s"),
    ];
    settings.extend_from_slice(extra);
    let h = Herald::start(&db, &sink.url(), &settings).await;
    (forger, h, sink)
}

#[tokio::test]
async fn forged_id_tokens_are_refused_at_login() {
    use forging::Forgery;
    let (forger, h, _sink) = forged(&[]).await;
    let base = h.base.clone();
    let attempt = |what: Forgery| {
        let (forger, base) = (forger.clone(), base.clone());
        async move {
            forger.forge(what);
            let b = browser();
            let r = b.get(format!("{base}/auth/login")).send().await.unwrap();
            let r = b.get(location(&r)).send().await.unwrap();
            let callback = location(&r);
            assert!(callback.starts_with(&format!("{base}/auth/callback?")), "{callback}");
            let r = b.get(&callback).send().await.unwrap();
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            (status, text, me(&b, &base).await.0)
        }
    };
    // The forger works: an honest token logs in (so the refusals below are Herald's).
    let (status, text, me_status) = attempt(Forgery::None).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{text}");
    assert_eq!(me_status, 200);
    for what in
        [Forgery::WrongNonce, Forgery::OtherIssuer, Forgery::OtherAudience, Forgery::Expired, Forgery::UnknownKey]
    {
        let (status, text, me_status) = attempt(what).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what:?}: {text}");
        assert!(text.contains("the ID token was not accepted"), "{what:?}: {text}");
        assert_eq!(me_status, StatusCode::UNAUTHORIZED, "{what:?}");
    }
    assert_eq!(audit(&h, "user.login_failed").await.len(), 5);

    // The provider rotates its keys: Herald fetches them again (at most every 10 s) and
    // the login goes through.
    tokio::time::sleep(herald_core::identity::oidc::REFRESH_EVERY).await;
    let (status, text, me_status) = attempt(Forgery::Rotated).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{text}");
    assert_eq!(me_status, 200);
    h.stop().await;
}

#[tokio::test]
async fn a_portal_link_opens_the_portal_for_its_owner_until_revoked_or_expired() {
    let Idp { h, idp: _idp, .. } = start(AUDIENCE).await;
    let admin = h.api_key(&["admin"]).await;
    let acme = h.api_key_for(&["endpoints:write", "endpoints:read"], Some("acme"), None).await;
    let globex = h.api_key_for(&["endpoints:write", "endpoints:read"], Some("globex"), None).await;
    let receiver = herald_testkit::receiver::Receiver::start().await;
    let (acme_url, globex_url) = (receiver.url("/acme-hook"), receiver.url("/globex-hook"));
    h.create_endpoint(&acme, &json!({"url": acme_url})).await;
    h.create_endpoint(&globex, &json!({"url": globex_url})).await;

    // Only admins make links; bad input is refused.
    let (s, _) = h.call(Method::POST, "/api/v1/portal-links", &acme, Some(&json!({"owner": "acme"}))).await;
    assert_eq!(s, 403);
    for bad in [json!({"owner": ""}), json!({"owner": "acme", "ttl": "8d"}), json!({"owner": "acme", "ttl": "soon"})] {
        let (s, v) = h.call(Method::POST, "/api/v1/portal-links", &admin, Some(&bad)).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let (s, link) =
        h.call(Method::POST, "/api/v1/portal-links", &admin, Some(&json!({"owner": "acme", "ttl": "1h"}))).await;
    assert_eq!(s, 201, "{link}");
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("{}/auth/portal?token=hpl_", h.base)), "{url}");

    // Opening it: a session as the owner, the owner's portal and nothing of another's.
    let b = browser();
    let r = b.get(&url).send().await.unwrap();
    assert_eq!((r.status().is_redirection(), location(&r)), (true, format!("{}/endpoints", h.base)));
    let (s, who) = me(&b, &h.base).await;
    assert_eq!((s, who["owner"].as_str(), who["role"].as_str()), (StatusCode::OK, Some("team:acme"), Some("owner")));
    let page = b.get(format!("{}/endpoints", h.base)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&acme_url) && !page.contains(&globex_url), "the portal shows acme's endpoint only");
    let audit_page = b.get(format!("{}/audit", h.base)).send().await.unwrap().text().await.unwrap();
    assert!(!audit_page.contains("portal_link.created"), "no admin page through a link");
    // A forged or altered token opens nothing.
    // (Its last character changed: to '0', or to '1' when it was a '0'.)
    let forged = format!("{}0", &url[..url.len() - 1]);
    let forged = if forged == url { format!("{}1", &url[..url.len() - 1]) } else { forged };
    let r = browser().get(&forged).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // Revoked: the link stops working and the session opened with it ends.
    let id = link["id"].as_str().unwrap();
    let (s, _) = h.call(Method::DELETE, &format!("/api/v1/portal-links/{id}"), &admin, None).await;
    assert_eq!(s, 204);
    let r = b.get(format!("{}/endpoints", h.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(!r.text().await.unwrap().contains(&acme_url));
    assert_eq!(browser().get(&url).send().await.unwrap().status(), 404);

    // Expired: a link of one second no longer opens anything.
    let (_, short) =
        h.call(Method::POST, "/api/v1/portal-links", &admin, Some(&json!({"owner": "acme", "ttl": "1s"}))).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(browser().get(short["url"].as_str().unwrap()).send().await.unwrap().status(), 404);

    // An API client with portal_links:write, limited to acme, makes links for acme only.
    let (ok, out, err) = run_cli(
        &h.env,
        &[
            "api-key",
            "create",
            "--name",
            "saas",
            "--scope",
            "portal_links:write",
            "--owner",
            "saas",
            "--address-owner",
            "acme",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let saas = out.lines().last().unwrap().trim().to_owned();
    let (s, made) = h.call(Method::POST, "/api/v1/portal-links", &saas, Some(&json!({"owner": "acme"}))).await;
    assert_eq!(s, 201, "{made}");
    let (s, _) = h.call(Method::POST, "/api/v1/portal-links", &saas, Some(&json!({"owner": "globex"}))).await;
    assert_eq!(s, 403, "not for an owner it may not address");
    let (_, theirs) = h.call(Method::GET, "/api/v1/portal-links", &saas, None).await;
    assert!(theirs["data"].as_array().unwrap().iter().all(|l| l["owner"] == "team:acme"));
    let (s, _) =
        h.call(Method::DELETE, &format!("/api/v1/portal-links/{}", made["id"].as_str().unwrap()), &saas, None).await;
    assert_eq!(s, 204);
    let (s, _) = h.call(Method::POST, "/api/v1/portal-links", &globex, Some(&json!({"owner": "globex"}))).await;
    assert_eq!(s, 403, "an owner's key without the scope");

    // Listed without tokens, and audited.
    let (_, list) = h.call(Method::GET, "/api/v1/portal-links", &admin, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    assert!(!list.to_string().contains("hpl_"));
    for action in ["portal_link.created", "portal_link.used", "portal_link.revoked"] {
        assert!(!audit(&h, action).await.is_empty(), "{action} is on record");
    }
}

/// Attack 6: with `HERALD_OIDC_ADMIN_CLAIM=email`, an address the provider does not
/// vouch for (`email_verified` false or absent) made its holder an admin, and became
/// the owner's contact address. It counts for neither now.
#[tokio::test]
async fn an_unverified_email_grants_no_role_and_no_contact_address() {
    use forging::Forgery;
    let (forger, h, _sink) =
        forged(&[("HERALD_OIDC_ADMIN_CLAIM", "email"), ("HERALD_OIDC_ADMIN_VALUES", "mallory@example.test")]).await;
    let base = h.base.clone();
    let login = |what: Forgery| {
        let (forger, base) = (forger.clone(), base.clone());
        async move {
            forger.forge(what);
            let b = browser();
            let r = b.get(format!("{base}/auth/login")).send().await.unwrap();
            let r = b.get(location(&r)).send().await.unwrap();
            let r = b.get(location(&r)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::SEE_OTHER);
            me(&b, &base).await.1
        }
    };
    let unverified = login(Forgery::None).await;
    assert_eq!(unverified["role"], "owner", "{unverified}");
    let contact: Option<String> = sqlx::query_scalar("SELECT email FROM owners WHERE subject = 'user:mallory'")
        .fetch_optional(&h.db)
        .await
        .unwrap();
    assert_eq!(contact, None, "an unverified address is no contact address");
    let verified = login(Forgery::VerifiedEmail).await;
    assert_eq!(verified["role"], "admin", "{verified}");
    h.stop().await;
}

/// An ID token (which a login hands to the browser's client) is never an API
/// credential, even from the configured issuer for the configured audience: only a
/// token typed `at+jwt` is (RFC 9068).
#[tokio::test]
async fn an_id_token_is_not_an_api_credential() {
    let (forger, h, _sink) = forged(&[("HERALD_OIDC_AUDIENCE", "herald")]).await;
    let answer: Value =
        reqwest::Client::new().post(format!("{}/token", forger.issuer())).send().await.unwrap().json().await.unwrap();
    let id_token = answer["id_token"].as_str().unwrap();
    let (status, v) = h.call(Method::GET, "/api/v1/catalog", id_token, None).await;
    assert_eq!(status, 401, "an ID token is refused: {v}");
    assert_eq!(v["type"], "urn:herald:problem:unauthorized");
    h.stop().await;
}
