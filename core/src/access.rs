//! The access policy: who the caller is (`Principal`), what it may do (`Scope`s), and
//! which rows it may see or manage (owners). Every domain operation passes through it
//! before it touches data, whichever door called it: the API (whose extractor only
//! authenticates), the console's server functions, the portal, the CLI.
//!
//! The rules, in one place (ARCHITECTURE.md has the whole matrix):
//! - An operation names the scope it needs; [`Principal::require`] refuses a caller
//!   without it (`Forbidden`). `admin` holds every scope.
//! - Rows belong to an owner. A caller sees and manages only its own owner's rows
//!   (another owner's row is "not found"), an admin every row. In SQL the same rule is
//!   `herald_owns(row_owner, caller_owner, caller_admin)` (and `herald_manages` for
//!   endpoints, which may carry admin reach), so no query writes it out by hand.
//! - An endpoint created by an admin has admin reach (every owner's operational events,
//!   `internal` event types) and is managed by admins only; it loses that reach when its
//!   creator's role goes (`revoke_admin_reach`).
//! - A portal link's visitor is an owner who can do exactly what the portal shows: its
//!   endpoints (and their deliveries) and the catalog. It holds no notification scope
//!   and makes no API keys, so nothing it creates outlives the link.
//! - A caller grants no more than it holds: scopes, owners and rate (`apikeys`).

use uuid::Uuid;

use crate::audit::{Actor, ActorKind};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    NotificationsWrite,
    NotificationsRead,
    EndpointsRead,
    EndpointsWrite,
    /// Makes and revokes portal links (for any owner the key may address).
    PortalLinks,
    /// Reaches every owner's resources, and the catalog, audit log and dashboard.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::NotificationsWrite,
        Scope::NotificationsRead,
        Scope::EndpointsRead,
        Scope::EndpointsWrite,
        Scope::PortalLinks,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::NotificationsWrite => "notifications:write",
            Scope::NotificationsRead => "notifications:read",
            Scope::EndpointsRead => "endpoints:read",
            Scope::EndpointsWrite => "endpoints:write",
            Scope::PortalLinks => "portal_links:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|sc| sc.as_str() == s)
    }
}

/// The scopes of a person logged in as an owner (not an admin).
pub const OWNER_SCOPES: [Scope; 3] = [Scope::EndpointsRead, Scope::EndpointsWrite, Scope::NotificationsRead];

/// The scopes of a portal link's visitor: what the portal shows.
pub const PORTAL_SCOPES: [Scope; 2] = [Scope::EndpointsRead, Scope::EndpointsWrite];

