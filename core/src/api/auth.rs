//! Authentication as an extractor: a handler that takes `Auth` cannot run without a
//! valid API key or access token. It decides nothing else: each domain operation asks
//! the access policy (`crate::access`) whether this caller may do it.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use crate::apikeys::{self, Principal};
use crate::identity::{self, tokens::TokenVerifier};
use crate::problem::ApiError;

/// The authenticated caller. What it may do is the domain's to decide
/// (`access::Principal::require` in each operation); this only says who it is.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized("an API key is required: send Authorization: Bearer <key>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized("the Authorization header must be 'Bearer <key>'"))?;
        let mut principal = match &state.tokens {
            Some(tokens) if TokenVerifier::looks_like_jwt(token) => {
                let claims = tokens.verify(token).await.map_err(|why| {
                    tracing::info!(reason = %why, "access token refused");
                    ApiError::Unauthorized("the access token is invalid, expired or not for Herald")
                })?;
                identity::client_principal(&claims).ok_or(ApiError::Unauthorized("the access token names no client"))?
            }
            _ => apikeys::verify(&state.db, &state.keys, token)
                .await?
                .ok_or(ApiError::Unauthorized("the API key is invalid or revoked"))?,
        };
        principal.request_id =
            crate::access::request_id(parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()));
        principal.source =
            parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string());
        let limit = principal.rate_limit.unwrap_or(state.config.api_rate_limit);
        if let Err(wait) = state.limiter.check(principal.rate_key(), limit) {
            crate::metrics::rate_limited();
            return Err(ApiError::TooManyRequests(wait));
        }
        Ok(Auth(principal))
    }
}
