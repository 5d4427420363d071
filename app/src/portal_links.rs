//! Portal links (admins): make a short-lived link that opens the owners' portal for one
//! owner (the URL is shown once), list them, revoke one. Calls
//! `herald_core::identity::portal`, as `/api/v1/portal-links` does.

use leptos::prelude::*;
use leptos_meta::Title;
use serde::{Deserialize, Serialize};

use crate::{clean, NotFound};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRow {
    pub id: String,
    pub owner: String,
    pub created_by: String,
    pub expires: String,
    pub state: String,
}

/// The links (admins; `None` for anyone else).
#[server(prefix = "/console/fn", endpoint = "portal-links/list")]
pub async fn list_links() -> Result<Option<Vec<LinkRow>>, ServerFnError> {
    let who = crate::principal()?;
    let now = chrono::Utc::now();
    let Some(links) = crate::allowed(herald_core::identity::portal::list(&crate::db()?, &who).await)? else {
        return Ok(None);
    };
    Ok(Some(
        links
            .into_iter()
            .map(|l| LinkRow {
                id: l.id.to_string(),
                owner: l.owner,
                created_by: l.created_by,
                expires: l.expires_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                state: match (l.revoked_at, l.expires_at > now) {
                    (Some(_), _) => "revoked".into(),
                    (None, false) => "expired".into(),
                    (None, true) => "active".into(),
                },
            })
            .collect(),
    ))
}

/// Makes a link; returns its URL (shown once).
#[server(prefix = "/console/fn", endpoint = "portal-links/create")]
pub async fn create_link(owner: String, ttl: String) -> Result<String, ServerFnError> {
    let who = crate::principal()?;
    let s = crate::state()?;
    let new = herald_core::identity::portal::NewPortalLink { owner, ttl: Some(ttl).filter(|t| !t.trim().is_empty()) };
    let (_, token) = herald_core::identity::portal::create(&s.db, &who, new).await.map_err(crate::readable)?;
    Ok(herald_core::identity::portal::url(&s.config.public_url, &token))
}

/// Revokes a link.
#[server(prefix = "/console/fn", endpoint = "portal-links/revoke")]
pub async fn revoke_link(id: String) -> Result<(), ServerFnError> {
    let who = crate::principal()?;
    let id = id.parse().map_err(|_| ServerFnError::new("no such link"))?;
    herald_core::identity::portal::revoke(&crate::db()?, &who, id).await.map_err(crate::readable)
}

/// `/portal-links`.
#[component]
pub fn PortalLinksPage() -> impl IntoView {
    let create = ServerAction::<CreateLink>::new();
    let revoke = ServerAction::<RevokeLink>::new();
    let links = Resource::new(move || (create.version().get(), revoke.version().get()), |_| list_links());
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    view! {
        <Title text="Portal links — Herald"/>
        {move || hydrated.get().then(|| view! { <span data-testid="links-ready" hidden=true></span> })}
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || links.get().map(|r| match r {
                Ok(Some(rows)) => { let none = rows.is_empty(); view! {
                    <section class="card">
                        <h1>"Portal links"</h1>
                        <p class="status">"A link opens the owners' portal (endpoints, catalog, keys) for one owner, without an account at the identity provider, until it expires or is revoked."</p>
                        <ActionForm action=create>
                            <div class="form">
                                <label>"Owner (a team or user:<subject>)" <input type="text" name="owner" required data-testid="link-owner"/></label>
                                <label>"Valid for (such as 1h; at most 7d)" <input type="text" name="ttl" value="1h" data-testid="link-ttl"/></label>
                                <button type="submit" data-testid="link-create">"Make a link"</button>
                            </div>
                        </ActionForm>
                        {move || create.value().get().map(|r| match r {
                            Ok(url) => view! {
                                <p class="secret">"Send this link now; it is not shown again: " <code data-testid="link-url">{url}</code></p>
                            }.into_any(),
                            Err(e) => view! { <p class="error" role="alert" data-testid="link-error">{clean(e)}</p> }.into_any(),
                        })}
                    </section>
                    <section class="card">
                        <h2>"Links"</h2>
                        {none.then(|| view! { <p class="empty" data-testid="links-empty">"No portal links yet — make one above and send it to an owner."</p> })}
                        <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table" hidden=none><table class="audit">
                            <thead><tr>
                                <th scope="col">"Owner"</th><th scope="col">"Made by"</th><th scope="col">"Expires"</th>
                                <th scope="col">"State"</th><th scope="col"><span class="sr-only">"Actions"</span></th>
                            </tr></thead>
                            <tbody>
                                {rows.into_iter().map(|l| {
                                    let active = l.state == "active";
                                    let id = l.id.clone();
                                    view! {
                                        <tr data-testid="link-row">
                                            <td>{l.owner}</td><td>{l.created_by}</td><td>{l.expires}</td>
                                            <td data-testid="link-state">{l.state}</td>
                                            <td>{active.then(|| view! {
                                                <ActionForm action=revoke>
                                                    <input type="hidden" name="id" value=id/>
                                                    <button type="submit" data-testid="link-revoke">"Revoke"</button>
                                                </ActionForm>
                                            })}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table></div>
                    </section>
                }.into_any() }
                Ok(None) => view! { <NotFound/> }.into_any(),
                Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
            })}
        </Suspense>
    }
}
