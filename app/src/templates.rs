//! Templates (admins): the list and a new template; the editor with a live preview
//! against the sample payload of an event type that routes to it (errors inline with
//! their part and line), immutable versions, the diff between any two, publish and
//! roll back. Every action calls `herald_core::catalog`, as the API does.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;
use serde::{Deserialize, Serialize};

use crate::{clean, NotFound};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRow {
    pub key: String,
    pub published: Option<i32>,
    pub latest: i32,
}

/// The templates (admins; `None` for anyone else).
#[server(prefix = "/console/fn", endpoint = "templates/list")]
pub async fn list_templates() -> Result<Option<Vec<TemplateRow>>, ServerFnError> {
    let who = crate::principal()?;
    let Some(rows) = crate::allowed(herald_core::catalog::list_templates(&crate::db()?, &who).await)? else {
        return Ok(None);
    };
    Ok(Some(
        rows.into_iter()
            .map(|t| TemplateRow { key: t.key, published: t.published_version, latest: t.latest_version })
            .collect(),
    ))
}

/// Creates a template with its first version; returns its key.
#[server(prefix = "/console/fn", endpoint = "templates/create")]
pub async fn create_template(
    key: String,
    subject: String,
    html_body: String,
    text_body: String,
) -> Result<String, ServerFnError> {
    let who = crate::principal()?;
    let new = herald_core::catalog::NewTemplate {
        key: key.trim().to_owned(),
        subject,
        html_body,
        text_body,
        track_opens: false,
        track_clicks: false,
    };
    let t = herald_core::catalog::create_template(&crate::db()?, &who, new).await.map_err(crate::readable)?;
    Ok(t.key)
}

