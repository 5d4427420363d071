//! Webhook endpoints, for admins (every owner's) and for owners (their own: the portal):
//! the list with filters, registering one
//! (event types picked from the catalog, headers, rate limit, retry schedule), and an
//! endpoint's page: edit, enable/disable, reveal and rotate the secret, send a test
//! event, recent deliveries, recover failed deliveries since a time. Every action calls
//! `herald_core::webhooks`, as the API does (same SSRF rules, limits and audit).

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};
use serde::{Deserialize, Serialize};

use crate::{clean, Live, NotFound};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRow {
    pub id: String,
    pub owner: String,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub state: String,
    pub disabled_reason: String,
    pub rate_limit: String,
    pub retry_schedule: String,
    /// `Name: value` lines, values masked.
    pub headers: String,
    /// The transformation script ("" for none).
    pub transformation: String,
    /// OAuth client credentials ("" for none; the secret reads as the mask).
    pub oauth_token_url: String,
    pub oauth_client_id: String,
    pub oauth_client_secret: String,
    pub oauth_scope: String,
}

/// The caller. Every operation below is scoped by the domain: an owner reaches only
/// their own endpoints (another owner's id is "not found"), an admin every owner's.
#[cfg(feature = "ssr")]
fn caller() -> Result<Option<herald_core::apikeys::Principal>, ServerFnError> {
    crate::principal().map(Some)
}

#[cfg(feature = "ssr")]
fn row(e: herald_core::webhooks::endpoints::Endpoint) -> EndpointRow {
    let state = match (e.enabled, e.failing_since) {
        (false, _) => "disabled",
        (true, Some(_)) => "failing",
        (true, None) => "enabled",
    };
    let headers = e
        .headers
        .as_object()
        .map(|m| {
            m.keys().map(|k| format!("{k}: {}", herald_core::webhooks::endpoints::MASK)).collect::<Vec<_>>().join("\n")
        })
        .unwrap_or_default();
    let auth = |k: &str| {
        e.auth.as_ref().and_then(|a| a.get(k)).and_then(|v| v.as_str()).map(str::to_owned).unwrap_or_default()
    };
    EndpointRow {
        id: e.id.to_string(),
        owner: e.owner,
        url: e.url,
        description: e.description,
        event_types: e.event_types,
        state: state.into(),
        disabled_reason: e.disabled_reason.unwrap_or_default(),
        rate_limit: e.rate_limit.map(|r| r.to_string()).unwrap_or_default(),
        retry_schedule: e.retry_schedule.unwrap_or_default(),
        headers,
        transformation: e.transformation.unwrap_or_default(),
        oauth_token_url: auth("token_url"),
        oauth_client_id: auth("client_id"),
        oauth_client_secret: if e.auth.is_some() {
            herald_core::webhooks::endpoints::MASK.into()
        } else {
            String::new()
        },
        oauth_scope: auth("scope"),
    }
}

/// Every owner's endpoints, narrowed by owner and state (admins; `None` for anyone else).
#[server(prefix = "/console/fn", endpoint = "endpoints/list")]
pub async fn list_endpoints(owner: String, state_is: String) -> Result<Option<Vec<EndpointRow>>, ServerFnError> {
    let Some(who) = caller()? else { return Ok(None) };
    let db = crate::db()?;
    let (mut all, mut after) = (Vec::new(), None);
    // Pages of 500 until the end (an admin's view of every owner's endpoints).
    loop {
        let page = herald_core::webhooks::endpoints::list(&db, &who, 500, after).await.map_err(crate::readable)?;
        let done = page.len() < 500;
        after = page.last().map(|e| e.id);
        all.extend(page.into_iter().map(row));
        if done || all.len() >= 10_000 {
            break;
        }
    }
    // The filter names an owner as the API does (a bare name is a team).
    let owner = match owner.trim() {
        "" => String::new(),
        o => herald_core::access::owner_name(o).map_err(crate::readable)?,
    };
    Ok(Some(
        all.into_iter()
            .filter(|e| owner.is_empty() || e.owner == owner)
            .filter(|e| state_is.is_empty() || e.state == state_is)
            .collect(),
    ))
}

/// `Name: value` lines as a header map ("" for none).
#[cfg(feature = "ssr")]
fn header_lines(text: &str) -> Result<std::collections::BTreeMap<String, String>, ServerFnError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| ServerFnError::new(format!("headers: '{l}' is not 'Name: value'")))
        })
        .collect()
}

