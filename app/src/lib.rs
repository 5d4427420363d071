//! The Herald admin console (Leptos, server-rendered and hydrated).
//!
//! Compiled twice: with `ssr` into the `herald` binary, with `hydrate` into the WASM
//! bundle. Server-only code (database access) stays behind `cfg(feature = "ssr")`;
//! only DTOs cross the wire.

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Title};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::{path, SsrMode, StaticSegment};
use serde::{Deserialize, Serialize};

mod dashboard;
mod endpoints;
mod event_types;
mod history;
mod portal_links;
mod suppressions;
mod templates;

/// Who is logged in, as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    pub name: String,
    pub email: Option<String>,
    pub role: String,
    /// The console's pages this user may use, as the access policy says (display
    /// hints: every server function asks the policy again).
    pub pages: Vec<String>,
    /// The caller reaches every owner's endpoints and keys (the owner filters and
    /// columns are shown only then).
    pub all_owners: bool,
}

/// The logged-in user (`None` when login is not configured). The server's login gate
/// put the session's user on the request; nothing here trusts the browser.
#[server(prefix = "/console/fn", endpoint = "me")]
pub async fn current_user() -> Result<Option<Me>, ServerFnError> {
    use herald_core::access::Scope;
    let Some(u) = session_user() else { return Ok(None) };
    let who = u.principal(None, None);
    let pages = [
        ("endpoints", who.require(Scope::EndpointsRead).is_ok()),
        ("catalog", true),
        ("keys", who.require_account().is_ok()),
        ("notifications", who.require(Scope::NotificationsRead).is_ok()),
        ("portal-links", who.require(Scope::PortalLinks).is_ok()),
        ("dashboard", who.require_admin().is_ok()),
        ("event-types", who.require_admin().is_ok()),
        ("templates", who.require_admin().is_ok()),
        ("audit", who.require_admin().is_ok()),
        ("suppressions", who.require_admin().is_ok()),
    ]
    .into_iter()
    .filter(|(_, ok)| *ok)
    .map(|(p, _)| p.to_owned())
    .collect();
    Ok(Some(Me {
        name: u.name.clone().or_else(|| u.email.clone()).unwrap_or_else(|| u.subject.clone()),
        email: u.email.clone(),
        role: u.role().to_owned(),
        pages,
        all_owners: who.require_admin().is_ok(),
    }))
}

/// One audit entry as the console lists it, with what it changed as a line diff of
/// its before and after snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source: String,
    /// (tag, line): `+` added, `-` removed, ` ` kept.
    pub changes: Vec<(String, String)>,
}

/// A page of the audit log, the state of the hash chain, and the next page's cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditView {
    pub chain: String,
    pub rows: Vec<AuditRow>,
    pub next_before: Option<i64>,
}

/// The audit log's filters, as the form and the URL carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditParams {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub before: Option<String>,
}

/// The audit log for admins; `None` for anyone else (the page then says "not found").
/// Authorised here, on the server, from the session user the login gate put on the
/// request.
#[server(prefix = "/console/fn", endpoint = "audit")]
pub async fn audit_log(#[server(default)] q: AuditParams) -> Result<Option<AuditView>, ServerFnError> {
    use herald_core::audit::{Filter, Verdict};
    use herald_core::auditing;
    let who = principal()?;
    let db = db()?;
    let text = |v: Option<String>| v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let time = |name: &str, v: Option<String>| {
        herald_core::model::parse_time(name, v.as_deref().unwrap_or("")).map_err(readable)
    };
    let before = text(q.before)
        .map(|b| b.parse::<i64>().map_err(|_| ServerFnError::new("before must be an entry number")))
        .transpose()?;
    let filter = Filter {
        actor: text(q.actor),
        action: text(q.action),
        target: text(q.target),
        since: time("since", q.since)?,
        until: time("until", q.until)?,
        before,
    };
    const PAGE: i64 = 50;
    let Some(entries) = allowed(auditing::list(&db, &who, &filter, PAGE).await)? else { return Ok(None) };
    let next_before = (entries.len() as i64 == PAGE).then(|| entries.last().map(|e| e.seq)).flatten();
    let chain = match auditing::chain(&db, &who).await.map_err(readable)? {
        Verdict::Intact { count, head, .. } => format!(
            "Chain verified: {count} entries, head {}",
            head.map(|h| h.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>()).unwrap_or_default()
        ),
        Verdict::Broken { seq, reason } => format!("Chain broken at entry {seq}: {reason}"),
    };
    let pretty = |v: &Option<serde_json::Value>| {
        v.as_ref().map(|v| serde_json::to_string_pretty(v).unwrap_or_default() + "\n").unwrap_or_default()
    };
    let rows = entries
        .into_iter()
        .map(|e| AuditRow {
            seq: e.seq,
            at: e.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            actor: format!("{} {}", e.actor_kind.as_str(), e.actor),
            action: e.action,
            target: format!("{} {}", e.target_kind.unwrap_or_default(), e.target.unwrap_or_default()),
            source: e.source.unwrap_or_default(),
            changes: herald_core::model::line_diff(&pretty(&e.before), &pretty(&e.after))
                .into_iter()
                .map(|(t, l)| (t.to_string(), l))
                .collect(),
        })
        .collect();
    Ok(Some(AuditView { chain, rows, next_before }))
}

