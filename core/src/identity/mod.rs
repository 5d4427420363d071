//! Identity: people who log in with the company's OpenID Connect provider (`oidc`),
//! API clients holding the provider's access tokens (`tokens`), and what each may do.
//!
//! A user is an admin when the claim `HERALD_OIDC_ADMIN_CLAIM` holds one of
//! `HERALD_OIDC_ADMIN_VALUES`; everyone else is a webhook owner. An owner's identity is
//! the team named by `HERALD_OIDC_TEAM_CLAIM` when the token has it (colleagues share
//! endpoints), else `user:<subject>`. An API client's owner is its client id.

pub mod oidc;
pub mod portal;
pub mod tokens;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;

use crate::access::{Principal, Scope, OWNER_SCOPES, PORTAL_SCOPES};
use crate::audit::{self, Actor, ActorKind, Target};
use crate::config::OidcConfig;

/// A logged-in person, as the session keeps them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionUser {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// The provider vouches for `email`: only then does it count for a role or as the
    /// owner's contact address.
    #[serde(default)]
    pub email_verified: bool,
    pub name: Option<String>,
    pub admin: bool,
    pub team: Option<String>,
    pub owner: String,
    /// When the user logged in (Unix seconds), for the absolute session expiry.
    pub login_at: i64,
    /// The ID token, for the provider's end-session endpoint.
    #[serde(default)]
    pub id_token: String,
    /// Set for a session opened with a portal link: valid while the link is.
    #[serde(default)]
    pub portal_link: Option<uuid::Uuid>,
}

impl SessionUser {
    /// Builds the session's user from a verified login and the role settings.
    pub fn from_login(login: oidc::LoggedIn, cfg: &OidcConfig) -> Self {
        // An unverified email is only what the user typed: it grants nothing.
        let counts = |claim: &str| !claim.starts_with("email") || login.email_verified;
        let admin = counts(&cfg.admin_claim)
            && claim_values(&login.claims, &cfg.admin_claim).iter().any(|v| cfg.admin_values.contains(v));
        let team = cfg
            .team_claim
            .as_deref()
            .filter(|c| counts(c))
            .and_then(|c| claim_values(&login.claims, c).into_iter().next());
        // Each kind of owner has its own prefix, so a team, a person and an API client
        // of the same name never share endpoints.
        let owner = match &team {
            Some(t) => format!("team:{t}"),
            None => format!("user:{}", login.subject),
        };
        SessionUser {
            issuer: login.issuer,
            subject: login.subject,
            email: login.email,
            email_verified: login.email_verified,
            name: login.name,
            admin,
            team,
            owner,
            login_at: chrono::Utc::now().timestamp(),
            id_token: login.id_token,
            portal_link: None,
        }
    }

    /// The session's user for a visitor of a portal link: an owner, nothing more.
    pub fn from_portal_link(link: &portal::PortalLink) -> Self {
        SessionUser {
            issuer: "herald:portal-link".into(),
            subject: format!("portal:{}", link.id),
            email: None,
            email_verified: false,
            name: Some(format!("{} (portal link)", link.owner)),
            admin: false,
            team: None,
            owner: link.owner.clone(),
            login_at: chrono::Utc::now().timestamp(),
            id_token: String::new(),
            portal_link: Some(link.id),
        }
    }

    pub fn role(&self) -> &'static str {
        if self.admin {
            "admin"
        } else {
            "owner"
        }
    }

    /// What the user may do, as the domain layer's caller.
    pub fn principal(&self, request_id: Option<String>, source: Option<String>) -> Principal {
        let scopes = match (self.admin, self.portal_link) {
            (true, _) => vec![Scope::Admin],
            (false, Some(_)) => PORTAL_SCOPES.to_vec(),
            (false, None) => OWNER_SCOPES.to_vec(),
        };
        Principal {
            kind: ActorKind::User,
            id: self.subject.clone(),
            key_id: None,
            owner: self.owner.clone(),
            scopes,
            rate_limit: None,
            addressable: None,
            portal_link: self.portal_link,
            request_id,
            source,
        }
    }

    pub fn actor(&self, request_id: Option<String>, source: Option<String>) -> Actor {
        self.principal(request_id, source).actor()
    }
}

