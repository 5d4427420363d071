//! OAuth 2.0 client credentials (RFC 6749 §4.4) for webhook endpoints: the token is
//! fetched from the owner's token URL through the webhook client (so the SSRF guard,
//! no redirects and the timeouts apply), cached per endpoint until shortly before it
//! expires, fetched once however many attempts wait for it, and dropped when the
//! endpoint answers `401`. Errors name the token endpoint's answer, never the secret.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, ACCEPT};
use serde::Deserialize;
use uuid::Uuid;

/// The most of a token response that is read.
const MAX_RESPONSE: usize = 64 * 1024;
/// How long a token without `expires_in` is used.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// An endpoint's client credentials (the secret opened).
#[derive(Clone, Hash)]
pub struct Credentials {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub scope: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("token_url", &self.token_url).field("client_id", &self.client_id).finish()
    }
}

impl Credentials {
    fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

struct Cached {
    /// The header, or why the last fetch failed (kept briefly, so the attempts waiting
    /// behind a failing fetch fail with it instead of each trying again).
    bearer: Result<HeaderValue, String>,
    until: Instant,
    fingerprint: u64,
}

/// How long a failed fetch is remembered.
const FAILURE_MEMORY: Duration = Duration::from_secs(5);

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Tokens by endpoint, for one dispatcher.
#[derive(Default)]
pub struct Tokens {
    slots: Mutex<HashMap<Uuid, Slot>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
}

impl Tokens {
    fn slot(&self, endpoint: Uuid) -> Slot {
        let mut slots = self.slots.lock().expect("token slots");
        if slots.len() > 10_000 {
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        slots.entry(endpoint).or_default().clone()
    }

    /// The `Authorization` value for an attempt to `endpoint`: the cached token, or a
    /// new one (one fetch per endpoint at a time; the others wait for it).
    pub async fn bearer(&self, http: &reqwest::Client, endpoint: Uuid, c: &Credentials) -> Result<HeaderValue, String> {
        let slot = self.slot(endpoint);
        let mut cached = slot.lock().await;
        let fingerprint = c.fingerprint();
        if let Some(t) = cached.as_ref().filter(|t| t.fingerprint == fingerprint && t.until > Instant::now()) {
            return t.bearer.clone();
        }
        *cached = None;
        let (bearer, until) = match fetch(http, c).await {
            // Renewed a little before it expires (half its life when that is short).
            Ok((b, lifetime)) => (Ok(b), Instant::now() + lifetime - Duration::from_secs(30).min(lifetime / 2)),
            Err(e) => (Err(e), Instant::now() + FAILURE_MEMORY),
        };
        *cached = Some(Cached { bearer: bearer.clone(), until, fingerprint });
        bearer
    }

    /// Drops the endpoint's token (it answered `401`): the next attempt fetches anew.
    pub fn forget(&self, endpoint: Uuid) {
        self.slots.lock().expect("token slots").remove(&endpoint);
    }
}

fn form_encode(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

async fn fetch(http: &reqwest::Client, c: &Credentials) -> Result<(HeaderValue, Duration), String> {
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(scope) = &c.scope {
        form.push(("scope", scope));
    }
    // RFC 6749 §2.3.1: the id and secret are form-encoded, then sent as Basic.
    let sent = http
        .post(&c.token_url)
        .basic_auth(form_encode(&c.client_id), Some(form_encode(&c.client_secret)))
        .header(ACCEPT, "application/json")
        .form(&form)
        .send()
        .await;
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            if crate::ssrf::refused_in(&e).is_some() {
                crate::metrics::ssrf_refused();
                return Err("fetching the OAuth token: the token URL is refused by the network policy".into());
            }
            return Err(format!("fetching the OAuth token: {}", super::webhook::describe(e)));
        }
    };
    let status = resp.status();
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk[..chunk.len().min(MAX_RESPONSE - body.len())]);
        if body.len() >= MAX_RESPONSE {
            break;
        }
    }
    if !status.is_success() {
        let why = serde_json::from_slice::<TokenError>(&body)
            .ok()
            .map(|e| e.error.chars().filter(|c| c.is_ascii_graphic()).take(64).collect::<String>())
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(format!("fetching the OAuth token: the token endpoint answered HTTP {status}{why}"));
    }
    let t: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| format!("fetching the OAuth token: the answer is not a token response: {e}"))?;
    if t.token_type.as_deref().is_some_and(|tt| !tt.eq_ignore_ascii_case("bearer")) {
        return Err("fetching the OAuth token: the token is not a bearer token".into());
    }
    if t.access_token.is_empty() || t.access_token.len() > 8192 {
        return Err("fetching the OAuth token: the access token is empty or too long".into());
    }
    let mut bearer = HeaderValue::from_str(&format!("Bearer {}", t.access_token))
        .map_err(|_| "fetching the OAuth token: the access token is not a valid header value".to_owned())?;
    bearer.set_sensitive(true);
    let lifetime = t.expires_in.map_or(DEFAULT_LIFETIME, |s| Duration::from_secs(s.clamp(1, 86_400)));
    Ok((bearer, lifetime))
}