/// The audit log page (admins): filters, entries with their changes, older pages.
#[component]
fn AuditPage() -> impl IntoView {
    let query = leptos_router::hooks::use_query_map();
    let params = Memo::new(move |_| {
        query.with(|q| {
            let get = |k: &str| q.get(k).filter(|v| !v.trim().is_empty());
            AuditParams {
                actor: get("actor"),
                action: get("action"),
                target: get("target"),
                since: get("since"),
                until: get("until"),
                before: get("before"),
            }
        })
    });
    let log = Resource::new(move || params.get(), audit_log);
    let field = |name: &'static str, label: &'static str, kind: &'static str, value: Option<String>| {
        let (id, for_id) = (format!("audit-{name}"), format!("audit-{name}"));
        view! { <label for=for_id>{label}<input id=id type=kind name=name value=value.unwrap_or_default()/></label> }
    };
    // The heading and the filters, shown with the log or its error (never around "Page not found").
    let head = move || {
        let p = params.get();
        view! {
            <h1>"Audit log"</h1>
            <form method="get" action="/audit" class="form" aria-label="Filter the audit log">
                {field("actor", "Actor", "text", p.actor)}
                {field("action", "Action", "text", p.action)}
                {field("target", "Target", "text", p.target)}
                {field("since", "From (UTC)", "datetime-local", p.since)}
                {field("until", "Before (UTC)", "datetime-local", p.until)}
                <button type="submit" data-testid="audit-filter">"Filter"</button>
                <a href="/audit">"Clear"</a>
            </form>
        }
        .into_any()
    };
    view! {
        <Title text="Audit log — Herald"/>
            <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
                {move || {
                    log.get()
                        .map(|r| match r {
                            Ok(Some(v)) => {
                                let older = v.next_before.map(|b| {
                                    let p = params.get();
                                    let mut q: Vec<String> = [("actor", p.actor), ("action", p.action), ("target", p.target), ("since", p.since), ("until", p.until)]
                                        .into_iter()
                                        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", history::urlencode(&v))))
                                        .collect();
                                    q.push(format!("before={b}"));
                                    format!("/audit?{}", q.join("&"))
                                });
                                view! {
                                    <section class="card">
                                    {head()}
                                    <p class="status" data-testid="audit-chain">{v.chain}</p>
                                    {view! { <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit">
                                        <thead>
                                            <tr>
                                                <th scope="col">"#"</th>
                                                <th scope="col">"Time"</th>
                                                <th scope="col">"Actor"</th>
                                                <th scope="col">"Action"</th>
                                                <th scope="col">"Target"</th>
                                                <th scope="col">"Changes"</th>
                                            </tr>
                                        </thead>
                                        <tbody>
                                            {v
                                                .rows
                                                .into_iter()
                                                .map(|r| {
                                                    let changed = r.changes.iter().filter(|(t, _)| t != " ").count();
                                                    view! {
                                                        <tr data-testid="audit-row">
                                                            <td>{r.seq}</td>
                                                            <td>{r.at}</td>
                                                            <td>{r.actor}</td>
                                                            <td>{r.action}</td>
                                                            <td>{r.target}</td>
                                                            <td>
                                                                {(!r.changes.is_empty()).then(|| view! {
                                                                    <details>
                                                                        <summary>{format!("{changed} changed line(s)")}</summary>
                                                                        <pre class="diff" tabindex="0" data-testid="audit-diff">
                                                                            {r.changes.into_iter().map(|(t, l)| {
                                                                                let class = match t.as_str() { "+" => "add", "-" => "del", _ => "same" };
                                                                                view! { <span class=class>{format!("{t} {l}\n")}</span> }
                                                                            }).collect_view()}
                                                                        </pre>
                                                                    </details>
                                                                })}
                                                            </td>
                                                        </tr>
                                                    }
                                                })
                                                .collect_view()}
                                        </tbody>
                                    </table></div> }.into_any()}
                                    <nav class="pager" aria-label="Pages">
                                        {older.map(|h| view! { <a href=h data-testid="audit-older">"Older →"</a> })}
                                    </nav>
                                    </section>
                                }
                                    .into_any()
                            }
                            Ok(None) => view! { <NotFound/> }.into_any(),
                            Err(e) => view! { <section class="card">{head()}<p class="error" role="alert">{clean(e)}</p></section> }.into_any(),
                        })
                }}
            </Suspense>
    }
}