/// An authenticated caller as the domain layer sees it: an API key, a logged-in user,
/// a portal link's visitor, or an API client holding the identity provider's token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: ActorKind,
    /// The API key id, the user's subject, or the client id.
    pub id: String,
    /// Set for API keys (notifications record the key they came with).
    pub key_id: Option<Uuid>,
    pub owner: String,
    /// The key's scopes (a scope this version does not know is dropped).
    pub scopes: Vec<Scope>,
    /// The key's own requests-per-second limit (`None`: `HERALD_API_RATE_LIMIT`; 0: none).
    pub rate_limit: Option<u32>,
    /// The owners whose endpoints this caller's notifications may reach (`None`: any).
    pub addressable: Option<Vec<String>>,
    /// Set for a portal link's visitor: the link it came with.
    pub portal_link: Option<Uuid>,
    /// The request's id (`x-request-id`, bounded and sanitised) and peer address, for
    /// the audit log.
    pub request_id: Option<String>,
    pub source: Option<String>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    pub fn is_admin(&self) -> bool {
        self.has(Scope::Admin)
    }

    /// The `herald` command line run by `user` on Herald's machine: an operator
    /// holding the database's credentials, so an admin without a rate limit.
    pub fn cli(user: &str) -> Self {
        Principal {
            kind: ActorKind::Cli,
            id: user.to_owned(),
            key_id: None,
            owner: format!("cli:{user}"),
            scopes: vec![Scope::Admin],
            rate_limit: Some(0),
            addressable: None,
            portal_link: None,
            request_id: None,
            source: None,
        }
    }

    /// Refuses the operation unless the caller holds `scope` (an admin holds every one).
    pub fn require(&self, scope: Scope) -> Result<()> {
        if self.has(scope) || self.is_admin() {
            Ok(())
        } else {
            Err(Error::Forbidden(format!("this needs the scope '{}', which the caller does not hold", scope.as_str())))
        }
    }

    /// Refuses anyone but an admin.
    pub fn require_admin(&self) -> Result<()> {
        match self.is_admin() {
            true => Ok(()),
            false => Err(Error::Forbidden("only admins may do this".into())),
        }
    }

    /// Refuses a portal link's visitor (for what the portal does not offer, such as
    /// API keys, which would outlive the link).
    pub fn require_account(&self) -> Result<()> {
        match self.portal_link {
            Some(_) => Err(Error::Forbidden("a portal link's visitor cannot do this".into())),
            None => Ok(()),
        }
    }

    /// Whether the caller may see a row of `owner`.
    pub fn owns(&self, owner: &str) -> bool {
        self.is_admin() || owner == self.owner
    }

    /// A row of `owner` as the caller may see it: another owner's is "not found".
    pub fn visible<T>(&self, owner: &str, row: T) -> Result<T> {
        if self.owns(owner) {
            Ok(row)
        } else {
            Err(Error::NotFound)
        }
    }

    /// Whether the caller may manage an endpoint of `owner` (`admin_reach`: made by an
    /// admin, so managed by admins only).
    pub fn manages(&self, owner: &str, admin_reach: bool) -> bool {
        self.is_admin() || (!admin_reach && owner == self.owner)
    }

    /// The rate this caller runs at, in requests per second (`None`: no limit), given
    /// the configured default.
    pub fn effective_rate(&self, default: u32) -> Option<u32> {
        match self.rate_limit.unwrap_or(default) {
            0 => None,
            r => Some(r),
        }
    }

    /// The rate limiter's key for this caller.
    pub fn rate_key(&self) -> Uuid {
        self.key_id
            .unwrap_or_else(|| Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("{:?}:{}", self.kind, self.id).as_bytes()))
    }

    /// This caller as the actor of an audited change.
    pub fn actor(&self) -> Actor {
        Actor {
            kind: self.kind,
            id: self.id.clone(),
            owner: Some(self.owner.clone()),
            request_id: self.request_id.clone(),
            source: self.source.clone(),
        }
    }
}

/// Binds the caller to an owner-scoped statement: its owner, then whether it is an admin,
/// as `herald_owns(row_owner, $n, $n+1)` and `herald_manages(…, $n, $n+1)` take them.
pub trait BindCaller<'q> {
    fn bind_caller(self, who: &'q Principal) -> Self;
}

type Args = sqlx::postgres::PgArguments;

impl<'q> BindCaller<'q> for sqlx::query::Query<'q, sqlx::Postgres, Args> {
    fn bind_caller(self, who: &'q Principal) -> Self {
        self.bind(&who.owner).bind(who.is_admin())
    }
}

impl<'q, O> BindCaller<'q> for sqlx::query::QueryAs<'q, sqlx::Postgres, O, Args> {
    fn bind_caller(self, who: &'q Principal) -> Self {
        self.bind(&who.owner).bind(who.is_admin())
    }
}

impl<'q, O> BindCaller<'q> for sqlx::query::QueryScalar<'q, sqlx::Postgres, O, Args> {
    fn bind_caller(self, who: &'q Principal) -> Self {
        self.bind(&who.owner).bind(who.is_admin())
    }
}

/// The kinds of owner, each its own namespace: `team:<name>`, `user:<subject>`,
/// `client:<id>`, and `key:<id>` (a key that is its own owner, named by Herald only).
pub const OWNER_KINDS: [&str; 4] = ["team", "user", "client", "key"];

