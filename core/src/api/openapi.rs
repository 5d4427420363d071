//! The OpenAPI 3.1 document of the API, served at `/api/v1/openapi.json`. Generated
//! from the code: every route of [`super::router`] is registered through
//! `utoipa_axum::routes!` from its handler's `#[utoipa::path]`, so a route cannot exist
//! without its entry, and the tests check the document against the live router and an
//! independent validator.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

use crate::apikeys::ApiKeyInfo;
use crate::audit::Entry;
use crate::catalog::{DiffLine, EventType, Template, Version};
use crate::notifications::read::NotificationSummary;
use crate::webhooks::endpoints::Endpoint;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Self-hosted notifications: accept, render, store, deliver by email and signed webhooks.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&Bearer),
    security(("bearer" = [])),
    tags(
        (name = "notifications", description = "Accepting notifications and reading their history"),
        (name = "endpoints", description = "Webhook endpoints, their secrets and deliveries"),
        (name = "catalog", description = "Event types, routing and templates (admins)"),
        (name = "api-keys", description = "API keys"),
        (name = "audit", description = "The audit log (admins)"),
        (name = "suppressions", description = "Addresses Herald does not email: bounces, complaints, unsubscribes (admins)")
    )
)]
pub struct ApiDoc;

/// Every operation takes `Authorization: Bearer` with an API key or an access token
/// from the identity provider.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (hk_...) or an access token from the identity provider"))
                    .build(),
            ),
        );
    }
}

/// An error (RFC 9457 problem details).
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// `urn:herald:problem:<slug>`.
    pub r#type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Field errors: a JSON pointer and what is wrong there.
    pub errors: Option<Vec<crate::error::FieldError>>,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    pub data: Vec<NotificationSummary>,
    /// The next page's `before`; absent on the last page.
    pub next_before: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub data: Vec<Entry>,
    pub next_before: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct EndpointPage {
    pub data: Vec<Endpoint>,
    /// The next page's `after`; absent on the last page.
    pub next_after: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct EventTypeList {
    pub data: Vec<EventType>,
}

#[derive(Serialize, ToSchema)]
pub struct TemplateList {
    pub data: Vec<Template>,
}

#[derive(Serialize, ToSchema)]
pub struct TemplateVersions {
    #[serde(flatten)]
    pub template: Template,
    pub versions: Vec<Version>,
}

#[derive(Serialize, ToSchema)]
pub struct NewVersion {
    pub key: String,
    pub version: i32,
}

#[derive(Serialize, ToSchema)]
pub struct DiffList {
    pub data: Vec<DiffLine>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub data: Vec<ApiKeyInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    /// The whole key, shown once.
    pub key: String,
}

#[derive(Serialize, ToSchema)]
pub struct Resent {
    pub resent: usize,
    pub deliveries: Vec<Uuid>,
    /// More remain: call again.
    pub more: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Secret {
    pub key: String,
}

#[derive(Serialize, ToSchema)]
pub struct Headers {
    pub headers: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize, ToSchema)]
pub struct Rotated {
    pub key: String,
    pub previous_valid_for_seconds: u64,
}