/// An API key as the console lists it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub scopes: String,
    pub state: String,
    pub last_used: String,
}

/// The session's user, put on the request by the server's login gate (never anything
/// the browser says).
#[cfg(feature = "ssr")]
fn session_user() -> Option<herald_core::identity::SessionUser> {
    use_context::<http::request::Parts>()?.extensions.get::<herald_core::identity::SessionUser>().cloned()
}

/// The console's database pool (provided by the server with the routes).
#[cfg(feature = "ssr")]
fn db() -> Result<sqlx::PgPool, ServerFnError> {
    use_context::<sqlx::PgPool>().ok_or_else(|| ServerFnError::new("the console has no database"))
}

/// The API's state (secret key, SSRF guard, processor, configuration, metrics), which the
/// server provides with the routes.
#[cfg(feature = "ssr")]
fn state() -> Result<herald_core::api::AppState, ServerFnError> {
    use_context::<herald_core::api::AppState>().ok_or_else(|| ServerFnError::new("the console has no server state"))
}

/// The caller as the domain layer's `Principal`, from the gate's session user.
#[cfg(feature = "ssr")]
fn principal() -> Result<herald_core::apikeys::Principal, ServerFnError> {
    let parts = use_context::<http::request::Parts>();
    let user = session_user().ok_or_else(|| ServerFnError::new("log in first"))?;
    let request_id = parts.as_ref().and_then(|p| p.headers.get("x-request-id")).and_then(|v| v.to_str().ok());
    let source = parts
        .as_ref()
        .and_then(|p| p.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>())
        .map(|c| c.0.ip().to_string());
    Ok(user.principal(herald_core::access::request_id(request_id), source))
}

/// What a page shows of an operation the access policy may refuse: `None` (the page
/// says "Page not found") for what the caller may not see or do, the result otherwise.
#[cfg(feature = "ssr")]
fn allowed<T>(r: Result<T, herald_core::error::Error>) -> Result<Option<T>, ServerFnError> {
    use herald_core::error::Error;
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::Forbidden(_) | Error::NotFound) => Ok(None),
        Err(e) => Err(readable(e)),
    }
}

/// A domain error as a person reads it (internal causes stay in the log).
#[cfg(feature = "ssr")]
fn readable(e: herald_core::error::Error) -> ServerFnError {
    match e {
        herald_core::error::Error::Internal(cause) => {
            leptos::logging::error!("internal error in the console: {cause:#}");
            ServerFnError::new("something went wrong on the server; it has been logged")
        }
        other => ServerFnError::new(other.to_string()),
    }
}

