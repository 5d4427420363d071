//! The suppression list (admins): addresses Herald does not email, why and since when;
//! search, suppress an address, remove an entry. Calls `herald_core::suppressions`, as
//! `/api/v1/suppressions` does.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;
use serde::{Deserialize, Serialize};

use crate::{clean, NotFound};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressionRow {
    pub id: String,
    pub address: String,
    pub category: String,
    pub reason: String,
    pub source: String,
    pub detail: String,
    pub since: String,
    pub delivery: Option<String>,
}

/// One page of the list (admins; `None` for anyone else), and the next page's cursor.
#[server(prefix = "/console/fn", endpoint = "suppressions/list")]
pub async fn list_suppressions(
    q: String,
    reason: String,
    before: String,
) -> Result<Option<(Vec<SuppressionRow>, Option<String>)>, ServerFnError> {
    use herald_core::suppressions::{list, ListQuery};
    let who = crate::principal()?;
    let query = ListQuery { q: Some(q), reason: Some(reason), before: before.trim().parse().ok(), limit: Some(50) };
    let Some((rows, next)) = crate::allowed(list(&crate::db()?, &who, &query).await)? else { return Ok(None) };
    Ok(Some((
        rows.into_iter()
            .map(|s| SuppressionRow {
                id: s.id.to_string(),
                address: s.address,
                category: s.category.unwrap_or_else(|| "every category".into()),
                reason: s.reason.replace('_', " "),
                source: s.source.replace('_', " "),
                detail: s.detail.unwrap_or_default(),
                since: s.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                delivery: s.delivery_id.map(|d| d.to_string()),
            })
            .collect(),
        next.map(|n| n.to_string()),
    )))
}

/// Suppresses an address (audited).
#[server(prefix = "/console/fn", endpoint = "suppressions/add")]
pub async fn add_suppression(address: String, category: String, detail: String) -> Result<String, ServerFnError> {
    use herald_core::suppressions::{add, NewSuppression};
    let who = crate::principal()?;
    let new = NewSuppression {
        address,
        category: Some(category).filter(|c| !c.trim().is_empty()),
        detail: Some(detail).filter(|d| !d.trim().is_empty()),
    };
    let s = add(&crate::db()?, &who, new, "console").await.map_err(crate::readable)?;
    Ok(s.address)
}

/// Removes an entry (audited): the address gets email again.
#[server(prefix = "/console/fn", endpoint = "suppressions/remove")]
pub async fn remove_suppression(id: String) -> Result<(), ServerFnError> {
    let who = crate::principal()?;
    let id = id.parse().map_err(|_| ServerFnError::new("no such suppression"))?;
    herald_core::suppressions::remove(&crate::db()?, &who, id).await.map_err(crate::readable)
}

/// `/suppressions`.
#[component]
pub fn SuppressionsPage() -> impl IntoView {
    let query = use_query_map();
    let params = Memo::new(move |_| {
        query.with(|q| {
            (q.get("q").unwrap_or_default(), q.get("reason").unwrap_or_default(), q.get("before").unwrap_or_default())
        })
    });
    let add = ServerAction::<AddSuppression>::new();
    let remove = ServerAction::<RemoveSuppression>::new();
    let rows = Resource::new(
        move || (params.get(), add.version().get(), remove.version().get()),
        |((q, reason, before), _, _)| list_suppressions(q, reason, before),
    );
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    view! {
        <Title text="Suppressions — Herald"/>
        {move || hydrated.get().then(|| view! { <span data-testid="suppressions-ready" hidden=true></span> })}
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || rows.get().map(|r| match r {
                Ok(Some((rows, next))) => {
                    let (q, reason, _) = params.get_untracked();
                    let none = rows.is_empty();
                    let older = next.map(|n| format!("/suppressions?q={}&reason={}&before={n}", urlencode(&q), urlencode(&reason)));
                    view! {
                        <section class="card">
                            <h1>"Suppressions"</h1>
                            <p class="status">"Herald sends no email to these addresses: permanent bounces, complaints and repeated soft bounces stop all mail; an unsubscribe stops its category's (or all) non-transactional mail. Entries stay until removed."</p>
                            <form method="get" action="/suppressions" class="form" role="search">
                                <label>"Address contains" <input type="search" name="q" value=q.clone() data-testid="suppressions-q"/></label>
                                <label>"Reason"
                                    <select name="reason" data-testid="suppressions-reason">
                                        {["", "bounce", "complaint", "unsubscribe", "soft_bounces", "manual"].into_iter().map(|v| {
                                            let label = if v.is_empty() { "any".to_owned() } else { v.replace('_', " ") };
                                            view! { <option value=v selected=reason.as_str() == v>{label}</option> }
                                        }).collect_view()}
                                    </select>
                                </label>
                                <button type="submit" data-testid="suppressions-search">"Search"</button>
                            </form>
                        </section>
                        <section class="card">
                            <h2>"Suppress an address"</h2>
                            <ActionForm action=add>
                                <div class="form">
                                    <label>"Address" <input type="email" name="address" required data-testid="suppress-address"/></label>
                                    <label>"Only this category (empty: every email)" <input type="text" name="category" data-testid="suppress-category"/></label>
                                    <label>"Note" <input type="text" name="detail" data-testid="suppress-detail"/></label>
                                    <button type="submit" data-testid="suppress-add">"Suppress"</button>
                                </div>
                            </ActionForm>
                            {move || add.value().get().map(|r| match r {
                                Ok(a) => view! { <p class="status" role="status" data-testid="suppress-done">{format!("Suppressed {a}.")}</p> }.into_any(),
                                Err(e) => view! { <p class="error" role="alert" data-testid="suppress-error">{clean(e)}</p> }.into_any(),
                            })}
                        </section>
                        <section class="card">
                            <h2>"List"</h2>
                            {none.then(|| view! { <p class="empty" data-testid="suppressions-empty">"No suppressed address matches."</p> })}
                            <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table" hidden=none><table class="audit">
                                <thead><tr>
                                    <th scope="col">"Address"</th><th scope="col">"Category"</th><th scope="col">"Reason"</th>
                                    <th scope="col">"From"</th><th scope="col">"Detail"</th><th scope="col">"Since"</th>
                                    <th scope="col"><span class="sr-only">"Actions"</span></th>
                                </tr></thead>
                                <tbody>
                                    {rows.into_iter().map(|s| view! {
                                        <tr data-testid="suppression-row">
                                            <td data-testid="suppression-address">{s.address}</td><td>{s.category}</td>
                                            <td>{s.reason}</td><td>{s.source}</td><td>{s.detail}</td><td>{s.since}</td>
                                            <td>
                                                <ActionForm action=remove>
                                                    <input type="hidden" name="id" value=s.id/>
                                                    <button type="submit" data-testid="suppression-remove">"Remove"</button>
                                                </ActionForm>
                                            </td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table></div>
                            {older.map(|href| view! {
                                <nav class="pager" aria-label="Pages">
                                    <a href=href data-testid="suppressions-older">"Older"</a>
                                </nav>
                            })}
                            {move || remove.value().get().and_then(|r| r.err()).map(|e| view! { <p class="error" role="alert">{clean(e)}</p> })}
                        </section>
                    }.into_any()
                }
                Ok(None) => view! { <NotFound/> }.into_any(),
                Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
            })}
        </Suspense>
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