/// The owner `raw` names, as Herald stores it: `team:…`, `user:…` or `client:…` as
/// given, a bare name as a team (`acme` is `team:acme`). `key:` owners are made by
/// Herald alone; control characters, and names over 255 characters, are refused.
pub fn owner_name(raw: &str) -> Result<String> {
    let o = raw.trim();
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "owner '{}': {why}",
            o.chars().filter(|c| !c.is_control()).take(60).collect::<String>()
        )))
    };
    if o.is_empty() || o.len() > 255 || o.chars().any(char::is_control) {
        return bad("an owner is 1 to 255 characters without control characters");
    }
    match o.split_once(':') {
        None => Ok(format!("team:{o}")),
        Some(("key", _)) => bad("key: owners are named by Herald for keys that are their own owner"),
        Some((kind, rest)) if OWNER_KINDS.contains(&kind) && !rest.is_empty() => Ok(o.to_owned()),
        Some(_) => bad("an owner is team:<name>, user:<subject> or client:<id> (a bare name is a team)"),
    }
}

/// A client-supplied request id as Herald records it: at most 64 characters of
/// `[A-Za-z0-9._:-]`, anything else refused (`None`), so a request id can neither
/// flood the audit log nor forge a line in a log viewer.
pub fn request_id(raw: Option<&str>) -> Option<String> {
    let raw = raw?.trim();
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    ok.then(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(scopes: &[Scope], owner: &str) -> Principal {
        Principal {
            kind: ActorKind::ApiKey,
            id: "k".into(),
            key_id: None,
            owner: owner.into(),
            scopes: scopes.to_vec(),
            rate_limit: None,
            addressable: None,
            portal_link: None,
            request_id: None,
            source: None,
        }
    }

    #[test]
    fn scopes_and_owners() {
        let reader = who(&[Scope::EndpointsRead], "team:acme");
        assert!(reader.require(Scope::EndpointsRead).is_ok());
        assert!(matches!(reader.require(Scope::EndpointsWrite), Err(Error::Forbidden(_))));
        let admin = who(&[Scope::Admin], "user:a");
        assert!(admin.require(Scope::EndpointsWrite).is_ok());
        assert!(reader.owns("team:acme") && !reader.owns("team:globex") && admin.owns("team:globex"));
        assert!(matches!(reader.visible("team:globex", ()), Err(Error::NotFound)));
        // An admin's endpoint under the same owner name is not an owner's to manage.
        assert!(reader.manages("team:acme", false) && !reader.manages("team:acme", true));
        assert!(admin.manages("team:acme", true));
        let portal = Principal { portal_link: Some(Uuid::nil()), ..reader.clone() };
        assert!(portal.require_account().is_err() && reader.require_account().is_ok());
    }

    #[test]
    fn owners_have_kinds_that_never_meet() {
        assert_eq!(owner_name(" acme ").unwrap(), "team:acme");
        assert_eq!(owner_name("team:acme").unwrap(), "team:acme");
        assert_eq!(owner_name("client:acme").unwrap(), "client:acme");
        assert_eq!(owner_name("user:abc").unwrap(), "user:abc");
        for bad in ["", "key:01", "team:", "other:x", "a\nb", &"x".repeat(256)] {
            assert!(owner_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_ids_are_bounded_and_plain() {
        assert_eq!(request_id(Some("req-1.a:b_c")).as_deref(), Some("req-1.a:b_c"));
        assert_eq!(request_id(Some(&"a".repeat(65))), None);
        assert_eq!(request_id(Some("a\nforged")), None);
        assert_eq!(request_id(Some("")), None);
        assert_eq!(request_id(None), None);
    }

    #[test]
    fn effective_rates() {
        let mut k = who(&[], "o");
        assert_eq!(k.effective_rate(100), Some(100));
        k.rate_limit = Some(0);
        assert_eq!(k.effective_rate(100), None);
        k.rate_limit = Some(5);
        assert_eq!(k.effective_rate(100), Some(5));
    }
}