/// The caller's API keys (an admin: everyone's).
#[server(prefix = "/console/fn", endpoint = "keys/list")]
pub async fn list_keys() -> Result<Vec<KeyRow>, ServerFnError> {
    let who = principal()?;
    let db = db()?;
    let keys = herald_core::apikeys::list(&db, &who).await.map_err(readable)?;
    Ok(keys
        .into_iter()
        .map(|k| KeyRow {
            id: k.id.to_string(),
            name: k.name,
            owner: k.owner,
            scopes: k.scopes.join(", "),
            state: if k.revoked_at.is_some() { "revoked".into() } else { "active".into() },
            last_used: k
                .last_used_at
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_else(|| "never".into()),
        })
        .collect())
}

/// Creates a key (an owner: for themselves, within their scopes). Returns the secret,
/// shown once.
#[server(prefix = "/console/fn", endpoint = "keys/create")]
pub async fn create_key(
    name: String,
    scopes: String,
    #[server(default)] owner: String,
) -> Result<String, ServerFnError> {
    let who = principal()?;
    let db = db()?;
    let scopes: Vec<String> =
        scopes.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let owner = Some(owner.trim().to_owned()).filter(|o| !o.is_empty());
    let new = herald_core::apikeys::NewKey { name, scopes, owner, rate_limit: None, addressable_owners: None };
    let rate = state()?.config.api_rate_limit;
    let created = herald_core::apikeys::create(&db, &who, new, None, rate).await.map_err(readable)?;
    Ok(created.secret)
}

/// Revokes one of the caller's keys (an admin: any).
#[server(prefix = "/console/fn", endpoint = "keys/revoke")]
pub async fn revoke_key(id: String) -> Result<(), ServerFnError> {
    let who = principal()?;
    let db = db()?;
    let id = id.parse().map_err(|_| ServerFnError::new("no such key"))?;
    herald_core::apikeys::revoke(&db, &who, id).await.map_err(readable)
}

/// API keys: the caller's (an admin: everyone's), create one, revoke one.
#[component]
fn KeysPage() -> impl IntoView {
    let create = ServerAction::<CreateKey>::new();
    let revoke = ServerAction::<RevokeKey>::new();
    let keys = Resource::new(move || (create.version().get(), revoke.version().get()), |_| list_keys());
    // Effects run only in the browser: the marker says the page is interactive.
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    view! {
        <Title text="API keys — Herald"/>
        <section class="card">
            <h1>"API keys"</h1>
            {move || hydrated.get().then(|| view! { <span data-testid="keys-ready" hidden=true></span> })}
            <ActionForm action=create>
                <div class="form">
                    <label>"Name" <input type="text" name="name" required data-testid="key-name"/></label>
                    <label>
                        "Scopes (comma-separated)"
                        <input type="text" name="scopes" value="notifications:write, notifications:read" data-testid="key-scopes"/>
                    </label>
                    <Suspense fallback=|| ()>
                        {move || me_now().filter(|m| m.all_owners).map(|_| view! {
                            <label>"Owner (empty: yours)" <input type="text" name="owner" data-testid="key-owner"/></label>
                        })}
                    </Suspense>
                    <button type="submit" data-testid="key-create">"Create key"</button>
                </div>
            </ActionForm>
            {move || {
                create
                    .value()
                    .get()
                    .map(|r| match r {
                        Ok(secret) => {
                            view! {
                                <p class="secret">
                                    "Store this key now; it is not shown again: "
                                    <code data-testid="new-key">{secret}</code>
                                </p>
                            }
                                .into_any()
                        }
                        Err(e) => view! { <p class="error" role="alert" data-testid="key-error">{clean(e)}</p> }.into_any(),
                    })
            }}
        </section>
        <section class="card">
            <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
                {move || {
                    keys.get()
                        .map(|r| match r {
                            Ok(rows) if rows.is_empty() => view! {
                                <p class="empty" data-testid="keys-empty">"No API keys yet — create one above to call the API from code."</p>
                            }.into_any(),
                            Ok(rows) => {
                                view! {
                                    <h2>"Keys"</h2>
                                    <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit">
                                        <thead>
                                            <tr>
                                                <th scope="col">"Name"</th>
                                                <th scope="col">"Owner"</th>
                                                <th scope="col">"Scopes"</th>
                                                <th scope="col">"State"</th>
                                                <th scope="col">"Last used"</th>
                                                <th scope="col"><span class="sr-only">"Actions"</span></th>
                                            </tr>
                                        </thead>
                                        <tbody>
                                            {rows
                                                .into_iter()
                                                .map(|k| {
                                                    let active = k.state == "active";
                                                    let id = k.id.clone();
                                                    view! {
                                                        <tr data-testid="key-row">
                                                            <td>{k.name}</td>
                                                            <td>{k.owner}</td>
                                                            <td>{k.scopes}</td>
                                                            <td data-testid="key-state">{k.state}</td>
                                                            <td>{k.last_used}</td>
                                                            <td>
                                                                {active
                                                                    .then(|| {
                                                                        view! {
                                                                            <ActionForm action=revoke>
                                                                                <input type="hidden" name="id" value=id/>
                                                                                <button type="submit" data-testid="key-revoke">
                                                                                    "Revoke"
                                                                                </button>
                                                                            </ActionForm>
                                                                        }
                                                                    })}
                                                            </td>
                                                        </tr>
                                                    }
                                                })
                                                .collect_view()}
                                        </tbody>
                                    </table></div>
                                }
                                    .into_any()
                            }
                            Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
                        })
                }}
            </Suspense>
        </section>
    }
}