#[cfg(feature = "ssr")]
fn rate(text: &str) -> Result<Option<i32>, ServerFnError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| ServerFnError::new("rate_limit must be a whole number of requests per second"))
}

/// Registers (`id` empty) or changes an endpoint. Returns its id. (A server function's
/// arguments are its form's fields, one each.)
#[allow(clippy::too_many_arguments)]
#[server(prefix = "/console/fn", endpoint = "endpoints/save")]
pub async fn save_endpoint(
    id: String,
    url: String,
    description: String,
    event_types: String,
    headers: String,
    rate_limit: String,
    retry_schedule: String,
    #[server(default)] transformation: String,
    #[server(default)] oauth_token_url: String,
    #[server(default)] oauth_client_id: String,
    #[server(default)] oauth_client_secret: String,
    #[server(default)] oauth_scope: String,
) -> Result<String, ServerFnError> {
    use herald_core::webhooks::endpoints::{self, EndpointAuth, EndpointPatch, NewEndpoint};
    let auth = (!oauth_token_url.trim().is_empty()).then(|| EndpointAuth::Oauth2 {
        token_url: oauth_token_url.trim().to_owned(),
        client_id: oauth_client_id.trim().to_owned(),
        client_secret: oauth_client_secret,
        scope: Some(oauth_scope.trim().to_owned()).filter(|s| !s.is_empty()),
    });
    let Some(who) = caller()? else { return Err(ServerFnError::new("no such endpoint")) };
    let s = crate::state()?;
    let event_types: Vec<String> =
        event_types.split([',', ' ', '\n']).map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect();
    let event_types = if event_types.is_empty() { vec!["*".to_owned()] } else { event_types };
    let retry = Some(retry_schedule.trim().to_owned()).filter(|r| !r.is_empty());
    let (headers, rate_limit) = (header_lines(&headers)?, rate(&rate_limit)?);
    let transformation = Some(transformation).filter(|t| !t.trim().is_empty());
    if id.is_empty() {
        let new = NewEndpoint {
            url: url.trim().to_owned(),
            event_types,
            description,
            rate_limit,
            headers,
            retry_schedule: retry,
            enabled: true,
            transformation,
            auth,
        };
        let (ep, _secret) =
            endpoints::create(&s.db, &s.config.secret_key, &s.guard, &who, new, s.config.max_endpoints_per_owner)
                .await
                .map_err(crate::readable)?;
        Ok(ep.id.to_string())
    } else {
        let uid = id.parse().map_err(|_| ServerFnError::new("no such endpoint"))?;
        let patch = EndpointPatch {
            url: Some(url.trim().to_owned()),
            event_types: Some(event_types),
            description: Some(description),
            rate_limit: Some(rate_limit),
            headers: Some(headers),
            retry_schedule: Some(retry),
            transformation: Some(transformation),
            auth: Some(auth),
        };
        endpoints::update(&s.db, &s.config.secret_key, &s.guard, &who, uid, patch).await.map_err(crate::readable)?;
        Ok(id)
    }
}

