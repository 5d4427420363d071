//! The dashboard (admins): for the last hour, day or week, what was accepted and how
//! it was delivered, attempt durations, unhealthy endpoints and the bus backlog, as
//! numbers and a server-rendered SVG chart (no script or CDN needed to read it).

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;
use serde::{Deserialize, Serialize};

use crate::{clean, NotFound};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unhealthy {
    pub id: String,
    pub url: String,
    pub owner: String,
    pub state: String,
    pub since: String,
    pub reason: String,
}

/// One template's email tracking figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackingRow {
    pub template: String,
    pub delivered: i64,
    pub opens: i64,
    pub clicks: i64,
    pub open_rate: Option<f64>,
    pub click_rate: Option<f64>,
    pub machine: i64,
}

/// Bounce and complaint figures of one template or relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRow {
    pub by: String,
    pub name: String,
    pub sent: i64,
    pub bounced: i64,
    pub complained: i64,
    pub bounce_rate: Option<f64>,
    pub complaint_rate: Option<f64>,
}

/// An SMTP relay as this process sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayRow {
    pub relay: String,
    pub priority: i64,
    pub state: String,
    pub failures: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub window: String,
    pub accepted: i64,
    /// (channel, status, count)
    pub outcomes: Vec<(String, String, i64)>,
    pub success_rate: Option<f64>,
    pub attempts: i64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// (label, count)
    pub buckets: Vec<(String, i64)>,
    pub failing: i64,
    pub disabled: i64,
    pub unhealthy: Vec<Unhealthy>,
    pub backlog: i64,
    pub oldest_backlog_s: Option<f64>,
    /// Kafka consumer lag summed over this process's partitions, if it consumes.
    pub consumer_lag: Option<f64>,
    /// `HERALD_TRACKING` and the tracking figures per template.
    pub tracking_mode: String,
    pub tracking: Vec<TrackingRow>,
    pub feedback: Vec<FeedbackRow>,
    pub relays: Vec<RelayRow>,
}