/// A server function's error without its framework prefix.
pub(crate) fn clean(e: ServerFnError) -> String {
    let s = e.to_string();
    s.split_once(": ").map(|(_, rest)| rest.to_owned()).unwrap_or(s)
}

/// The logged-in user, read once per page load and shared by the top bar, the
/// navigation and the pages that adapt to what the caller may do.
pub(crate) type MeResource = OnceResource<Result<Option<Me>, ServerFnError>>;

/// The logged-in user from the page's context (`None` while loading or without login).
pub(crate) fn me_now() -> Option<Me> {
    use_context::<MeResource>().and_then(|r| r.get()).and_then(|r| r.ok()).flatten()
}

/// The signed-in user and the logout button, in the top bar.
#[component]
fn UserBox() -> impl IntoView {
    let me = expect_context::<MeResource>();
    view! {
        <Suspense fallback=|| ()>
            {move || {
                me.get()
                    .map(|r| match r {
                        Ok(Some(m)) => {
                            view! {
                                <div class="user">
                                    <span class="who" data-testid="user-name">{m.name}</span>
                                    <span class="role" data-testid="user-role">{m.role}</span>
                                    <form method="post" action="/auth/logout">
                                        <button data-testid="logout" type="submit">"Log out"</button>
                                    </form>
                                </div>
                            }
                                .into_any()
                        }
                        _ => ().into_any(),
                    })
            }}
        </Suspense>
    }
}

/// The console's sections and their pages (`page` as `Me::pages` names it; "" is home,
/// shown to everyone logged in).
const SECTIONS: &[(&str, &[(&str, &str)])] = &[
    ("Overview", &[("", "Home"), ("dashboard", "Dashboard")]),
    ("Messages", &[("notifications", "Notifications"), ("suppressions", "Suppressions")]),
    ("Catalog", &[("catalog", "Event catalog"), ("event-types", "Event types"), ("templates", "Templates")]),
    ("Webhooks", &[("endpoints", "Endpoints"), ("portal-links", "Portal links")]),
    ("Access", &[("keys", "API keys")]),
    ("Audit", &[("audit", "Audit log")]),
];