/// The string values of a claim: a string, or the strings of a list.
fn claim_values(claims: &Value, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// An API client holding a verified access token.
pub fn client_principal(claims: &tokens::AccessClaims) -> Option<Principal> {
    let client = claims.client()?.to_owned();
    let owner = format!("client:{client}");
    let scopes: Vec<Scope> = claims.scopes().iter().filter_map(|s| Scope::parse(s)).collect();
    Some(Principal {
        kind: ActorKind::Client,
        id: client,
        key_id: None,
        owner,
        scopes,
        rate_limit: None,
        addressable: None,
        portal_link: None,
        request_id: None,
        source: None,
    })
}

/// Records a login: the user (subject, email, name, role, team, last login), the
/// owner's contact address (for mail about their endpoints), and an audit entry.
pub async fn record_login(db: &PgPool, user: &SessionUser, actor: &Actor) -> crate::error::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO users (issuer, subject, email, name, roles, team, owner, last_login_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now())
         ON CONFLICT (issuer, subject) DO UPDATE SET email = excluded.email, name = excluded.name,
             roles = excluded.roles, team = excluded.team, owner = excluded.owner, last_login_at = now()",
    )
    .bind(&user.issuer)
    .bind(&user.subject)
    .bind(user.email.as_ref().filter(|_| user.email_verified))
    .bind(&user.name)
    .bind(vec![user.role()])
    .bind(&user.team)
    .bind(&user.owner)
    .execute(&mut *tx)
    .await?;
    // An admin who comes back as an owner takes no admin reach along.
    let reach_taken = !user.admin
        && crate::webhooks::endpoints::revoke_admin_reach(&mut tx, ActorKind::User, &user.subject).await? > 0;
    if let (Some(email), false, true) = (&user.email, user.admin, user.email_verified) {
        crate::apikeys::set_owner_email(&mut tx, &user.owner, email).await?;
    }
    let after = serde_json::json!({ "name": user.name, "email": user.email, "role": user.role(), "team": user.team });
    audit::record(&mut tx, actor, "user.login", Target { kind: "user", id: user.subject.clone() }, None, Some(after))
        .await?;
    tx.commit().await?;
    if reach_taken {
        crate::cache::changed(crate::cache::ENDPOINTS);
    }
    Ok(())
}

/// Records a refused login (the reason, never a token).
pub async fn record_failed_login(db: &PgPool, reason: &str, actor: &Actor) -> sqlx::Result<()> {
    let after = serde_json::json!({ "reason": reason });
    audit::record_alone(db, actor, "user.login_failed", Target { kind: "user", id: String::new() }, Some(after)).await
}

pub async fn record_logout(db: &PgPool, user: &SessionUser, actor: &Actor) -> sqlx::Result<()> {
    audit::record_alone(db, actor, "user.logout", Target { kind: "user", id: user.subject.clone() }, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(team: Option<&str>) -> OidcConfig {
        OidcConfig {
            issuer: "http://idp".into(),
            client_id: "herald".into(),
            client_secret: None,
            scopes: vec!["openid".into()],
            admin_claim: "groups".into(),
            admin_values: vec!["herald-admins".into()],
            team_claim: team.map(str::to_owned),
            audience: None,
            clock_skew: std::time::Duration::from_secs(30),
            session_idle: std::time::Duration::from_secs(60),
            session_max: std::time::Duration::from_secs(60),
        }
    }

    fn login(claims: Value) -> oidc::LoggedIn {
        oidc::LoggedIn {
            issuer: "http://idp".into(),
            subject: "u1".into(),
            email: None,
            email_verified: false,
            name: None,
            claims,
            id_token: String::new(),
        }
    }

    #[test]
    fn roles_and_owners_come_from_claims() {
        let admin = SessionUser::from_login(login(serde_json::json!({"groups": ["x", "herald-admins"]})), &cfg(None));
        assert!(admin.admin);
        assert_eq!(admin.principal(None, None).scopes, vec![Scope::Admin]);
        let owner = SessionUser::from_login(login(serde_json::json!({"groups": "herald-users"})), &cfg(None));
        assert!(!owner.admin);
        assert_eq!(owner.owner, "user:u1");
        assert!(!owner.principal(None, None).is_admin());
        let team = SessionUser::from_login(login(serde_json::json!({"team": "acme"})), &cfg(Some("team")));
        assert_eq!(team.owner, "team:acme");
        let no_team = SessionUser::from_login(login(serde_json::json!({})), &cfg(Some("team")));
        assert_eq!(no_team.owner, "user:u1");
    }

    #[test]
    fn an_unverified_email_grants_no_role() {
        let mut by_email = cfg(None);
        by_email.admin_claim = "email".into();
        by_email.admin_values = vec!["boss@example.test".into()];
        let claims = serde_json::json!({"email": "boss@example.test"});
        let mut l = login(claims.clone());
        l.email = Some("boss@example.test".into());
        let unverified = SessionUser::from_login(l.clone(), &by_email);
        assert!(!unverified.admin && !unverified.email_verified);
        l.email_verified = true;
        assert!(SessionUser::from_login(l, &by_email).admin);
    }
}