/// The figures (admins; `None` for anyone else).
#[server(prefix = "/console/fn", endpoint = "dashboard")]
pub async fn load_figures(window: String) -> Result<Option<Figures>, ServerFnError> {
    use herald_core::notifications::stats::{dashboard, Window};
    let who = crate::principal()?;
    let w = Window::parse(&window).map_err(crate::readable)?;
    // Every context read happens before the first await: a resource made again while
    // this one runs (the home page's Suspense re-renders) disposes its owner, and a read
    // after the await would find nothing there, so the two copies would differ and the
    // page would not hydrate.
    let state = crate::state().ok();
    let mode = state.as_ref().map(|s| s.config.tracking).unwrap_or(herald_core::config::TrackingMode::Full);
    let Some(d) = crate::allowed(dashboard(&crate::db()?, &who, w, mode).await)? else { return Ok(None) };
    let label = match w {
        Window::Week => "%a %H:%M",
        _ => "%H:%M",
    };
    // The lag gauges of this process's Kafka consumers, if it runs any.
    let consumer_lag = state.as_ref().and_then(|s| {
        let text = s.metrics.render();
        let lags: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("herald_consumer_lag{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!lags.is_empty()).then(|| lags.iter().sum())
    });
    Ok(Some(Figures {
        window: if window.is_empty() { "1h".into() } else { window },
        accepted: d.accepted,
        outcomes: d.outcomes.into_iter().map(|o| (o.channel.to_string(), o.status.to_string(), o.count)).collect(),
        success_rate: d.success_rate,
        attempts: d.attempts,
        p50: d.attempt_p50_ms,
        p99: d.attempt_p99_ms,
        buckets: d.buckets.into_iter().map(|b| (b.start.format(label).to_string(), b.accepted)).collect(),
        failing: d.failing_endpoints,
        disabled: d.disabled_endpoints,
        unhealthy: d
            .unhealthy
            .into_iter()
            .map(|e| Unhealthy {
                id: e.id.to_string(),
                url: e.url,
                owner: e.owner,
                state: if e.enabled { "failing".into() } else { "disabled".into() },
                since: e.since.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
            })
            .collect(),
        backlog: d.backlog,
        oldest_backlog_s: d.oldest_backlog_seconds,
        consumer_lag,
        tracking_mode: d.tracking_mode.to_owned(),
        tracking: d
            .email_tracking
            .into_iter()
            .map(|t| TrackingRow {
                template: t.template,
                delivered: t.delivered,
                opens: if d.tracking_mode == "anonymous" { t.opens } else { t.unique_opens },
                clicks: if d.tracking_mode == "anonymous" { t.clicks } else { t.unique_clicks },
                open_rate: t.open_rate,
                click_rate: t.click_rate,
                machine: t.machine,
            })
            .collect(),
        feedback: d
            .email_feedback
            .into_iter()
            .map(|r| FeedbackRow {
                by: r.by,
                name: r.name,
                sent: r.sent,
                bounced: r.bounced,
                complained: r.complained,
                bounce_rate: r.bounce_rate,
                complaint_rate: r.complaint_rate,
            })
            .collect(),
        relays: state
            .as_ref()
            .map(|s| {
                s.smtp
                    .states()
                    .into_iter()
                    .map(|r| RelayRow {
                        relay: r.relay,
                        priority: r.priority,
                        state: r.state.replace('_', " "),
                        failures: r.failures_in_a_row,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }))
}

/// Gmail's complaint guidance and a common bounce ceiling (see `stats`).
const COMPLAINT_LIMIT: f64 = 0.003;
const BOUNCE_LIMIT: f64 = 0.02;

fn feedback_table(rows: Vec<FeedbackRow>, relays: Vec<RelayRow>) -> impl IntoView {
    let rate = |v: Option<f64>, limit: f64| {
        let over = v.is_some_and(|v| v >= limit);
        let text =
            v.map(|v| format!("{:.2} %{}", v * 100.0, if over { " ⚠" } else { "" })).unwrap_or_else(|| "—".into());
        view! { <td class:over=over data-over=over.to_string()>{text}</td> }
    };
    view! {
        {if rows.is_empty() {
            view! { <p class="notice" data-testid="feedback-empty">"No email was sent in this window."</p> }.into_any()
        } else {
            view! {
                <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit" data-testid="feedback-table">
                    <thead><tr><th scope="col">"By"</th><th scope="col">"Name"</th><th scope="col">"Sent"</th>
                        <th scope="col">"Bounced"</th><th scope="col">"Bounce rate"</th>
                        <th scope="col">"Complaints"</th><th scope="col">"Complaint rate"</th></tr></thead>
                    <tbody>
                        {rows.into_iter().map(|r| view! {
                            <tr data-testid="feedback-row">
                                <td>{r.by.clone()}</td><td>{r.name.clone()}</td><td>{r.sent}</td><td>{r.bounced}</td>
                                {rate(r.bounce_rate, BOUNCE_LIMIT)}<td>{r.complained}</td>{rate(r.complaint_rate, COMPLAINT_LIMIT)}
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table></div>
            }.into_any()
        }}
        <p class="status">"Marked ⚠: complaints at or over 0.3 % (Gmail's limit for bulk senders; stay under 0.1 %) or bounces at or over 2 %."</p>
        {(!relays.is_empty()).then(|| view! {
            <h3>"SMTP relays (this process)"</h3>
            <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit" data-testid="relays-table">
                <thead><tr><th scope="col">"Relay"</th><th scope="col">"Priority"</th><th scope="col">"State"</th><th scope="col">"Failures in a row"</th></tr></thead>
                <tbody>
                    {relays.into_iter().map(|r| view! {
                        <tr data-testid="relay-row"><td>{r.relay}</td><td>{r.priority}</td>
                            <td><span class=format!("pill {}", if r.state == "in service" { "succeeded" } else { "failed" })>{r.state.clone()}</span></td>
                            <td>{r.failures}</td></tr>
                    }).collect_view()}
                </tbody>
            </table></div>
        })}
    }
}

fn percent(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1} %", v * 100.0)).unwrap_or_else(|| "—".into())
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0} ms")).unwrap_or_else(|| "—".into())
}

/// A bar chart of the accepted notifications over the window.
fn chart(buckets: &[(String, i64)]) -> impl IntoView {
    let max = buckets.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let (w, h, gap) = (40.0, 120.0, 6.0);
    let width = buckets.len() as f64 * (w + gap);
    let summary = buckets.iter().map(|(l, c)| format!("{l}: {c}")).collect::<Vec<_>>().join(", ");
    view! {
        <svg class="chart" viewBox=format!("0 0 {width} {}", h + 20.0) role="img"
             aria-label=format!("Notifications accepted per interval: {summary}") data-testid="chart">
            {buckets.iter().enumerate().map(|(i, (label, count))| {
                let bh = (*count as f64 / max) * h;
                let x = i as f64 * (w + gap);
                view! {
                    <g>
                        <title>{format!("{label}: {count}")}</title>
                        <rect x=x y=h - bh width=w height=bh.max(1.0) class="bar"></rect>
                        <text x=x + w / 2.0 y=h + 14.0 text-anchor="middle" class="tick">{label.clone()}</text>
                    </g>
                }
            }).collect_view()}
        </svg>
    }
}

/// `/dashboard`.
#[component]
pub fn DashboardPage() -> impl IntoView {
    let query = use_query_map();
    let window = Memo::new(move |_| query.with(|q| q.get("window").unwrap_or_default()));
    let data = Resource::new(move || window.get(), load_figures);
    view! {
        <Title text="Dashboard — Herald"/>
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || data.get().map(|r| match r {
                Ok(Some(f)) => {
                    let rate = f.success_rate.map(|r| format!("{:.1} %", r * 100.0)).unwrap_or_else(|| "—".into());
                    let lag = f.consumer_lag.map(|l| format!("{l:.0}")).unwrap_or_else(|| "not consumed here".into());
                    let oldest = f.oldest_backlog_s.map(|s| format!(" (oldest due {s:.0} s)")).unwrap_or_default();
                    view! {
                        <section class="card">
                            <h1>"Dashboard"</h1>
                            <nav class="pager" aria-label="Window">
                                {["1h", "24h", "7d"].into_iter().map(|w| {
                                    let current = f.window == w;
                                    view! { <a href=format!("/dashboard?window={w}") aria-current=current.then_some("page")
                                        class:current=current data-testid=format!("window-{w}")>{format!("Last {w}")}</a> }
                                }).collect_view()}
                            </nav>
                            <div class="figures">
                                <div class="figure"><span class="n" data-testid="fig-accepted">{f.accepted}</span>"notifications accepted"</div>
                                <div class="figure"><span class="n" data-testid="fig-success">{rate}</span>"of finished deliveries succeeded"</div>
                                <div class="figure"><span class="n">{ms(f.p50)}</span>"attempt p50"</div>
                                <div class="figure"><span class="n">{ms(f.p99)}</span>"attempt p99"</div>
                                <div class="figure"><span class="n" data-testid="fig-failing">{f.failing}</span>"endpoints failing"</div>
                                <div class="figure"><span class="n" data-testid="fig-disabled">{f.disabled}</span>"endpoints disabled"</div>
                                <div class="figure"><span class="n" data-testid="fig-backlog">{f.backlog}</span>{format!("bus messages due{oldest}")}</div>
                                <div class="figure"><span class="n">{lag}</span>"Kafka consumer lag"</div>
                            </div>
                            <h2>"Accepted over the window"</h2>
                            {chart(&f.buckets)}
                        </section>
                        <section class="card">
                            <h2>"Deliveries by channel and outcome"</h2>
                            <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit">
                                <thead><tr><th scope="col">"Channel"</th><th scope="col">"Status"</th><th scope="col">"Deliveries"</th></tr></thead>
                                <tbody>
                                    {f.outcomes.into_iter().map(|(c, s, n)| view! {
                                        <tr data-testid="outcome-row"><td>{c}</td><td><span class=format!("pill {s}")>{s.clone()}</span></td><td>{n}</td></tr>
                                    }).collect_view()}
                                </tbody>
                            </table></div>
                            <p class="status">{format!("{} attempts in the window.", f.attempts)}</p>
                        </section>
                        <section class="card">
                            <h2>"Email tracking by template"</h2>
                            {
                                let (opened, clicked) = if f.tracking_mode == "anonymous" {
                                    ("Opens", "Clicks")
                                } else {
                                    ("Opened", "Clicked")
                                };
                                let note = match f.tracking_mode.as_str() {
                                    "off" => "Tracking is off (HERALD_TRACKING=off): nothing is recorded.",
                                    "anonymous" => "Anonymous tracking: counts per template only, so rates are opens and clicks over emails delivered.",
                                    _ => "Rates are emails opened or clicked at least once by a person, over tracked emails delivered. Machines (privacy proxies, scanners, prefetches) are counted apart.",
                                };
                                if f.tracking.is_empty() {
                                    view! { <p class="notice">{note}" No tracked email in this window."</p> }.into_any()
                                } else {
                                    view! {
                                        <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit" data-testid="tracking-table">
                                            <thead><tr><th scope="col">"Template"</th><th scope="col">"Delivered"</th>
                                                <th scope="col">{opened}</th><th scope="col">"Open rate"</th>
                                                <th scope="col">{clicked}</th><th scope="col">"Click rate"</th>
                                                <th scope="col">"Machines"</th></tr></thead>
                                            <tbody>
                                                {f.tracking.into_iter().map(|t| view! {
                                                    <tr data-testid="tracking-row">
                                                        <td><a href=format!("/templates/{}", t.template)>{t.template.clone()}</a></td>
                                                        <td>{t.delivered}</td><td>{t.opens}</td><td>{percent(t.open_rate)}</td>
                                                        <td>{t.clicks}</td><td>{percent(t.click_rate)}</td><td>{t.machine}</td>
                                                    </tr>
                                                }).collect_view()}
                                            </tbody>
                                        </table></div>
                                        <p class="status">{note}</p>
                                    }.into_any()
                                }
                            }
                        </section>
                        <section class="card">
                            <h2>"Bounces and complaints"</h2>
                            {feedback_table(f.feedback, f.relays).into_any()}
                        </section>
                        <section class="card">
                            <h2>"Failing and disabled endpoints"</h2>
                            {if f.unhealthy.is_empty() {
                                view! { <p class="notice">"None."</p> }.into_any()
                            } else {
                                view! {
                                    <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit">
                                        <thead><tr><th scope="col">"URL"</th><th scope="col">"Owner"</th><th scope="col">"State"</th><th scope="col">"Since"</th><th scope="col">"Why"</th></tr></thead>
                                        <tbody>
                                            {f.unhealthy.into_iter().map(|e| view! {
                                                <tr data-testid="unhealthy-row">
                                                    <td><a href=format!("/endpoints/{}", e.id)>{e.url}</a></td>
                                                    <td>{e.owner}</td><td>{e.state}</td><td>{e.since}</td><td>{e.reason}</td>
                                                </tr>
                                            }).collect_view()}
                                        </tbody>
                                    </table></div>
                                }.into_any()
                            }}
                        </section>
                    }.into_any()
                }
                Ok(None) => view! { <NotFound/> }.into_any(),
                Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
            })}
        </Suspense>
    }
}
