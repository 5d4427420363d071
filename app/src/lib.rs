//! The Herald admin console (Leptos, server-rendered and hydrated).
//!
//! Compiled twice: with `ssr` into the `herald` binary, with `hydrate` into the WASM
//! bundle. Server-only code (database access) stays behind `cfg(feature = "ssr")`;
//! only DTOs cross the wire.

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::StaticSegment;
use serde::{Deserialize, Serialize};

/// Who is logged in, as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    pub name: String,
    pub email: Option<String>,
    pub role: String,
}

/// The logged-in user (`None` when login is not configured). The server's login gate
/// put the session's user on the request; nothing here trusts the browser.
#[server(prefix = "/console/fn", endpoint = "me")]
pub async fn current_user() -> Result<Option<Me>, ServerFnError> {
    use herald_core::identity::SessionUser;
    let user = use_context::<http::request::Parts>().and_then(|p| p.extensions.get::<SessionUser>().cloned());
    Ok(user.map(|u| Me {
        name: u.name.clone().or_else(|| u.email.clone()).unwrap_or_else(|| u.subject.clone()),
        email: u.email.clone(),
        role: u.role().to_owned(),
    }))
}

/// One audit entry as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
}

/// The newest audit entries and the state of the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditView {
    pub chain: String,
    pub rows: Vec<AuditRow>,
}

/// The audit log for admins; `None` for anyone else (the page then says "not found").
/// Authorised here, on the server, from the session user the login gate put on the
/// request.
#[server(prefix = "/console/fn", endpoint = "audit")]
pub async fn audit_log() -> Result<Option<AuditView>, ServerFnError> {
    use herald_core::audit::{self, Filter, Verdict};
    use herald_core::identity::SessionUser;
    let user = use_context::<http::request::Parts>().and_then(|p| p.extensions.get::<SessionUser>().cloned());
    if !user.is_some_and(|u| u.admin) {
        return Ok(None);
    }
    let db = use_context::<sqlx::PgPool>().ok_or_else(|| ServerFnError::new("the console has no database"))?;
    let unreadable = |_| ServerFnError::new("the audit log could not be read; see Herald's log");
    let entries = audit::list(&db, &Filter::default(), 100).await.map_err(unreadable)?;
    let chain = match audit::verify(&db).await.map_err(unreadable)? {
        Verdict::Intact { count, head } => format!(
            "Chain verified: {count} entries, head {}",
            head.map(|h| h.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>()).unwrap_or_default()
        ),
        Verdict::Broken { seq, reason } => format!("Chain broken at entry {seq}: {reason}"),
    };
    let rows = entries
        .into_iter()
        .map(|e| AuditRow {
            seq: e.seq,
            at: e.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            actor: format!("{} {}", e.actor_kind.as_str(), e.actor),
            action: e.action,
            target: format!("{} {}", e.target_kind.unwrap_or_default(), e.target.unwrap_or_default()),
        })
        .collect();
    Ok(Some(AuditView { chain, rows }))
}

/// The audit log page (admins).
#[component]
fn AuditPage() -> impl IntoView {
    let log = OnceResource::new(audit_log());
    view! {
        <Title text="Audit log — Herald"/>
        <section class="card">
            <h1>"Audit log"</h1>
            <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
                {move || {
                    log.get()
                        .map(|r| match r {
                            Ok(Some(v)) => {
                                view! {
                                    <p class="status" data-testid="audit-chain">{v.chain}</p>
                                    <table class="audit">
                                        <thead>
                                            <tr>
                                                <th scope="col">"#"</th>
                                                <th scope="col">"Time"</th>
                                                <th scope="col">"Actor"</th>
                                                <th scope="col">"Action"</th>
                                                <th scope="col">"Target"</th>
                                            </tr>
                                        </thead>
                                        <tbody>
                                            {v
                                                .rows
                                                .into_iter()
                                                .map(|r| {
                                                    view! {
                                                        <tr data-testid="audit-row">
                                                            <td>{r.seq}</td>
                                                            <td>{r.at}</td>
                                                            <td>{r.actor}</td>
                                                            <td>{r.action}</td>
                                                            <td>{r.target}</td>
                                                        </tr>
                                                    }
                                                })
                                                .collect_view()}
                                        </tbody>
                                    </table>
                                }
                                    .into_any()
                            }
                            Ok(None) => view! { <p class="notice" data-testid="not-found">"Page not found."</p> }.into_any(),
                            Err(e) => view! { <p class="notice">{e.to_string()}</p> }.into_any(),
                        })
                }}
            </Suspense>
        </section>
    }
}

/// The signed-in user and the logout button, in the top bar.
#[component]
fn UserBox() -> impl IntoView {
    let me = OnceResource::new(current_user());
    view! {
        <Suspense fallback=|| ()>
            {move || {
                me.get()
                    .map(|r| match r {
                        Ok(Some(m)) => {
                            let admin = m.role == "admin";
                            view! {
                                <span class="user">
                                    <Show when=move || admin>
                                        <a class="nav" href="/audit" data-testid="nav-audit">"Audit log"</a>
                                    </Show>
                                    <span data-testid="user-name">{m.name}</span>
                                    <span class="role" data-testid="user-role">{m.role}</span>
                                    <form method="post" action="/auth/logout">
                                        <button data-testid="logout" type="submit">"Log out"</button>
                                    </form>
                                </span>
                            }
                                .into_any()
                        }
                        _ => ().into_any(),
                    })
            }}
        </Suspense>
    }
}

pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
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
    view! {
        <Stylesheet id="leptos" href="/pkg/herald.css"/>
        <Title text="Herald"/>
        <Router>
            <header class="topbar">
                <span class="brand">"Herald"</span>
                <span class="tagline">"notification service"</span>
                <UserBox/>
            </header>
            <main>
                <Routes fallback=|| view! { <p class="notice">"Page not found."</p> }>
                    <Route path=StaticSegment("") view=HomePage/>
                    <Route path=StaticSegment("audit") view=AuditPage/>
                </Routes>
            </main>
        </Router>
    }
}

/// The console's landing page. The console pages (templates, endpoints, history,
/// audit) arrive with OIDC login; until then this page says how to use the API.
#[component]
fn HomePage() -> impl IntoView {
    // Proves the WASM bundle loaded: the button only reacts once hydrated.
    let hydrated = RwSignal::new(false);
    let clicks = RwSignal::new(0u32);
    Effect::new(move |_| hydrated.set(true));
    view! {
        <section class="card">
            <h1>"Herald console"</h1>
            <p>
                "Herald accepts notifications over "
                <code>"POST /api/v1/notifications"</code>
                ", renders them, stores them in PostgreSQL and delivers them by email."
            </p>
            <p class="status" data-testid="hydration-status">
                {move || if hydrated.get() { "Console is interactive." } else { "Loading console…" }}
            </p>
            <button data-testid="ping" on:click=move |_| clicks.update(|c| *c += 1)>
                "Ping"
            </button>
            <span class="pings" data-testid="ping-count">{move || format!("{} ping(s)", clicks.get())}</span>
        </section>
        <section class="card">
            <h2>"Health"</h2>
            <ul>
                <li><a href="/healthz">"/healthz"</a>" — the process is alive"</li>
                <li><a href="/readyz">"/readyz"</a>" — database, bus and SMTP answer"</li>
            </ul>
        </section>
    }
}
