//! Access tokens from the identity provider on the API (`Authorization: Bearer <JWT>`):
//! the signature against the provider's JWKS (keys cached by `kid`; an unknown `kid`
//! fetches the set again, at most every [`REFETCH_EVERY`]), the issuer, the audience
//! (`HERALD_OIDC_AUDIENCE`), `exp` and `nbf` with `HERALD_OIDC_CLOCK_SKEW` of leeway, and an allow-list of
//! asymmetric algorithms (never `none`, never an HMAC, so a public key can never be
//! used as a shared secret).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::Mutex;

/// The JWKS is fetched again for an unknown key at most this often.
pub const REFETCH_EVERY: Duration = Duration::from_secs(5);

const ALLOWED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The claims Herald reads from an access token.
#[derive(Debug, Clone, Deserialize)]
pub struct AccessClaims {
    pub sub: Option<String>,
    pub client_id: Option<String>,
    pub azp: Option<String>,
    /// Space-separated (RFC 8693 / RFC 9068).
    pub scope: Option<String>,
    /// Some providers (Entra ID: `scp`) send a string or a list.
    pub scp: Option<serde_json::Value>,
}

impl AccessClaims {
    /// The client the token was issued to: `client_id`, else `azp`, else `sub`.
    pub fn client(&self) -> Option<&str> {
        self.client_id.as_deref().or(self.azp.as_deref()).or(self.sub.as_deref())
    }

    pub fn scopes(&self) -> Vec<String> {
        let mut out: Vec<String> =
            self.scope.as_deref().unwrap_or_default().split_whitespace().map(str::to_owned).collect();
        match &self.scp {
            Some(serde_json::Value::String(s)) => out.extend(s.split_whitespace().map(str::to_owned)),
            Some(serde_json::Value::Array(items)) => {
                out.extend(items.iter().filter_map(|i| i.as_str()).map(str::to_owned))
            }
            _ => {}
        }
        out
    }
}

struct Keys {
    by_kid: HashMap<String, (Algorithm, DecodingKey)>,
    fetched: Option<Instant>,
}

pub struct TokenVerifier {
    issuer: String,
    audience: String,
    jwks_uri: String,
    http: openidconnect::reqwest::Client,
    keys: Mutex<Keys>,
    leeway: u64,
}

impl TokenVerifier {
    pub fn new(
        issuer: &str,
        audience: &str,
        leeway: std::time::Duration,
        jwks_uri: String,
        http: openidconnect::reqwest::Client,
    ) -> Self {
        Self {
            leeway: leeway.as_secs(),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            jwks_uri,
            http,
            keys: Mutex::new(Keys { by_kid: HashMap::new(), fetched: None }),
        }
    }

    /// Whether a bearer credential looks like a JWT (three dot-separated parts).
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3 && token.starts_with("ey")
    }

    async fn key(&self, kid: &str) -> Result<(Algorithm, DecodingKey), String> {
        let mut keys = self.keys.lock().await;
        if let Some(k) = keys.by_kid.get(kid) {
            return Ok(k.clone());
        }
        if keys.fetched.is_some_and(|t| t.elapsed() < REFETCH_EVERY) {
            return Err(format!("no key '{kid}' in the identity provider's key set"));
        }
        keys.fetched = Some(Instant::now());
        let set: JwkSet = self
            .http
            .get(&self.jwks_uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("cannot fetch the identity provider's keys: {e}"))?
            .json()
            .await
            .map_err(|e| format!("the identity provider's key set is unreadable: {e}"))?;
        keys.by_kid.clear();
        for jwk in &set.keys {
            let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)) else { continue };
            let alg = match jwk.common.key_algorithm.map(|a| a.to_string()).and_then(|a| a.parse::<Algorithm>().ok()) {
                Some(a) => a,
                // A key without `alg`: its type decides (RSA keys sign RS256 by default).
                None => match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p) => match p.curve {
                        jsonwebtoken::jwk::EllipticCurve::P384 => Algorithm::ES384,
                        _ => Algorithm::ES256,
                    },
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    _ => continue,
                },
            };
            if ALLOWED.contains(&alg) {
                keys.by_kid.insert(kid, (alg, key));
            }
        }
        keys.by_kid.get(kid).cloned().ok_or_else(|| format!("no key '{kid}' in the identity provider's key set"))
    }

    /// Verifies a token; the error says why it was refused (for the log, never the client).
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        // An access token says so (RFC 9068 `typ: at+jwt`): an ID token, which a
        // browser login hands to the client, is never an API credential.
        let typ = header.typ.as_deref().map(str::to_ascii_lowercase);
        if !matches!(typ.as_deref(), Some("at+jwt" | "application/at+jwt")) {
            return Err("not an access token (its typ is not at+jwt)".into());
        }
        if !ALLOWED.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let kid = header.kid.ok_or("the token names no key (kid)")?;
        let (key_alg, key) = self.key(&kid).await?;
        // The key's family and the token's algorithm must agree (an RS256 key cannot
        // check an ES256 signature, and never an HMAC).
        let family = |a: Algorithm| format!("{a:?}").chars().take(2).collect::<String>();
        if family(key_alg) != family(header.alg) {
            return Err(format!("algorithm {:?} does not fit key '{kid}'", header.alg));
        }
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key, &v).map_err(|e| format!("{e}"))?;
        Ok(data.claims)
    }
}