/// The navigation, grouped by section, showing only the pages the access policy lets
/// the caller use (a display hint: every page and server function asks again).
#[component]
fn Sidebar() -> impl IntoView {
    let me = expect_context::<MeResource>();
    let location = leptos_router::hooks::use_location();
    view! {
        <Suspense fallback=|| ()>
            {move || {
                me.get().and_then(|r| r.ok()).flatten().map(|m| {
                    let sections = SECTIONS
                        .iter()
                        .filter_map(|(title, pages)| {
                            let links: Vec<_> = pages
                                .iter()
                                .filter(|(p, _)| p.is_empty() || m.pages.iter().any(|q| q == p))
                                .map(|(p, label)| {
                                    let href = format!("/{p}");
                                    let here = href.clone();
                                    let current = move || {
                                        let path = location.pathname.get();
                                        let on = if here == "/" { path == "/" } else { path == here || path.starts_with(&format!("{here}/")) };
                                        on.then_some("page")
                                    };
                                    let testid = if p.is_empty() { "nav-home".to_owned() } else { format!("nav-{p}") };
                                    view! { <li><a href=href aria-current=current data-testid=testid>{*label}</a></li> }
                                })
                                .collect();
                            (!links.is_empty()).then(|| view! {
                                <div class="section">
                                    <h2 class="section-title">{*title}</h2>
                                    <ul>{links}</ul>
                                </div>
                            })
                        })
                        .collect_view();
                    view! { <nav class="sidebar" aria-label="Console">{sections}</nav> }
                })
            }}
        </Suspense>
    }
}

/// "Page not found", answered with status 404: the console's routes render on the
/// server before the headers go out (`SsrMode::Async`), so the status is the truth.
#[component]
pub(crate) fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(r) = use_context::<leptos_axum::ResponseOptions>() {
        r.set_status(http::StatusCode::NOT_FOUND);
    }
    view! {
        <Title text="Page not found — Herald"/>
        <section class="card" data-testid="not-found">
            <h1>"Page not found"</h1>
            <p>"There is nothing here, or nothing you may see. " <a href="/">"Go to the start page"</a></p>
        </section>
    }
}

/// Keeps part of a page live: listens to `url` (server-sent events, behind the login
/// and the access policy) and calls `on_change` when the server says what the page
/// shows changed, or when it reconnected after a pause. Shows its connection state;
/// closes while the tab is hidden and reopens (and refreshes) when it is shown again.
#[component]
pub(crate) fn Live(url: String, on_change: Callback<()>) -> impl IntoView {
    let state = RwSignal::new("connecting");
    #[cfg(feature = "hydrate")]
    Effect::new({
        let url = url.clone();
        move |_| live::follow(url.clone(), state, on_change)
    });
    #[cfg(not(feature = "hydrate"))]
    let _ = (url, on_change);
    let label = move || match state.get() {
        "live" => "Live: changes appear as they happen",
        "paused" => "Paused while this tab is hidden",
        "reconnecting" => "Connection lost; reconnecting…",
        "ended" => "Live updates ended; reload the page",
        _ => "Connecting to live updates…",
    };
    view! {
        <p class="live" role="status" data-testid="live-state" data-state=move || state.get()>
            <span class="dot" aria-hidden="true"></span>
            {label}
        </p>
    }
}

#[cfg(feature = "hydrate")]
mod live {
    use std::cell::RefCell;
    use std::rc::Rc;

    use leptos::prelude::*;
    use send_wrapper::SendWrapper;
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::JsCast;
    use web_sys::{EventSource, VisibilityState};

    type Handler = Closure<dyn FnMut(web_sys::Event)>;

    struct Feed {
        url: String,
        state: RwSignal<&'static str>,
        on_change: Callback<()>,
        source: Option<EventSource>,
        handlers: Vec<Handler>,
        /// Connections opened so far (a reconnection refreshes the page).
        opened: u32,
    }

    impl Feed {
        fn open(this: &Rc<RefCell<Feed>>) {
            let mut f = this.borrow_mut();
            if f.source.is_some() {
                return;
            }
            let Ok(es) = EventSource::new(&f.url) else {
                f.state.set("ended");
                return;
            };
            f.state.set("connecting");
            let (state, on_change) = (f.state, f.on_change);
            let weak = Rc::downgrade(this);
            let ready: Handler = Closure::new(move |_| {
                state.set("live");
                if let Some(t) = weak.upgrade() {
                    let mut f = t.borrow_mut();
                    f.opened += 1;
                    if f.opened > 1 {
                        drop(f);
                        on_change.run(());
                    }
                }
            });
            let change: Handler = Closure::new(move |_| on_change.run(()));
            let weak = Rc::downgrade(this);
            let gone: Handler = Closure::new(move |_| {
                if let Some(t) = weak.upgrade() {
                    t.borrow_mut().close();
                }
                state.set("ended");
                on_change.run(());
            });
            let error: Handler = Closure::new({
                let es = es.clone();
                move |_| state.set(if es.ready_state() == EventSource::CLOSED { "ended" } else { "reconnecting" })
            });
            let _ = es.add_event_listener_with_callback("ready", ready.as_ref().unchecked_ref());
            let _ = es.add_event_listener_with_callback("change", change.as_ref().unchecked_ref());
            let _ = es.add_event_listener_with_callback("gone", gone.as_ref().unchecked_ref());
            es.set_onerror(Some(error.as_ref().unchecked_ref()));
            f.handlers = vec![ready, change, gone, error];
            f.source = Some(es);
        }