/// `/templates`.
#[component]
pub fn TemplatesPage() -> impl IntoView {
    let create = ServerAction::<CreateTemplate>::new();
    let list = Resource::new(move || create.version().get(), |_| list_templates());
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    view! {
        <Title text="Templates — Herald"/>
        {move || hydrated.get().then(|| view! { <span data-testid="templates-ready" hidden=true></span> })}
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || {
                list.get()
                    .map(|r| match r {
                        Ok(Some(rows)) => {
                            let none = rows.is_empty();
                            view! {
                                <section class="card">
                                    <h1>"Templates"</h1>
                                    {none.then(|| view! { <p class="empty" data-testid="templates-empty">"No templates yet — create one below."</p> })}
                                    <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table" hidden=none><table class="audit">
                                        <thead>
                                            <tr>
                                                <th scope="col">"Key"</th>
                                                <th scope="col">"Published"</th>
                                                <th scope="col">"Latest"</th>
                                            </tr>
                                        </thead>
                                        <tbody>
                                            {rows
                                                .into_iter()
                                                .map(|t| {
                                                    view! {
                                                        <tr data-testid="template-row">
                                                            <td><a href=format!("/templates/{}", t.key)>{t.key.clone()}</a></td>
                                                            <td>{t.published.map(|v| format!("v{v}")).unwrap_or_else(|| "none".into())}</td>
                                                            <td>{format!("v{}", t.latest)}</td>
                                                        </tr>
                                                    }
                                                })
                                                .collect_view()}
                                        </tbody>
                                    </table></div>
                                </section>
                                <section class="card">
                                    <h2>"New template"</h2>
                                    <ActionForm action=create>
                                        <div class="form column">
                                            <label>"Key" <input type="text" name="key" required data-testid="new-template-key"/></label>
                                            <label>"Subject" <input type="text" name="subject" required data-testid="new-template-subject"/></label>
                                            <label>"HTML body" <textarea name="html_body" rows="4" data-testid="new-template-html"></textarea></label>
                                            <label>"Text body" <textarea name="text_body" rows="3" data-testid="new-template-text"></textarea></label>
                                            <button type="submit" data-testid="new-template-create">"Create"</button>
                                        </div>
                                    </ActionForm>
                                    {move || {
                                        create.value().get().map(|r| match r {
                                            Ok(key) => view! {
                                                <p class="status" role="status">
                                                    "Created. " <a href=format!("/templates/{key}") data-testid="new-template-link">"Edit " {key.clone()}</a>
                                                </p>
                                            }.into_any(),
                                            Err(e) => view! { <p class="error" role="alert" data-testid="new-template-error">{clean(e)}</p> }.into_any(),
                                        })
                                    }}
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRow {
    pub version: i32,
    pub created: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
    pub track_opens: bool,
    pub track_clicks: bool,
}

impl VersionRow {
    /// What the version tracks, in words.
    fn tracks(&self) -> &'static str {
        match (self.track_opens, self.track_clicks) {
            (true, true) => "opens, clicks",
            (true, false) => "opens",
            (false, true) => "clicks",
            (false, false) => "nothing",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateDetail {
    pub key: String,
    pub published: Option<i32>,
    pub versions: Vec<VersionRow>,
}

/// A template and its versions (admins; `None` for anyone else or an unknown key).
#[server(prefix = "/console/fn", endpoint = "templates/get")]
pub async fn template(key: String) -> Result<Option<TemplateDetail>, ServerFnError> {
    let who = crate::principal()?;
    let Some((t, versions)) = crate::allowed(herald_core::catalog::get_template(&crate::db()?, &who, &key).await)?
    else {
        return Ok(None);
    };
    Ok(Some(TemplateDetail {
        key: t.key,
        published: t.published_version,
        versions: versions
            .into_iter()
            .map(|v| VersionRow {
                version: v.version,
                created: v.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                subject: v.subject,
                html_body: v.html_body,
                text_body: v.text_body,
                track_opens: v.track_opens,
                track_clicks: v.track_clicks,
            })
            .collect(),
    }))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// Renders unsaved content against the sample payload of an event type routed to the
/// template. A rendering error (an undefined variable, a syntax error) comes back as
/// the error, naming the part and line.
#[server(prefix = "/console/fn", endpoint = "templates/preview")]
pub async fn preview_template(
    key: String,
    subject: String,
    html_body: String,
    text_body: String,
    event_type: String,
) -> Result<Preview, ServerFnError> {
    use herald_core::catalog::{self, Content, PreviewRequest};
    let who = crate::principal()?;
    let req = PreviewRequest {
        version: None,
        content: Some(Content { subject, html_body, text_body, track_opens: false, track_clicks: false }),
        payload: None,
        event_type: Some(event_type).filter(|e| !e.is_empty()),
    };
    let r = catalog::preview(&crate::db()?, &who, &key, req).await.map_err(crate::readable)?;
    Ok(Preview { subject: r.subject, html: r.html, text: r.text })
}

/// Saves the editor's content as a new version; returns its number.
#[server(prefix = "/console/fn", endpoint = "templates/save")]
pub async fn save_version(
    key: String,
    subject: String,
    html_body: String,
    text_body: String,
    track_opens: Option<String>,
    track_clicks: Option<String>,
) -> Result<i32, ServerFnError> {
    let who = crate::principal()?;
    let c = herald_core::catalog::Content {
        subject,
        html_body,
        text_body,
        track_opens: track_opens.is_some(),
        track_clicks: track_clicks.is_some(),
    };
    herald_core::catalog::add_version(&crate::db()?, &who, &key, c).await.map_err(crate::readable)
}

/// Publishes a version (an older one: a roll back).
#[server(prefix = "/console/fn", endpoint = "templates/publish")]
pub async fn publish_version(key: String, version: i32) -> Result<String, ServerFnError> {
    let who = crate::principal()?;
    herald_core::catalog::publish(&crate::db()?, &who, &key, version).await.map_err(crate::readable)?;
    Ok(format!("Version {version} is published."))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffRow {
    pub part: String,
    pub tag: String,
    pub text: String,
}

/// The diff between two versions.
#[server(prefix = "/console/fn", endpoint = "templates/diff")]
pub async fn diff_versions(key: String, from: i32, to: i32) -> Result<Vec<DiffRow>, ServerFnError> {
    let who = crate::principal()?;
    let lines = herald_core::catalog::diff(&crate::db()?, &who, &key, from, to).await.map_err(crate::readable)?;
    Ok(lines.into_iter().map(|l| DiffRow { part: l.part.into(), tag: l.tag.to_string(), text: l.text }).collect())
}

/// Sends a version, rendered against the preview's sample, to one address.
#[server(prefix = "/console/fn", endpoint = "templates/test")]
pub async fn send_test(key: String, version: i32, to: String, event_type: String) -> Result<String, ServerFnError> {
    let who = crate::principal()?;
    let s = crate::state()?;
    let t = herald_core::catalog::TestSend {
        to,
        version: Some(version),
        event_type: Some(event_type).filter(|e| !e.is_empty()),
    };
    let accepted =
        herald_core::catalog::test_send(&s.db, &s.processor, &who, &key, t).await.map_err(crate::readable)?;
    Ok(format!("Test email accepted (notification {}).", accepted.id))
}

/// The event type whose sample the editor previews and test-sends with.
#[derive(Clone, Copy)]
struct SampleOf(RwSignal<String>);

/// `/templates/{key}`: the editor.
#[component]
pub fn TemplateEditor() -> impl IntoView {
    let params = use_params_map();
    let key = Memo::new(move |_| params.with(|p| p.get("key").unwrap_or_default()));
    let save = ServerAction::<SaveVersion>::new();
    let publish = ServerAction::<PublishVersion>::new();
    let test = ServerAction::<SendTest>::new();
    provide_context(test);
    // Which event type's sample to render with ("": one that routes to this template);
    // kept here so it survives the editor being rebuilt after a save or a publish.
    let sample_of = RwSignal::new(String::new());
    provide_context(SampleOf(sample_of));
    let detail =
        Resource::new(move || (key.get(), save.version().get(), publish.version().get()), |(k, ..)| template(k));
    view! {
        <Title text="Template — Herald"/>
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || {
                detail.get()
                    .map(|r| match r {
                        Ok(Some(t)) => view! { <Editor t save publish/> }.into_any(),
                        Ok(None) => view! { <NotFound/> }.into_any(),
                        Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
                    })
            }}
        </Suspense>
    }
}

#[component]
fn Editor(t: TemplateDetail, save: ServerAction<SaveVersion>, publish: ServerAction<PublishVersion>) -> impl IntoView {
    let latest = t.versions.last().cloned();
    let key = t.key.clone();
    let subject = RwSignal::new(latest.as_ref().map(|v| v.subject.clone()).unwrap_or_default());
    let html = RwSignal::new(latest.as_ref().map(|v| v.html_body.clone()).unwrap_or_default());
    let text = RwSignal::new(latest.as_ref().map(|v| v.text_body.clone()).unwrap_or_default());
    let (opens_on, clicks_on) = latest.as_ref().map(|v| (v.track_opens, v.track_clicks)).unwrap_or_default();
    // Rendered again whenever the content changes (as you type, once hydrated).
    let SampleOf(sample_of) = expect_context::<SampleOf>();
    let samples = OnceResource::new(crate::event_types::list_event_types());
    let preview = {
        let key = key.clone();
        Resource::new(
            move || (subject.get(), html.get(), text.get(), sample_of.get()),
            move |(s, h, x, e)| preview_template(key.clone(), s, h, x, e),
        )
    };
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    let numbers: Vec<i32> = t.versions.iter().map(|v| v.version).collect();
    let last = numbers.last().copied().unwrap_or(1);
    let from = RwSignal::new(numbers.len().checked_sub(2).map(|i| numbers[i]).unwrap_or(last));
    let to = RwSignal::new(last);
    let diff = {
        let key = key.clone();
        Resource::new(move || (from.get(), to.get()), move |(a, b)| diff_versions(key.clone(), a, b))
    };
    let published = t.published;
    let test = expect_context::<ServerAction<SendTest>>();
    let test_versions: Vec<i32> = numbers.iter().rev().copied().collect();
    let test_key = key.clone();
    let options = move |selected: RwSignal<i32>| {
        numbers
            .iter()
            .map(|n| {
                let n = *n;
                view! { <option value=n.to_string() selected=move || selected.get() == n>{format!("v{n}")}</option> }
            })
            .collect_view()
    };
    let (options_from, options_to) = (options.clone(), options);
    let (title_key, form_key) = (key.clone(), key.clone());
    view! {
        {move || hydrated.get().then(|| view! { <span data-testid="editor-ready" hidden=true></span> })}
        <section class="card">
            <p><a href="/templates">"← Templates"</a></p>
            <h1>"Template " <code>{title_key}</code></h1>
            <p class="status" data-testid="published">
                {match published {
                    Some(v) => format!("Published: v{v}. Deliveries record the version they used."),
                    None => "No version is published yet.".into(),
                }}
            </p>
        </section>
        <div class="split">
            <section class="card">
                <h2>"Edit"</h2>
                <ActionForm action=save>
                    <input type="hidden" name="key" value=form_key/>
                    <div class="form column">
                        <label>
                            "Subject"
                            <input type="text" name="subject" prop:value=move || subject.get()
                                on:input=move |ev| subject.set(event_target_value(&ev)) data-testid="edit-subject"/>
                        </label>
                        <label>
                            "HTML body"
                            <textarea name="html_body" rows="10" prop:value=move || html.get()
                                on:input=move |ev| html.set(event_target_value(&ev)) data-testid="edit-html">{html.get_untracked()}</textarea>
                        </label>
                        <label>
                            "Text body"
                            <textarea name="text_body" rows="6" prop:value=move || text.get()
                                on:input=move |ev| text.set(event_target_value(&ev)) data-testid="edit-text">{text.get_untracked()}</textarea>
                        </label>
                        <fieldset>
                            <legend>"Tracking (under HERALD_TRACKING; off unless ticked)"</legend>
                            <label class="inline"><input type="checkbox" name="track_opens" checked=opens_on data-testid="edit-track-opens"/>
                                " Track opens (a 1×1 image)"</label>
                            <label class="inline"><input type="checkbox" name="track_clicks" checked=clicks_on data-testid="edit-track-clicks"/>
                                " Track clicks (links through Herald; mailto:, unsubscribe and data-herald-notrack links are left alone)"</label>
                        </fieldset>
                        <button type="submit" data-testid="save-version">"Save as a new version"</button>
                    </div>
                </ActionForm>
                {move || save.value().get().map(|r| match r {
                    Ok(v) => view! { <p class="status" role="status" data-testid="save-result">{format!("Saved as v{v}.")}</p> }.into_any(),
                    Err(e) => view! { <p class="error" role="alert" data-testid="save-result">{clean(e)}</p> }.into_any(),
                })}
            </section>
            <section class="card" aria-live="polite">
                <h2>"Preview"</h2>
                <label class="inline" for="preview-sample">
                    "With the sample payload of "
                    <select id="preview-sample" data-testid="preview-sample" on:change=move |ev| sample_of.set(event_target_value(&ev))>
                        <option value="">"an event type routed to this template"</option>
                        <Suspense fallback=|| ()>
                            {move || samples.get().and_then(|r| r.ok()).flatten().map(|rows| {
                                rows.into_iter().filter(|e| !e.sample.is_empty()).map(|e| {
                                    let name = e.name.clone();
                                    view! { <option value=e.name.clone() selected=move || sample_of.get() == name>{e.name.clone()}</option> }
                                }).collect_view()
                            })}
                        </Suspense>
                    </select>
                </label>
                <Suspense fallback=|| view! { <p class="notice">"Rendering…"</p> }>
                    {move || preview.get().map(|r| match r {
                        Ok(p) => view! {
                            <p><strong>"Subject: "</strong><span data-testid="preview-subject">{p.subject}</span></p>
                            <iframe class="email" title="Preview of the HTML part (sandboxed)" sandbox="" srcdoc=p.html data-testid="preview-html"></iframe>
                            <pre tabindex="0" data-testid="preview-text">{p.text}</pre>
                        }.into_any(),
                        Err(e) => view! { <p class="error" role="alert" data-testid="preview-error">{clean(e)}</p> }.into_any(),
                    })}
                </Suspense>
            </section>
        </div>
        <section class="card">
            <h2>"Versions"</h2>
            <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit">
                <thead>
                    <tr><th scope="col">"Version"</th><th scope="col">"Saved"</th><th scope="col">"Subject"</th><th scope="col">"Tracks"</th><th scope="col"><span class="sr-only">"Actions"</span></th></tr>
                </thead>
                <tbody>
                    {t.versions.iter().rev().map(|v| {
                        let is_published = published == Some(v.version);
                        let key = key.clone();
                        let version = v.version;
                        view! {
                            <tr data-testid="version-row">
                                <td>{format!("v{}", v.version)}</td>
                                <td>{v.created.clone()}</td>
                                <td>{v.subject.clone()}</td>
                                <td data-testid="version-tracks">{v.tracks()}</td>
                                <td>
                                    {if is_published {
                                        view! { <span class="pill succeeded" data-testid="version-published">"published"</span> }.into_any()
                                    } else {
                                        view! {
                                            <ActionForm action=publish>
                                                <input type="hidden" name="key" value=key/>
                                                <input type="hidden" name="version" value=version.to_string()/>
                                                <button type="submit" data-testid=format!("publish-v{version}")>
                                                    {if published.is_some_and(|p| p > version) { "Roll back to this" } else { "Publish" }}
                                                </button>
                                            </ActionForm>
                                        }.into_any()
                                    }}
                                </td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table></div>
            {move || publish.value().get().map(|r| match r {
                Ok(m) => view! { <p class="status" role="status" data-testid="publish-result">{m}</p> }.into_any(),
                Err(e) => view! { <p class="error" role="alert" data-testid="publish-result">{clean(e)}</p> }.into_any(),
            })}
            <h3>"Send a test"</h3>
            <ActionForm action=test>
                <div class="form">
                    <input type="hidden" name="key" value=test_key/>
                    <input type="hidden" name="event_type" prop:value=move || sample_of.get()/>
                    <label for="test-version">"Version"
                        <select id="test-version" name="version" data-testid="test-version">
                            {test_versions.into_iter().map(|n| view! { <option value=n.to_string()>{format!("v{n}")}</option> }).collect_view()}
                        </select>
                    </label>
                    <label for="test-to">"To" <input id="test-to" type="email" name="to" required data-testid="test-to"/></label>
                    <button type="submit" data-testid="test-send">"Send a test email"</button>
                </div>
            </ActionForm>
            {move || test.value().get().map(|r| match r {
                Ok(m) => view! { <p class="status" role="status" data-testid="test-result">{m}</p> }.into_any(),
                Err(e) => view! { <p class="error" role="alert" data-testid="test-result">{clean(e)}</p> }.into_any(),
            })}
            <h3>"Compare versions"</h3>
            <div class="form">
                <label for="diff-from">"From"
                    <select id="diff-from" data-testid="diff-from" on:change=move |ev| from.set(event_target_value(&ev).parse().unwrap_or(1))>
                        {options_from(from)}
                    </select>
                </label>
                <label for="diff-to">"To"
                    <select id="diff-to" data-testid="diff-to" on:change=move |ev| to.set(event_target_value(&ev).parse().unwrap_or(1))>
                        {options_to(to)}
                    </select>
                </label>
            </div>
            <Suspense fallback=|| ()>
                {move || diff.get().map(|r| match r {
                    Ok(lines) => view! {
                        <pre class="diff" tabindex="0" data-testid="diff">
                            {lines.into_iter().map(|l| {
                                let class = match l.tag.as_str() { "+" => "add", "-" => "del", _ => "same" };
                                view! { <span class=class>{format!("{} {:<9} {}\n", l.tag, l.part, l.text)}</span> }
                            }).collect_view()}
                        </pre>
                    }.into_any(),
                    Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
                })}
            </Suspense>
        </section>
    }
}
