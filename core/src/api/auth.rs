//! Authentication as an extractor: a handler that takes `Auth<S>` cannot run without
//! a valid API key holding scope `S`.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use crate::apikeys::{self, Principal, Scope};
use crate::identity::{self, tokens::TokenVerifier};
use crate::problem::ApiError;

pub trait RequiredScope {
    /// `None`: any authenticated caller (the operation checks what it may do).
    const SCOPE: Option<Scope>;
}

/// Any authenticated caller.
pub struct Any;
impl RequiredScope for Any {
    const SCOPE: Option<Scope> = None;
}

pub struct NotificationsWrite;
impl RequiredScope for NotificationsWrite {
    const SCOPE: Option<Scope> = Some(Scope::NotificationsWrite);
}

pub struct NotificationsRead;
impl RequiredScope for NotificationsRead {
    const SCOPE: Option<Scope> = Some(Scope::NotificationsRead);
}

pub struct EndpointsRead;
impl RequiredScope for EndpointsRead {
    const SCOPE: Option<Scope> = Some(Scope::EndpointsRead);
}

pub struct EndpointsWrite;
impl RequiredScope for EndpointsWrite {
    const SCOPE: Option<Scope> = Some(Scope::EndpointsWrite);
}

pub struct PortalLinks;
impl RequiredScope for PortalLinks {
    const SCOPE: Option<Scope> = Some(Scope::PortalLinks);
}

/// Admin-only operations (the audit log).
pub struct Admin;
impl RequiredScope for Admin {
    const SCOPE: Option<Scope> = Some(Scope::Admin);
}

pub struct Auth<S: RequiredScope>(pub Principal, pub PhantomData<S>);

impl<S: RequiredScope + Send + Sync> FromRequestParts<AppState> for Auth<S> {
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
        principal.request_id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        principal.source =
            parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string());
        let limit = principal.rate_limit.unwrap_or(state.config.api_rate_limit);
        if let Err(wait) = state.limiter.check(principal.rate_key(), limit) {
            crate::metrics::rate_limited();
            return Err(ApiError::TooManyRequests(wait));
        }
        if let Some(scope) = S::SCOPE {
            if !principal.has(scope) && !principal.is_admin() {
                return Err(ApiError::Forbidden(scope.as_str()));
            }
        }
        Ok(Auth(principal, PhantomData))
    }
}
