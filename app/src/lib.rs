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
                            view! {
                                <span class="user">
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
