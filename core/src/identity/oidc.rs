//! OpenID Connect login (authorization code flow with PKCE S256, `state` and `nonce`),
//! with the `openidconnect` crate. The provider's metadata and keys are discovered at
//! start; when an ID token names a key Herald does not have (the provider rotated its
//! keys), the metadata is fetched again, at most every [`REFRESH_EVERY`].

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AccessTokenHash, AdditionalProviderMetadata, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl, Scope,
    TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::OidcConfig;

/// Metadata fetched again at most this often when an unknown key shows up.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// The one extension of the discovery document Herald reads: RP-initiated logout.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LogoutMetadata {
    pub end_session_endpoint: Option<String>,
}
impl AdditionalProviderMetadata for LogoutMetadata {}

type Metadata = ProviderMetadata<
    LogoutMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// What a login in progress keeps in the session until the provider sends the user back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// Where to go after login (a path on Herald).
    pub next: String,
}

/// Who logged in, from a verified ID token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoggedIn {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// The provider vouches for `email` (`email_verified`); absent counts as false.
    pub email_verified: bool,
    pub name: Option<String>,
    /// Every claim of the verified ID token (for roles and teams).
    pub claims: Value,
    /// For the provider's end-session endpoint.
    pub id_token: String,
}

/// Why a login failed (for the audit log and the user; never a token).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the login's state does not match (replayed, tampered with, or from another browser)")]
    State,
    #[error("the identity provider refused the login: {0}")]
    Refused(String),
    #[error("the ID token was not accepted: {0}")]
    Token(String),
    #[error("the identity provider could not be reached: {0}")]
    Provider(String),
}

pub struct Oidc {
    config: OidcConfig,
    redirect: RedirectUrl,
    http: openidconnect::reqwest::Client,
    metadata: RwLock<(Arc<Metadata>, Instant)>,
}

fn http_client() -> anyhow::Result<openidconnect::reqwest::Client> {
    // Never follow redirects (the crate's own advice: a redirect is an SSRF vector).
    Ok(openidconnect::reqwest::Client::builder()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?)
}

async fn discover(issuer: &str, http: &openidconnect::reqwest::Client) -> anyhow::Result<Metadata> {
    let url = IssuerUrl::new(issuer.to_owned())?;
    Metadata::discover_async(url, http)
        .await
        .map_err(|e| anyhow::anyhow!("OpenID Connect discovery at {issuer} failed: {}", chain(&e)))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

impl Oidc {
    /// Discovers the provider. Fails with an error naming the issuer.
    pub async fn discover(config: &OidcConfig, public_url: &str) -> anyhow::Result<Self> {
        let http = http_client()?;
        let metadata = discover(&config.issuer, &http).await?;
        Ok(Self {
            config: config.clone(),
            redirect: RedirectUrl::new(format!("{public_url}/auth/callback"))?,
            http,
            metadata: RwLock::new((Arc::new(metadata), Instant::now())),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    fn metadata(&self) -> Arc<Metadata> {
        self.metadata.read().expect("oidc metadata").0.clone()
    }

    fn client(
        &self,
        metadata: &Metadata,
    ) -> CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    > {
        CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            self.config.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(self.redirect.clone())
    }

    /// The provider URL to send the browser to, and what to keep until it comes back.
    pub fn begin(&self, next: String) -> (String, Pending) {
        let metadata = self.metadata();
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = self.client(&metadata);
        let mut req =
            client.authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random);
        for s in self.config.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        let pending = Pending {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            next,
        };
        (url.to_string(), pending)
    }

    /// Finishes a login: checks `state`, exchanges the code (with the PKCE verifier),
    /// and verifies the ID token (signature, issuer, audience, expiry, nonce, `at_hash`).
    pub async fn finish(&self, pending: &Pending, state: &str, code: &str) -> Result<LoggedIn, LoginError> {
        use subtle::ConstantTimeEq;
        if !bool::from(pending.state.as_bytes().ct_eq(state.as_bytes())) {
            return Err(LoginError::State);
        }
        let metadata = self.metadata();
        let client = self.client(&metadata);
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| LoginError::Provider(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| LoginError::Refused(chain(&e)))?;
        let id_token = response.id_token().ok_or_else(|| LoginError::Token("the response has no ID token".into()))?;
        let nonce = Nonce::new(pending.nonce.clone());
        let verify = |client: &CoreClient<_, _, _, _, _, _>| -> Result<LoggedIn, LoginError> {
            let verifier = client.id_token_verifier();
            let claims = id_token.claims(&verifier, &nonce).map_err(|e| LoginError::Token(chain(&e)))?;
            if let Some(expected) = claims.access_token_hash() {
                let alg = id_token.signing_alg().map_err(|e| LoginError::Token(chain(&e)))?;
                let key = id_token.signing_key(&verifier).map_err(|e| LoginError::Token(chain(&e)))?;
                let actual = AccessTokenHash::from_token(response.access_token(), alg, key)
                    .map_err(|e| LoginError::Token(chain(&e)))?;
                if actual != *expected {
                    return Err(LoginError::Token("at_hash does not match the access token".into()));
                }
            }
            // The signature covers the payload: its other claims (groups, a team) are as
            // trustworthy as the standard ones the crate parsed.
            let raw = id_token.to_string();
            let payload = raw.split('.').nth(1).unwrap_or_default();
            use base64::Engine as _;
            let claims_json: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            Ok(LoggedIn {
                issuer: claims.issuer().to_string(),
                subject: claims.subject().to_string(),
                email: claims.email().map(|e| e.to_string()),
                email_verified: claims.email_verified().unwrap_or(false),
                name: claims.name().and_then(|n| n.get(None)).map(|n| n.to_string()),
                claims: claims_json,
                id_token: raw,
            })
        };
        match verify(&client) {
            Err(LoginError::Token(msg)) if self.refresh().await => {
                // The provider may have rotated its keys: once more with fresh ones.
                let metadata = self.metadata();
                verify(&self.client(&metadata)).map_err(|_| LoginError::Token(msg))
            }
            other => other,
        }
    }

    /// Fetches the metadata and keys again, unless that was done within
    /// [`REFRESH_EVERY`]. True when fresh metadata was loaded.
    pub async fn refresh(&self) -> bool {
        if self.metadata.read().expect("oidc metadata").1.elapsed() < REFRESH_EVERY {
            return false;
        }
        match discover(&self.config.issuer, &self.http).await {
            Ok(m) => {
                *self.metadata.write().expect("oidc metadata") = (Arc::new(m), Instant::now());
                true
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot refresh the identity provider's metadata");
                false
            }
        }
    }

    /// The provider's end-session URL for this login, if it has one.
    pub fn end_session_url(&self, id_token: &str, after: &str) -> Option<String> {
        let metadata = self.metadata();
        let end = metadata.additional_metadata().end_session_endpoint.as_deref()?;
        let mut url = url::Url::parse(end).ok()?;
        url.query_pairs_mut()
            .append_pair("id_token_hint", id_token)
            .append_pair("client_id", &self.config.client_id)
            .append_pair("post_logout_redirect_uri", after);
        Some(url.to_string())
    }

    /// The JWKS URL (for access tokens on the API).
    pub fn jwks_uri(&self) -> String {
        self.metadata().jwks_uri().to_string()
    }

    pub fn http(&self) -> &openidconnect::reqwest::Client {
        &self.http
    }
}