        /// Closes the connection. Its handlers stay until the next `open` or the end:
        /// one of them may be the caller.
        fn close(&mut self) {
            if let Some(es) = self.source.take() {
                es.set_onerror(None);
                es.close();
            }
        }
    }

    /// Follows `url` until the owning view is cleaned up.
    pub fn follow(url: String, state: RwSignal<&'static str>, on_change: Callback<()>) {
        let feed = Rc::new(RefCell::new(Feed { url, state, on_change, source: None, handlers: Vec::new(), opened: 0 }));
        let doc = document();
        let visible = || document().visibility_state() == VisibilityState::Visible;
        if visible() {
            Feed::open(&feed);
        } else {
            state.set("paused");
        }
        let on_visibility: Handler = Closure::new({
            let feed = feed.clone();
            move |_| {
                if visible() {
                    Feed::open(&feed);
                } else {
                    feed.borrow_mut().close();
                    feed.borrow().state.set("paused");
                }
            }
        });
        let _ = doc.add_event_listener_with_callback("visibilitychange", on_visibility.as_ref().unchecked_ref());
        let keep = SendWrapper::new((feed, on_visibility));
        on_cleanup(move || {
            let (feed, on_visibility) = keep.take();
            let _ = document()
                .remove_event_listener_with_callback("visibilitychange", on_visibility.as_ref().unchecked_ref());
            let mut f = feed.borrow_mut();
            f.close();
            f.handlers.clear();
        });
    }
}

/// The document around the console. `stylesheet` is the (content-hashed) address of
/// the console's CSS, which the server knows from the assets it embeds.
pub fn shell(options: LeptosOptions, stylesheet: &'static str) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="stylesheet" href=stylesheet/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    let me: MeResource = OnceResource::new(current_user());
    provide_context(me);
    // Effects run only in the browser: the marker says the console is interactive.
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    // Every page renders completely on the server before its headers go out, so a page
    // that finds nothing answers 404 (see `NotFound`).
    view! {
        <Title text="Herald"/>
        <Router>
            <a class="skip" href="#main">"Skip to the content"</a>
            <header class="topbar">
                <a class="brand" href="/">"Herald"</a>
                <span class="tagline">"notification service"</span>
                <UserBox/>
            </header>
            {move || hydrated.get().then(|| view! { <span data-testid="console-ready" hidden=true></span> })}
            <div class="layout">
                <Sidebar/>
                <main id="main" tabindex="-1">
                    <Routes fallback=|| view! { <NotFound/> }>
                        <Route path=StaticSegment("") view=HomePage ssr=SsrMode::Async/>
                        <Route path=StaticSegment("audit") view=AuditPage ssr=SsrMode::Async/>
                        <Route path=StaticSegment("keys") view=KeysPage ssr=SsrMode::Async/>
                        <Route path=StaticSegment("notifications") view=history::HistoryPage ssr=SsrMode::Async/>
                        <Route path=path!("/notifications/:id") view=history::NotificationDetail ssr=SsrMode::Async/>
                        <Route path=StaticSegment("templates") view=templates::TemplatesPage ssr=SsrMode::Async/>
                        <Route path=path!("/templates/:key") view=templates::TemplateEditor ssr=SsrMode::Async/>
                        <Route path=StaticSegment("dashboard") view=dashboard::DashboardPage ssr=SsrMode::Async/>
                        <Route path=StaticSegment("event-types") view=event_types::EventTypesPage ssr=SsrMode::Async/>
                        <Route path=StaticSegment("endpoints") view=endpoints::EndpointsPage ssr=SsrMode::Async/>
                        <Route path=StaticSegment("catalog") view=event_types::CatalogPage ssr=SsrMode::Async/>
                        <Route path=StaticSegment("portal-links") view=portal_links::PortalLinksPage ssr=SsrMode::Async/>
                        <Route path=StaticSegment("suppressions") view=suppressions::SuppressionsPage ssr=SsrMode::Async/>
                        <Route path=path!("/endpoints/:id") view=endpoints::EndpointDetail ssr=SsrMode::Async/>
                        <Route path=path!("/event-types/:name") view=event_types::EventTypeEdit ssr=SsrMode::Async/>
                    </Routes>
                </main>
            </div>
        </Router>
    }
}