/// Runs a transformation script on the sample event, as an attempt would (nothing is
/// saved or sent). Returns what it made, as text.
#[server(prefix = "/console/fn", endpoint = "endpoints/transformation")]
pub async fn test_transformation(script: String) -> Result<String, ServerFnError> {
    use herald_core::webhooks::transformations::{self, Trial};
    let Some(who) = caller()? else { return Err(ServerFnError::new("no such endpoint")) };
    let s = crate::state()?;
    let r = transformations::trial(&who, &s.guard, Trial { script, webhook: None }).await.map_err(crate::readable)?;
    Ok(match (r.outcome.as_str(), r.webhook, r.error) {
        ("send", Some(w), _) => format!(
            "Sent to {} ({} ms)\nHeaders: {}\nBody: {}",
            w.url,
            r.duration_ms,
            serde_json::to_string(&w.headers).unwrap_or_default(),
            serde_json::to_string_pretty(&w.payload).unwrap_or_default()
        ),
        ("cancel", ..) => format!("Cancelled: nothing would be sent ({} ms)", r.duration_ms),
        (_, _, e) => format!("Error: {}", e.unwrap_or_default()),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryLine {
    pub id: String,
    pub notification: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub at: String,
    pub last_error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPage {
    pub endpoint: EndpointRow,
    /// The caller is an admin (notification pages are theirs to open).
    pub admin: bool,
}

/// An endpoint's recent deliveries, and the attempts of the one asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryLine>,
    /// The attempts of the delivery asked for (`?delivery=`).
    pub attempts: Option<(String, Vec<crate::history::AttemptRow>)>,
}

/// The endpoint page's delivery filters and the delivery whose attempts are open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryParams {
    pub status: String,
    pub event_type: String,
    pub since: String,
    pub until: String,
    pub delivery: String,
}

/// One endpoint (`None` for one the caller may not see, and for an unknown id).
#[server(prefix = "/console/fn", endpoint = "endpoints/get")]
pub async fn endpoint(id: String) -> Result<Option<EndpointPage>, ServerFnError> {
    let Some(who) = caller()? else { return Ok(None) };
    let Ok(uid) = id.parse() else { return Ok(None) };
    let db = crate::db()?;
    let Some(ep) = crate::allowed(herald_core::webhooks::endpoints::get(&db, &who, uid).await)? else {
        return Ok(None);
    };
    Ok(Some(EndpointPage { endpoint: row(ep), admin: who.is_admin() }))
}

/// An endpoint's recent deliveries, filtered, with one delivery's attempts (`None` for
/// an endpoint the caller may not see).
#[server(prefix = "/console/fn", endpoint = "endpoints/deliveries")]
pub async fn endpoint_deliveries(
    id: String,
    #[server(default)] q: DeliveryParams,
) -> Result<Option<DeliveryList>, ServerFnError> {
    let Some(who) = caller()? else { return Ok(None) };
    let Ok(uid) = id.parse() else { return Ok(None) };
    let db = crate::db()?;
    let time = |name: &str, v: &str| herald_core::model::parse_time(name, v).map_err(crate::readable);
    let filter = herald_core::webhooks::deliveries::DeliveryFilter {
        status: match q.status.trim() {
            "" => None,
            s => Some(s.parse().map_err(|e: String| ServerFnError::new(format!("status: {e}")))?),
        },
        event_type: Some(q.event_type.trim().to_owned()).filter(|e| !e.is_empty() && !e.contains('\0')),
        since: time("since", &q.since)?,
        until: time("until", &q.until)?,
    };
    let Some(found) = crate::allowed(herald_core::webhooks::deliveries::deliveries(&db, &who, uid, &filter, 50).await)?
    else {
        return Ok(None);
    };
    let attempts = match q.delivery.trim().parse() {
        Err(_) => None,
        Ok(d) => crate::allowed(herald_core::webhooks::deliveries::delivery(&db, &who, uid, d).await)?
            .map(|(_, attempts)| (d.to_string(), attempts.into_iter().map(crate::history::AttemptRow::from).collect())),
    };
    let deliveries = found
        .into_iter()
        .map(|d| DeliveryLine {
            id: d.id.to_string(),
            notification: d.notification_id.to_string(),
            event_type: d.event_type,
            status: d.status.to_string(),
            attempts: d.attempt_count,
            at: d.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            last_error: d.last_error.unwrap_or_default(),
        })
        .collect();
    Ok(Some(DeliveryList { deliveries, attempts }))
}

/// One of an endpoint's actions: `enable`, `disable`, `reveal`, `rotate` (with `grace`),
/// `test`, `recover` (with `since`), `resend` (with `delivery`), `delete` (with
/// `confirm=delete`). Returns what to tell the user.
#[server(prefix = "/console/fn", endpoint = "endpoints/act")]
pub async fn endpoint_action(
    id: String,
    action: String,
    #[server(default)] grace: String,
    #[server(default)] since: String,
    #[server(default)] delivery: String,
    #[server(default)] confirm: String,
) -> Result<String, ServerFnError> {
    use herald_core::webhooks::{deliveries, endpoints, lifecycle, signing};
    let not_found = || ServerFnError::new("no such endpoint");
    let Some(who) = caller()? else { return Err(not_found()) };
    let uid = id.parse().map_err(|_| not_found())?;
    let s = crate::state()?;
    let e = crate::readable;
    Ok(match action.as_str() {
        "enable" | "disable" => {
            endpoints::set_enabled(&s.db, &who, uid, action == "enable").await.map_err(e)?;
            format!("Endpoint {action}d.")
        }
        "reveal" => {
            format!("Signing secret: {}", signing::secret(&s.db, &s.config.secret_key, &who, uid).await.map_err(e)?)
        }
        "rotate" => {
            let grace = signing::grace(Some(&grace), s.config.webhook.secret_grace).map_err(e)?;
            let key = signing::rotate(&s.db, &s.config.secret_key, &who, uid, grace).await.map_err(e)?;
            format!("New signing secret: {key} (the old one keeps signing for {})", humantime_secs(grace.as_secs()))
        }
        "test" => {
            let accepted = lifecycle::send_test(&s.db, &s.processor, &who, uid).await.map_err(e)?;
            format!("Test event sent (notification {}).", accepted.id)
        }
        "recover" => {
            let since = herald_core::model::parse_time("since", &since)
                .map_err(e)?
                .ok_or_else(|| ServerFnError::new("since: give the time to recover from"))?;
            let ids = deliveries::recover(&s.db, &who, uid, since).await.map_err(e)?;
            format!("{} failed deliveries queued again.", ids.len())
        }
        "resend" => {
            let d = delivery.parse().map_err(|_| ServerFnError::new("no such delivery"))?;
            deliveries::resend(&s.db, &who, uid, d).await.map_err(e)?;
            "The delivery is queued again.".into()
        }
        "delete" => {
            if confirm != "delete" {
                return Err(ServerFnError::new("tick the box to confirm the deletion"));
            }
            endpoints::delete(&s.db, &who, uid).await.map_err(e)?;
            "Endpoint deleted.".into()
        }
        _ => return Err(ServerFnError::new("unknown action")),
    })
}

#[cfg(feature = "ssr")]
fn humantime_secs(s: u64) -> String {
    match s {
        0 => "no time".into(),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// `/endpoints`.
#[component]
pub fn EndpointsPage() -> impl IntoView {
    let query = use_query_map();
    let filter =
        Memo::new(move |_| query.with(|q| (q.get("owner").unwrap_or_default(), q.get("state").unwrap_or_default())));
    let save = ServerAction::<SaveEndpoint>::new();
    let list = Resource::new(move || (filter.get(), save.version().get()), |((o, s), _)| list_endpoints(o, s));
    view! {
        <Title text="Endpoints — Herald"/>
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || {
                list.get()
                    .map(|r| match r {
                        Ok(Some(rows)) => {
                            let (owner, state_is) = filter.get();
                            let all = crate::me_now().is_some_and(|m| m.all_owners);
                            let filtered = !owner.is_empty() || !state_is.is_empty();
                            view! {
                                <section class="card">
                                    <h1>"Webhook endpoints"</h1>
                                    <form method="get" action="/endpoints" class="form" aria-label="Filter endpoints">
                                        {all.then(|| view! {
                                            <label for="ep-owner">"Owner" <input id="ep-owner" type="text" name="owner" value=owner.clone()/></label>
                                        })}
                                        <label for="ep-state">
                                            "State"
                                            <select id="ep-state" name="state">
                                                {["", "enabled", "failing", "disabled"].into_iter().map(|s| view! {
                                                    <option value=s selected=state_is == s>{if s.is_empty() { "any" } else { s }}</option>
                                                }).collect_view()}
                                            </select>
                                        </label>
                                        <button type="submit">"Filter"</button>
                                    </form>
                                    {if rows.is_empty() && filtered {
                                        view! { <p class="empty" data-testid="endpoints-empty">"No endpoints match these filters. " <a href="/endpoints">"Show all"</a></p> }.into_any()
                                    } else if rows.is_empty() {
                                        view! { <p class="empty" data-testid="endpoints-empty">"No endpoints yet — " <a href="#register">"register one"</a> "."</p> }.into_any()
                                    } else {
                                        view! {
                                            <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit">
                                                <thead>
                                                    <tr>
                                                        <th scope="col">"URL"</th>
                                                        {all.then(|| view! { <th scope="col">"Owner"</th> })}
                                                        <th scope="col">"Event types"</th>
                                                        <th scope="col">"State"</th>
                                                    </tr>
                                                </thead>
                                                <tbody>
                                                    {rows.into_iter().map(|e| view! {
                                                        <tr data-testid="endpoint-row">
                                                            <td class="wrap"><a href=format!("/endpoints/{}", e.id)>{e.url.clone()}</a></td>
                                                            {all.then(|| view! { <td>{e.owner.clone()}</td> })}
                                                            <td>{e.event_types.join(", ")}</td>
                                                            <td><span class=format!("pill {}", e.state)>{e.state.clone()}</span></td>
                                                        </tr>
                                                    }).collect_view()}
                                                </tbody>
                                            </table></div>
                                        }.into_any()
                                    }}
                                </section>
                                <section class="card" id="register">
                                    <h2>"Register an endpoint"</h2>
                                    <EndpointForm e=EndpointRow::default() save/>
                                </section>
                            }
                                .into_any()
                        }
                        Ok(None) => view! { <NotFound/> }.into_any(),
                        Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
                    })
            }}
        </Suspense>
    }
}

/// The register/edit form; event types are checkboxes from the catalog.
#[component]
fn EndpointForm(e: EndpointRow, save: ServerAction<SaveEndpoint>) -> impl IntoView {
    let editing = !e.id.is_empty();
    let types = OnceResource::new(crate::event_types::catalog());
    let picked = RwSignal::new(e.event_types.clone());
    let split = |v: &str| v.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect::<Vec<_>>();
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    let script = RwSignal::new(e.transformation.clone());
    let trial = ServerAction::<TestTransformation>::new();
    view! {
        {move || hydrated.get().then(|| view! { <span data-testid="endpoint-form-ready" hidden=true></span> })}
        <ActionForm action=save>
            <input type="hidden" name="id" value=e.id.clone()/>
            <div class="form column">
                <label>"URL" <input type="url" name="url" value=e.url.clone() required data-testid="ep-url"/></label>
                <label>"Description" <input type="text" name="description" value=e.description.clone() data-testid="ep-description"/></label>
                <label>
                    "Event types (comma-separated; * for all; tick them below)"
                    <input type="text" name="event_types" prop:value=move || picked.get().join(", ")
                        on:input=move |ev| picked.set(split(&event_target_value(&ev))) data-testid="ep-types"/>
                </label>
                <fieldset class="checks">
                    <legend>"The catalog"</legend>
                    <Suspense fallback=|| ()>
                        {move || {
                            types.get().and_then(|r| r.ok()).flatten().map(|rows| {
                                std::iter::once("*".to_owned()).chain(rows.into_iter().map(|t| t.name)).map(|name| {
                                    let (n1, n2) = (name.clone(), name.clone());
                                    view! {
                                        <label class="check">
                                            <input type="checkbox" prop:checked=move || picked.with(|p| p.contains(&n1))
                                                on:change=move |ev| {
                                                    let on = event_target_checked(&ev);
                                                    picked.update(|p| {
                                                        p.retain(|t| *t != n2);
                                                        if on { p.push(n2.clone()); }
                                                    });
                                                }
                                                data-testid=format!("ep-type-{name}")/>
                                            {name.clone()}
                                        </label>
                                    }
                                }).collect_view()
                            })
                        }}
                    </Suspense>
                </fieldset>
                <label>
                    "Custom headers ('Name: value' per line; a masked value keeps the stored one)"
                    <textarea name="headers" rows="3" data-testid="ep-headers">{e.headers.clone()}</textarea>
                </label>
                <label>"Rate limit (requests per second; empty: none)" <input type="text" inputmode="numeric" name="rate_limit" value=e.rate_limit.clone() data-testid="ep-rate"/></label>
                <label>"Retry schedule (such as 5s, 1m, 10m; empty: the default)" <input type="text" name="retry_schedule" value=e.retry_schedule.clone() data-testid="ep-retry"/></label>
                <label>
                    "Transformation (optional JavaScript: function handler(webhook) returns the webhook changed — payload, url, headers — or with cancel: true)"
                    <textarea name="transformation" rows="6" spellcheck="false" data-testid="ep-transformation"
                        on:input=move |ev| script.set(event_target_value(&ev))>{e.transformation.clone()}</textarea>
                </label>
                <fieldset class="column">
                    <legend>"OAuth 2.0 client credentials (optional: Herald sends a bearer token it fetches from the token URL)"</legend>
                    <label>"Token URL" <input type="url" name="oauth_token_url" value=e.oauth_token_url.clone() data-testid="ep-oauth-url"/></label>
                    <label>"Client id" <input type="text" name="oauth_client_id" value=e.oauth_client_id.clone() autocomplete="off" data-testid="ep-oauth-id"/></label>
                    <label>"Client secret (a masked value keeps the stored one)" <input type="password" name="oauth_client_secret" value=e.oauth_client_secret.clone() autocomplete="new-password" data-testid="ep-oauth-secret"/></label>
                    <label>"Scope (optional)" <input type="text" name="oauth_scope" value=e.oauth_scope.clone() data-testid="ep-oauth-scope"/></label>
                </fieldset>
                <button type="submit" data-testid="ep-save">{if editing { "Save" } else { "Register" }}</button>
            </div>
        </ActionForm>
        <ActionForm action=trial>
            <input type="hidden" name="script" prop:value=move || script.get()/>
            <button type="submit" data-testid="ep-transformation-test">"Test the transformation on a sample event"</button>
        </ActionForm>
        {move || trial.value().get().map(|r| match r {
            Ok(text) => view! { <pre class="status" role="status" data-testid="ep-transformation-result">{text}</pre> }.into_any(),
            Err(e) => view! { <p class="error" role="alert" data-testid="ep-transformation-result">{clean(e)}</p> }.into_any(),
        })}
        {move || save.value().get().map(|r| match r {
            Ok(id) => view! {
                <p class="status" role="status">"Saved. " <a href=format!("/endpoints/{id}") data-testid="ep-saved">"Open the endpoint"</a></p>
            }.into_any(),
            Err(e) => view! { <p class="error" role="alert" data-testid="ep-error">{clean(e)}</p> }.into_any(),
        })}
    }
}

const SNIPPET_PY: &str = r#"from standardwebhooks.webhooks import Webhook

wh = Webhook("whsec_...")           # the endpoint's signing secret
payload = wh.verify(request_body, request_headers)   # raises if the signature is wrong"#;

const SNIPPET_JS: &str = r#"import { Webhook } from "standardwebhooks";

const wh = new Webhook("whsec_...");  // the endpoint's signing secret
const payload = wh.verify(rawBody, headers);  // throws if the signature is wrong"#;

const SNIPPET_GO: &str = r#"import standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

wh, _ := standardwebhooks.NewWebhook("whsec_...")  // the endpoint's signing secret
err := wh.Verify(rawBody, r.Header)                // non-nil if the signature is wrong"#;

/// `/endpoints/{id}`.
#[component]
pub fn EndpointDetail() -> impl IntoView {
    let params = use_params_map();
    let id = Memo::new(move |_| params.with(|p| p.get("id").unwrap_or_default()));
    let save = ServerAction::<SaveEndpoint>::new();
    let act = ServerAction::<EndpointAction>::new();
    let query = use_query_map();
    let params = Memo::new(move |_| {
        query.with(|q| {
            let get = |k: &str| q.get(k).unwrap_or_default();
            DeliveryParams {
                status: get("status"),
                event_type: get("event_type"),
                since: get("since"),
                until: get("until"),
                delivery: get("delivery"),
            }
        })
    });
    let page = Resource::new(move || (id.get(), save.version().get(), act.version().get()), |(id, ..)| endpoint(id));
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    let button = move |id: String, action: &'static str, label: &'static str| {
        view! {
            <ActionForm action=act>
                <input type="hidden" name="id" value=id/>
                <input type="hidden" name="action" value=action/>
                <button type="submit" data-testid=format!("ep-{action}")>{label}</button>
            </ActionForm>
        }
    };
    view! {
        <Title text="Endpoint — Herald"/>
        {move || hydrated.get().then(|| view! { <span data-testid="endpoint-ready" hidden=true></span> })}
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || page.get().map(|r| match r {
                Ok(Some(p)) => {
                    let e = p.endpoint;
                    let (id1, id2, id3, id4, id5) = (e.id.clone(), e.id.clone(), e.id.clone(), e.id.clone(), e.id.clone());
                    let (id6, id8) = (e.id.clone(), e.id.clone());
                    let admin_view = p.admin;
                    let toggle = if e.state == "disabled" { button(id1, "enable", "Enable") } else { button(id1, "disable", "Disable") };
                    view! {
                        <section class="card">
                            <p><a href="/endpoints">"← Endpoints"</a></p>
                            <h1>"Endpoint " <code>{e.url.clone()}</code></h1>
                            <dl class="facts">
                                <dt>"Id"</dt><dd>{e.id.clone()}</dd>
                                <dt>"Owner"</dt><dd>{e.owner.clone()}</dd>
                                <dt>"State"</dt><dd data-testid="ep-state">{e.state.clone()}</dd>
                                {(!e.disabled_reason.is_empty()).then(|| view! { <dt>"Why"</dt><dd>{e.disabled_reason.clone()}</dd> })}
                            </dl>
                            <div class="actions">
                                {toggle}
                                {button(id2, "reveal", "Reveal the signing secret")}
                                {button(id3, "test", "Send a test event")}
                                <ActionForm action=act>
                                    <input type="hidden" name="id" value=id4/>
                                    <input type="hidden" name="action" value="rotate"/>
                                    <label for="ep-grace">"Grace period" <input id="ep-grace" type="text" name="grace" value="1h" data-testid="ep-grace"/></label>
                                    <button type="submit" data-testid="ep-rotate">"Rotate the secret"</button>
                                </ActionForm>
                                <ActionForm action=act>
                                    <input type="hidden" name="id" value=id5/>
                                    <input type="hidden" name="action" value="recover"/>
                                    <label for="ep-since">"Failed since (UTC)" <input id="ep-since" type="datetime-local" name="since" required data-testid="ep-since"/></label>
                                    <button type="submit" data-testid="ep-recover">"Recover failed deliveries"</button>
                                </ActionForm>
                            </div>
                            {move || act.value().get().map(|r| match r {
                                Ok(m) => view! { <p class="status secret" role="status" data-testid="ep-result"><code>{m}</code></p> }.into_any(),
                                Err(e) => view! { <p class="error" role="alert" data-testid="ep-result">{clean(e)}</p> }.into_any(),
                            })}
                        </section>
                        <Deliveries id=id6 admin=admin_view params act/>
                        <section class="card">
                            <h2>"Verifying Herald's signature"</h2>
                            <p>"Every webhook carries " <code>"webhook-id"</code>", " <code>"webhook-timestamp"</code> " and "
                               <code>"webhook-signature"</code> " (Standard Webhooks). Verify them with the signing secret and the raw body:"</p>
                            <details open=true><summary>"Python (standardwebhooks)"</summary><pre class="json" tabindex="0">{SNIPPET_PY}</pre></details>
                            <details><summary>"JavaScript (standardwebhooks)"</summary><pre class="json" tabindex="0">{SNIPPET_JS}</pre></details>
                            <details><summary>"Go (standard-webhooks)"</summary><pre class="json" tabindex="0">{SNIPPET_GO}</pre></details>
                        </section>
                        <section class="card">
                            <h2>"Edit"</h2>
                            <EndpointForm e save/>
                        </section>
                        <section class="card">
                            <h2>"Delete"</h2>
                            <ActionForm action=act>
                                <input type="hidden" name="id" value=id8/>
                                <input type="hidden" name="action" value="delete"/>
                                <label class="check"><input type="checkbox" name="confirm" value="delete" required data-testid="ep-delete-confirm"/>
                                    "Delete this endpoint and stop its deliveries"</label>
                                <button type="submit" class="danger" data-testid="ep-delete">"Delete"</button>
                            </ActionForm>
                        </section>
                    }.into_any()
                }
                Ok(None) => view! { <NotFound/> }.into_any(),
                Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
            })}
        </Suspense>
    }
}

/// An endpoint's recent deliveries (filtered), the attempts of the one opened, and the
/// resend buttons; live: new deliveries and attempts appear without a reload.
#[component]
fn Deliveries(
    id: String,
    admin: bool,
    params: Memo<DeliveryParams>,
    act: ServerAction<EndpointAction>,
) -> impl IntoView {
    let tick = RwSignal::new(0u32);
    // Not keyed on `act`: an action re-reads the whole page, which makes this anew.
    let list = Resource::new(
        {
            let id = id.clone();
            move || (id.clone(), params.get(), tick.get())
        },
        |(id, q, ..)| endpoint_deliveries(id, q),
    );
    let on_change = Callback::new(move |()| tick.update(|t| *t += 1));
    let filters = params.get_untracked();
    let status_now = filters.status.clone();
    let (live_url, action) = (format!("/console/live/endpoints/{id}"), format!("/endpoints/{id}"));
    view! {
        <section class="card" aria-labelledby="deliveries-title">
            <h2 id="deliveries-title">"Recent deliveries"</h2>
            <Live url=live_url on_change/>
            <form method="get" action=action class="form" aria-label="Filter deliveries">
                <label for="ep-status">"Status"
                    <select id="ep-status" name="status" data-testid="ep-status-filter">
                        {["", "pending", "in_flight", "retrying", "succeeded", "failed", "cancelled"].into_iter().map(|s| view! {
                            <option value=s selected=status_now == s>{if s.is_empty() { "any" } else { s }}</option>
                        }).collect_view()}
                    </select>
                </label>
                <label for="ep-type-filter">"Event type"
                    <input id="ep-type-filter" type="text" name="event_type" value=filters.event_type.clone() data-testid="ep-type-filter"/>
                </label>
                <label for="ep-since-filter">"Created from (UTC)"
                    <input id="ep-since-filter" type="datetime-local" name="since" value=filters.since.clone()/>
                </label>
                <label for="ep-until-filter">"Created before (UTC)"
                    <input id="ep-until-filter" type="datetime-local" name="until" value=filters.until.clone()/>
                </label>
                <button type="submit" data-testid="ep-filter">"Filter"</button>
            </form>
            <Transition fallback=|| view! { <p class="notice">"Loading…"</p> }>
                {move || list.get().map(|r| match r {
                    Ok(Some(l)) => {
                        let endpoint_id = id.clone();
                        view! {
                            {l.attempts.map(|(d, rows)| view! {
                                <h3>"Attempts of delivery " <code>{d}</code></h3>
                                <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit" data-testid="ep-attempts">
                                    <thead><tr><th scope="col">"#"</th><th scope="col">"Started"</th><th scope="col">"Duration"</th><th scope="col">"Outcome"</th><th scope="col">"Response"</th></tr></thead>
                                    <tbody>
                                        {rows.into_iter().map(|a| view! {
                                            <tr data-testid="ep-attempt"><td>{a.n}</td><td>{a.at}</td><td>{a.duration_ms} " ms"</td><td>{a.outcome}</td><td class="wrap">{a.detail}</td></tr>
                                        }).collect_view()}
                                    </tbody>
                                </table></div>
                            })}
                            {if l.deliveries.is_empty() {
                                view! { <p class="empty" data-testid="ep-no-deliveries">"No deliveries yet. Send a test event to see one arrive here."</p> }.into_any()
                            } else {
                                view! {
                                    <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit">
                                        <thead><tr>
                                            <th scope="col">"Created"</th><th scope="col">"Event type"</th>
                                            <th scope="col">"Status"</th><th scope="col">"Attempts"</th><th scope="col">"Last error"</th>
                                            <th scope="col"><span class="sr-only">"Attempts"</span></th>
                                            <th scope="col"><span class="sr-only">"Actions"</span></th>
                                        </tr></thead>
                                        <tbody>
                                            {l.deliveries.into_iter().map(|d| {
                                                let finished = matches!(d.status.as_str(), "succeeded" | "failed" | "cancelled");
                                                let when = if admin {
                                                    view! { <a href=format!("/notifications/{}", d.notification)>{d.at.clone()}</a> }.into_any()
                                                } else {
                                                    view! { <span>{d.at.clone()}</span> }.into_any()
                                                };
                                                let endpoint_id = endpoint_id.clone();
                                                view! {
                                                <tr data-testid="ep-delivery">
                                                    <td>{when}</td>
                                                    <td>{d.event_type}</td>
                                                    <td><span class=format!("pill {}", d.status) data-testid="ep-delivery-status">{d.status.clone()}</span></td>
                                                    <td data-testid="ep-delivery-attempts">{d.attempts}</td>
                                                    <td class="wrap">{d.last_error}</td>
                                                    <td><a href=format!("?delivery={}", d.id) data-testid="ep-attempts-link">"Attempts"</a></td>
                                                    <td>{finished.then(|| view! {
                                                        <ActionForm action=act>
                                                            <input type="hidden" name="id" value=endpoint_id/>
                                                            <input type="hidden" name="action" value="resend"/>
                                                            <input type="hidden" name="delivery" value=d.id.clone()/>
                                                            <button type="submit" data-testid="ep-resend">"Resend"</button>
                                                        </ActionForm>
                                                    })}</td>
                                                </tr>
                                            }}).collect_view()}
                                        </tbody>
                                    </table></div>
                                }.into_any()
                            }}
                        }.into_any()
                    }
                    Ok(None) => ().into_any(),
                    Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
                })}
            </Transition>
        </section>
    }
}
