//! The notification history (admins): filters and keyset pages, and one notification's
//! page with its payload, rendered email, deliveries, attempts, and resend / replay.
//!
//! Both pages read through `notifications::read` (the same operations as
//! `GET /api/v1/notifications`), filter with plain GET forms and page with links, so
//! they work before the WASM bundle arrives.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};
use serde::{Deserialize, Serialize};

use crate::{clean, Live, NotFound};

/// The history's filters, as the form and the URL carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryParams {
    pub event_type: Option<String>,
    pub status: Option<String>,
    pub channel: Option<String>,
    pub recipient: Option<String>,
    pub endpoint: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub before: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub id: String,
    pub at: String,
    pub event_type: String,
    pub recipients: String,
    pub owner: String,
    pub status: String,
    pub deliveries: i64,
    pub failed: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub rows: Vec<HistoryRow>,
    pub next_before: Option<String>,
}

#[cfg(feature = "ssr")]
const PAGE: i64 = 50;

/// One page of the history: the caller's owner's notifications (an admin: everyone's;
/// `None` for a caller without `notifications:read`).
#[server(prefix = "/console/fn", endpoint = "history")]
pub async fn history(q: HistoryParams) -> Result<Option<HistoryPage>, ServerFnError> {
    use herald_core::notifications::read::{self, HistoryQuery};
    let who = crate::principal()?;
    let query = HistoryQuery {
        event_type: q.event_type,
        status: q.status,
        channel: q.channel,
        recipient: q.recipient,
        endpoint: q.endpoint,
        since: q.since,
        until: q.until,
        before: q.before,
        limit: Some(PAGE),
    };
    let (filter, limit) = query.filter().map_err(crate::readable)?;
    let Some(page) = crate::allowed(read::list(&crate::db()?, &who, &filter, limit).await)? else { return Ok(None) };
    let next_before = (page.len() as i64 == limit).then(|| page.last().map(|n| n.id.to_string())).flatten();
    let rows = page
        .into_iter()
        .map(|n| HistoryRow {
            id: n.id.to_string(),
            at: n.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            event_type: n.event_type,
            recipients: n.recipients.join(", "),
            owner: n.owner,
            status: serde_json::to_value(n.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            deliveries: n.deliveries,
            failed: n.failed,
        })
        .collect();
    Ok(Some(HistoryPage { rows, next_before }))
}

fn params_from_query(q: &leptos_router::params::ParamsMap) -> HistoryParams {
    let get = |k: &str| q.get(k).filter(|v| !v.trim().is_empty());
    HistoryParams {
        event_type: get("event_type"),
        status: get("status"),
        channel: get("channel"),
        recipient: get("recipient"),
        endpoint: get("endpoint"),
        since: get("since"),
        until: get("until"),
        before: get("before"),
    }
}

/// The query string of `p` with `before` replaced.
fn href_with_before(p: &HistoryParams, before: Option<&str>) -> String {
    let pairs = [
        ("event_type", p.event_type.as_deref()),
        ("status", p.status.as_deref()),
        ("channel", p.channel.as_deref()),
        ("recipient", p.recipient.as_deref()),
        ("endpoint", p.endpoint.as_deref()),
        ("since", p.since.as_deref()),
        ("until", p.until.as_deref()),
        ("before", before),
    ];
    let q: Vec<String> = pairs.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", urlencode(v)))).collect();
    if q.is_empty() {
        "/notifications".into()
    } else {
        format!("/notifications?{}", q.join("&"))
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `<select>` of words, with the current one selected.
fn choice(
    name: &'static str,
    label: &'static str,
    words: &'static [&'static str],
    current: Option<String>,
) -> impl IntoView {
    let (id, for_id) = (format!("filter-{name}"), format!("filter-{name}"));
    view! {
        <label for=for_id>
            {label}
            <select id=id name=name data-testid=format!("filter-{name}")>
                <option value="" selected=current.is_none()>"any"</option>
                {words
                    .iter()
                    .map(|w| {
                        view! { <option value=*w selected=current.as_deref() == Some(*w)>{*w}</option> }
                    })
                    .collect_view()}
            </select>
        </label>
    }
}

fn text_filter(name: &'static str, label: &'static str, kind: &'static str, current: Option<String>) -> impl IntoView {
    let (id, for_id) = (format!("filter-{name}"), format!("filter-{name}"));
    view! {
        <label for=for_id>
            {label}
            <input id=id type=kind name=name value=current.unwrap_or_default() data-testid=format!("filter-{name}")/>
        </label>
    }
}

/// `/notifications`: the history.
#[component]
pub fn HistoryPage() -> impl IntoView {
    let query = use_query_map();
    let params = Memo::new(move |_| query.with(params_from_query));
    let page = Resource::new(move || params.get(), history);
    // The heading and the filters, shown with the history or its error (never around
    // "Page not found").
    let head = move || {
        let p = params.get();
        view! {
            <section class="card">
                <h1>"Notifications"</h1>
                <form method="get" action="/notifications" class="form" aria-label="Filter the history">
                    {text_filter("event_type", "Event type", "text", p.event_type.clone())}
                    {choice(
                        "status",
                        "A delivery that is",
                        &["pending", "in_flight", "retrying", "succeeded", "failed", "cancelled"],
                        p.status.clone(),
                    )}
                    {choice("channel", "Channel", &["email", "webhook"], p.channel.clone())}
                    {text_filter("recipient", "Recipient address", "email", p.recipient.clone())}
                    {text_filter("endpoint", "Endpoint id", "text", p.endpoint.clone())}
                    {text_filter("since", "Accepted from (UTC)", "datetime-local", p.since.clone())}
                    {text_filter("until", "Accepted before (UTC)", "datetime-local", p.until.clone())}
                    <button type="submit" data-testid="filter-apply">"Filter"</button>
                    <a href="/notifications">"Clear"</a>
                </form>
            </section>
        }
        .into_any()
    };
    view! {
        <Title text="Notifications — Herald"/>
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || {
                page.get()
                    .map(|r| match r {
                        Ok(Some(page)) => {
                            let p = params.get();
                            let older = page.next_before.as_deref().map(|b| href_with_before(&p, Some(b)));
                            let newest = p.before.is_some().then(|| href_with_before(&p, None));
                            view! {
                                {head()}
                                <section class="card">
                                    <HistoryTable rows=page.rows/>
                                    <nav class="pager" aria-label="Pages">
                                        {newest.map(|h| view! { <a href=h data-testid="page-newest">"← Newest"</a> })}
                                        {older.map(|h| view! { <a href=h data-testid="page-older">"Older →"</a> })}
                                    </nav>
                                </section>
                            }
                                .into_any()
                        }
                        Ok(None) => view! { <NotFound/> }.into_any(),
                        Err(e) => view! {
                            {head()}
                            <section class="card">
                                <p class="error" role="alert" data-testid="history-error">{clean(e)}</p>
                            </section>
                        }
                            .into_any(),
                    })
            }}
        </Suspense>
    }
}

#[component]
fn HistoryTable(rows: Vec<HistoryRow>) -> impl IntoView {
    if rows.is_empty() {
        return view! { <p class="notice" data-testid="history-empty">"No notifications match."</p> }.into_any();
    }
    view! {
        <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit">
            <thead>
                <tr>
                    <th scope="col">"Accepted"</th>
                    <th scope="col">"Event type"</th>
                    <th scope="col">"Recipients"</th>
                    <th scope="col">"Owner"</th>
                    <th scope="col">"Status"</th>
                    <th scope="col">"Deliveries"</th>
                </tr>
            </thead>
            <tbody>
                {rows
                    .into_iter()
                    .map(|n| {
                        let href = format!("/notifications/{}", n.id);
                        let failed = (n.failed > 0).then(|| format!(" ({} failed)", n.failed));
                        view! {
                            <tr data-testid="history-row">
                                <td><a href=href>{n.at}</a></td>
                                <td>{n.event_type}</td>
                                <td>{n.recipients}</td>
                                <td>{n.owner}</td>
                                <td data-testid="history-status"><span class=format!("pill {}", n.status)>{n.status.clone()}</span></td>
                                <td>{n.deliveries}{failed}</td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table></div>
    }
    .into_any()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRow {
    pub n: i32,
    pub at: String,
    pub duration_ms: i32,
    pub outcome: String,
    pub detail: String,
}

#[cfg(feature = "ssr")]
impl From<herald_core::notifications::read::AttemptView> for AttemptRow {
    /// An attempt's line: its reply (SMTP, or HTTP status and response excerpt) and error.
    fn from(a: herald_core::notifications::read::AttemptView) -> Self {
        let relay = a.relay.map(|r| format!("via {r}"));
        let detail = [a.smtp_reply, a.http_status.map(|s| format!("HTTP {s}")), a.response_excerpt, a.error, relay]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" — ");
        AttemptRow {
            n: a.attempt,
            at: a.started_at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
            duration_ms: a.duration_ms,
            outcome: a.outcome,
            detail,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailView {
    pub template: String,
    pub version: i64,
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRow {
    pub id: String,
    pub channel: String,
    pub target: String,
    pub endpoint: Option<String>,
    pub status: String,
    pub next_attempt: Option<String>,
    pub last_error: Option<String>,
    pub email: Option<EmailView>,
    pub tracking: Option<TrackingView>,
    pub attempts: Vec<AttemptRow>,
    /// (when, what, from where, detail): bounces, complaints, unsubscribes.
    pub feedback: Vec<(String, String, String, String)>,
}

/// What email tracking recorded of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackingView {
    /// "opens and clicks", "opens", "clicks".
    pub tracks: String,
    pub opens: i64,
    pub first_open: Option<String>,
    pub last_open: Option<String>,
    pub machine_opens: i64,
    /// (url, clicks, first, last)
    pub clicks: Vec<(String, i64, String, String)>,
    pub machine_clicks: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationPage {
    pub id: String,
    pub at: String,
    pub event_type: String,
    pub owner: String,
    pub status: String,
    pub recipients: String,
    pub payload: String,
    pub deliveries: Vec<DeliveryRow>,
}

/// One notification (`None` for one the caller may not see, and for an unknown id).
#[server(prefix = "/console/fn", endpoint = "notification")]
pub async fn notification(id: String) -> Result<Option<NotificationPage>, ServerFnError> {
    let who = crate::principal()?;
    let Ok(id) = id.parse() else { return Ok(None) };
    let Some(n) = crate::allowed(herald_core::notifications::read::get(&crate::db()?, &who, id).await)? else {
        return Ok(None);
    };
    let word = |v: serde_json::Value| v.as_str().map(str::to_owned).unwrap_or_default();
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string();
    let deliveries = n
        .deliveries
        .into_iter()
        .map(|d| DeliveryRow {
            id: d.id.to_string(),
            channel: d.channel.to_string(),
            target: d.target,
            endpoint: d.endpoint_id.map(|e| e.to_string()),
            status: d.status.to_string(),
            next_attempt: d.next_attempt_at.map(time),
            last_error: d.last_error,
            email: d.email.map(|e| EmailView {
                template: word(e["template"].clone()),
                version: e["version"].as_i64().unwrap_or_default(),
                subject: word(e["subject"].clone()),
                text: word(e["text"].clone()),
                html: word(e["html"].clone()),
            }),
            tracking: d.tracking.map(|t| TrackingView {
                tracks: match (t.track_opens, t.track_clicks) {
                    (true, true) => "opens and clicks",
                    (true, false) => "opens",
                    _ => "clicks",
                }
                .into(),
                opens: t.opens,
                first_open: t.first_opened_at.map(time),
                last_open: t.last_opened_at.map(time),
                machine_opens: t.machine_opens,
                clicks: t
                    .clicks
                    .into_iter()
                    .map(|c| {
                        let when = |v: Option<chrono::DateTime<chrono::Utc>>| v.map(time).unwrap_or_default();
                        (c.url, c.clicks, when(c.first_clicked_at), when(c.last_clicked_at))
                    })
                    .collect(),
                machine_clicks: t.machine_clicks,
            }),
            attempts: d.attempts.into_iter().map(AttemptRow::from).collect(),
            feedback: d
                .feedback
                .into_iter()
                .map(|f| {
                    let detail = [f.status_code, f.detail].into_iter().flatten().collect::<Vec<_>>().join(" — ");
                    (time(f.at), f.kind.replace('_', " "), f.source.replace('_', " "), detail)
                })
                .collect(),
        })
        .collect();
    Ok(Some(NotificationPage {
        id: n.id.to_string(),
        at: time(n.created_at),
        event_type: n.event_type,
        owner: n.owner,
        status: word(serde_json::to_value(n.status).unwrap_or_default()),
        recipients: n.recipients.join(", "),
        payload: serde_json::to_string_pretty(&n.payload).unwrap_or_default(),
        deliveries,
    }))
}

/// Sends a finished delivery again: a webhook (the endpoint's manager), or an email
/// (`endpoint` empty; refused while its address is suppressed).
#[server(prefix = "/console/fn", endpoint = "notification/resend")]
pub async fn resend_delivery(endpoint: String, delivery: String) -> Result<String, ServerFnError> {
    let who = crate::principal()?;
    let not_found = || ServerFnError::new("no such delivery");
    let delivery = delivery.parse().map_err(|_| not_found())?;
    if endpoint.is_empty() {
        herald_core::notifications::read::resend_email(&crate::db()?, &who, delivery).await.map_err(crate::readable)?;
        return Ok("Queued again.".into());
    }
    let endpoint = endpoint.parse().map_err(|_| not_found())?;
    herald_core::webhooks::deliveries::resend(&crate::db()?, &who, endpoint, delivery)
        .await
        .map_err(crate::readable)?;
    Ok("Queued again.".into())
}

/// Sends every finished webhook delivery of a notification again (its sender).
#[server(prefix = "/console/fn", endpoint = "notification/replay")]
pub async fn replay_notification(id: String) -> Result<String, ServerFnError> {
    let who = crate::principal()?;
    let not_found = || ServerFnError::new("no such notification");
    let id = id.parse().map_err(|_| not_found())?;
    let ids = herald_core::webhooks::deliveries::replay_notification(&crate::db()?, &who, id)
        .await
        .map_err(crate::readable)?;
    Ok(match ids.len() {
        0 => "No finished webhook deliveries to replay.".into(),
        1 => "1 webhook delivery queued again.".into(),
        n => format!("{n} webhook deliveries queued again."),
    })
}

/// `/notifications/{id}`: one notification.
#[component]
pub fn NotificationDetail() -> impl IntoView {
    let params = use_params_map();
    let id = Memo::new(move |_| params.with(|p| p.get("id").unwrap_or_default()));
    let resend = ServerAction::<ResendDelivery>::new();
    let replay = ServerAction::<ReplayNotification>::new();
    let page = Resource::new(move || (id.get(), replay.version().get()), |(id, ..)| notification(id));
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    let outcome = move || {
        [resend.value().get(), replay.value().get()].into_iter().flatten().next().map(|r| match r {
            Ok(m) => view! { <p class="status" role="status" data-testid="action-result">{m}</p> }.into_any(),
            Err(e) => view! { <p class="error" role="alert" data-testid="action-result">{clean(e)}</p> }.into_any(),
        })
    };
    view! {
        <Title text="Notification — Herald"/>
        {move || hydrated.get().then(|| view! { <span data-testid="detail-ready" hidden=true></span> })}
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || {
                page.get()
                    .map(|r| match r {
                        Ok(Some(n)) => {
                            let has_webhooks = n.deliveries.iter().any(|d| d.channel == "webhook");
                            let (first, replay_id) = (n.clone(), n.id.clone());
                            view! {
                                <section class="card">
                                    <p><a href="/notifications">"← History"</a></p>
                                    <h1>"Notification " <code>{n.id.clone()}</code></h1>
                                    <dl class="facts">
                                        <dt>"Event type"</dt><dd data-testid="detail-event-type">{n.event_type}</dd>
                                        <dt>"Accepted"</dt><dd>{n.at}</dd>
                                        <dt>"Owner"</dt><dd>{n.owner}</dd>
                                        <dt>"Recipients"</dt><dd>{n.recipients}</dd>
                                    </dl>
                                    {has_webhooks.then(|| {
                                        view! {
                                            <ActionForm action=replay>
                                                <input type="hidden" name="id" value=replay_id/>
                                                <button type="submit" data-testid="replay">"Replay webhooks"</button>
                                            </ActionForm>
                                        }
                                    })}
                                    {outcome}
                                    <h2>"Payload"</h2>
                                    <pre class="json" tabindex="0" data-testid="detail-payload">{n.payload}</pre>
                                </section>
                                <LiveDeliveries first resend/>
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

/// A notification's status and deliveries with their attempts, live: the stream says
/// when they changed and they are read again (the page around them stays). `first` is
/// the page's own read, shown until something changes.
#[component]
fn LiveDeliveries(first: NotificationPage, resend: ServerAction<ResendDelivery>) -> impl IntoView {
    let tick = RwSignal::new(0u32);
    let url = format!("/console/live/notifications/{}", first.id);
    let id = first.id.clone();
    let again = Resource::new(
        move || (resend.version().get(), tick.get()),
        move |(resent, changes)| {
            let id = id.clone();
            async move {
                if resent == 0 && changes == 0 {
                    return Ok(None);
                }
                notification(id).await
            }
        },
    );
    let first = StoredValue::new(first);
    let shown = move || again.get().and_then(|r| r.ok()).flatten().unwrap_or_else(|| first.get_value());
    let on_change = Callback::new(move |()| tick.update(|t| *t += 1));
    view! {
        <section class="card" aria-label="Status">
            <Live url on_change/>
            <Transition fallback=|| ()>
                {move || {
                    let n = shown();
                    view! { <p>"Status: " <span class=format!("pill {}", n.status) data-testid="detail-status">{n.status.clone()}</span></p> }
                }}
            </Transition>
        </section>
        <Transition fallback=|| ()>
            {move || shown().deliveries.into_iter().map(|d| view! { <DeliveryCard d resend/> }).collect_view()}
        </Transition>
    }
}

#[component]
fn DeliveryCard(d: DeliveryRow, resend: ServerAction<ResendDelivery>) -> impl IntoView {
    let finished =
        matches!(d.status.as_str(), "succeeded" | "failed" | "cancelled" | "bounced" | "complained" | "suppressed");
    let email = d.channel == "email";
    let resend_form = d.endpoint.clone().or_else(|| email.then(String::new)).filter(|_| finished).map(|endpoint| {
        view! {
            <ActionForm action=resend>
                <input type="hidden" name="endpoint" value=endpoint/>
                <input type="hidden" name="delivery" value=d.id.clone()/>
                <button type="submit" data-testid="resend">"Resend"</button>
            </ActionForm>
        }
    });
    view! {
        <section class="card" data-testid="delivery">
            <h2>
                {d.channel.clone()} " to " <code>{d.target.clone()}</code> " — "
                <span class=format!("pill {}", d.status) data-testid="delivery-status">{d.status.clone()}</span>
            </h2>
            {d.next_attempt.map(|t| view! { <p class="status">"Next attempt " {t}</p> })}
            {d.last_error.map(|e| view! { <p class="error">"Last error: " {e}</p> })}
            {resend_form}
            {d.email.map(|e| {
                view! {
                    <h3>"Email (template " {e.template} " v" {e.version} ")"</h3>
                    <p><strong>"Subject: "</strong><span data-testid="email-subject">{e.subject}</span></p>
                    <details>
                        <summary>"Text part"</summary>
                        <pre tabindex="0">{e.text}</pre>
                    </details>
                    <iframe
                        class="email"
                        title="The email's HTML part (sandboxed)"
                        sandbox=""
                        srcdoc=e.html
                        data-testid="email-html"
                    ></iframe>
                }
            })}
            {d.tracking.map(|t| {
                let opened = match (&t.first_open, &t.last_open) {
                    (Some(first), Some(last)) if t.opens > 1 => format!("{} times, first {first}, last {last}", t.opens),
                    (Some(first), _) => format!("once, {first}"),
                    _ => "not yet".to_owned(),
                };
                view! {
                    <h3>"Tracking (" {t.tracks.clone()} ")"</h3>
                    <p data-testid="tracking-opens"><strong>"Opened: "</strong>{opened}
                        {(t.machine_opens > 0).then(|| format!(" ({} by machines, not counted)", t.machine_opens))}</p>
                    {if t.clicks.is_empty() {
                        view! { <p data-testid="tracking-clicks"><strong>"Clicked: "</strong>"no link yet"
                            {(t.machine_clicks > 0).then(|| format!(" ({} by machines, not counted)", t.machine_clicks))}</p> }.into_any()
                    } else {
                        view! {
                            <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit" data-testid="tracking-clicks">
                                <thead><tr><th scope="col">"Link"</th><th scope="col">"Clicks"</th><th scope="col">"First"</th><th scope="col">"Last"</th></tr></thead>
                                <tbody>
                                    {t.clicks.into_iter().map(|(url, n, first, last)| view! {
                                        <tr data-testid="click-row"><td><code>{url}</code></td><td>{n}</td><td>{first}</td><td>{last}</td></tr>
                                    }).collect_view()}
                                </tbody>
                            </table></div>
                        }.into_any()
                    }}
                }
            })}
            {(!d.feedback.is_empty()).then(|| view! {
                <h3>"After sending"</h3>
                <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit" data-testid="feedback">
                    <thead><tr><th scope="col">"When"</th><th scope="col">"What"</th><th scope="col">"From"</th><th scope="col">"Detail"</th></tr></thead>
                    <tbody>
                        {d.feedback.into_iter().map(|(at, kind, source, detail)| view! {
                            <tr data-testid="feedback-row"><td>{at}</td><td>{kind}</td><td>{source}</td><td>{detail}</td></tr>
                        }).collect_view()}
                    </tbody>
                </table></div>
            })}
            <h3>"Attempts"</h3>
            {if d.attempts.is_empty() {
                view! { <p class="notice">"No attempt yet."</p> }.into_any()
            } else {
                view! {
                    <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit">
                        <thead>
                            <tr>
                                <th scope="col">"#"</th>
                                <th scope="col">"Started"</th>
                                <th scope="col">"Duration"</th>
                                <th scope="col">"Outcome"</th>
                                <th scope="col">"Reply"</th>
                            </tr>
                        </thead>
                        <tbody>
                            {d.attempts
                                .into_iter()
                                .map(|a| {
                                    view! {
                                        <tr data-testid="attempt-row">
                                            <td>{a.n}</td>
                                            <td>{a.at}</td>
                                            <td>{a.duration_ms} " ms"</td>
                                            <td>{a.outcome}</td>
                                            <td>{a.detail}</td>
                                        </tr>
                                    }
                                })
                                .collect_view()}
                        </tbody>
                    </table></div>
                }
                    .into_any()
            }}
        </section>
    }
}