/// `/`: an admin's home is the dashboard; an owner's, a start page with their
/// endpoints; without login configured, how to use the API.
#[component]
fn HomePage() -> impl IntoView {
    let me = expect_context::<MeResource>();
    view! {
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || {
                me.get()
                    .map(|r| match r {
                        Ok(Some(m)) if m.pages.iter().any(|p| p == "dashboard") => {
                            view! { <dashboard::DashboardPage/> }.into_any()
                        }
                        Ok(Some(m)) => view! { <OwnerHome me=m/> }.into_any(),
                        Ok(None) => view! { <ApiHome/> }.into_any(),
                        Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
                    })
            }}
        </Suspense>
    }
}

/// An owner's start page: the three first steps and their endpoints.
#[component]
fn OwnerHome(me: Me) -> impl IntoView {
    let may = |p: &str| me.pages.iter().any(|q| q == p);
    let (endpoints_ok, keys_ok) = (may("endpoints"), may("keys"));
    let list = Resource::new(|| (), |_| endpoints::list_endpoints(String::new(), String::new()));
    view! {
        <Title text="Start — Herald"/>
        <section class="card">
            <h1>{format!("Welcome, {}", me.name)}</h1>
            <p>"Herald sends your services' events to your webhook endpoints, signed, with retries. To start:"</p>
            <ol class="steps">
                {endpoints_ok.then(|| view! { <li><a href="/endpoints#register">"Register an endpoint"</a>" — the URL Herald calls, and the events it wants."</li> })}
                <li><a href="/catalog">"Read the event catalog"</a>" — every event type, its schema and an example."</li>
                {keys_ok.then(|| view! { <li><a href="/keys">"Make an API key"</a>" — to manage your endpoints from code."</li> })}
            </ol>
        </section>
        {endpoints_ok.then(|| view! {
            <section class="card">
                <h2>"Your endpoints"</h2>
                <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
                    {move || list.get().map(|r| match r {
                        Ok(Some(rows)) if rows.is_empty() => view! {
                            <p class="empty" data-testid="home-empty">"No endpoints yet — "<a href="/endpoints#register">"register one"</a>"."</p>
                        }.into_any(),
                        Ok(Some(rows)) => view! {
                            <ul class="plain">
                                {rows.into_iter().map(|e| view! {
                                    <li data-testid="home-endpoint">
                                        <span class=format!("pill {}", e.state)>{e.state.clone()}</span>" "
                                        <a href=format!("/endpoints/{}", e.id)>{e.url.clone()}</a>
                                    </li>
                                }).collect_view()}
                            </ul>
                        }.into_any(),
                        Ok(None) => ().into_any(),
                        Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
                    })}
                </Suspense>
            </section>
        })}
    }
}

/// Home without login configured: what Herald is and where to start with the API.
#[component]
fn ApiHome() -> impl IntoView {
    view! {
        <section class="card">
            <h1>"Herald"</h1>
            <p>
                "Herald accepts notifications over "
                <code>"POST /api/v1/notifications"</code>
                ", renders them, stores them in PostgreSQL and delivers them by email and signed webhooks. "
                "The console's pages need login (set " <code>"HERALD_OIDC_ISSUER"</code> ")."
            </p>
            <h2>"Health"</h2>
            <ul>
                <li><a href="/healthz">"/healthz"</a>" — the process is alive"</li>
                <li><a href="/readyz">"/readyz"</a>" — database, bus and SMTP answer"</li>
            </ul>
        </section>
    }
}
