//! Event types and routing (admins): the list, and one form to create or edit a type's
//! description, JSON Schema, sample payload and email routing (template, recipient
//! path). The server checks everything through `herald_core::catalog` (the schema is a
//! schema, the sample matches it, the template is published, the path leads to an
//! address) and the form shows each problem next to its field.

// A server function takes one argument per form field.
#![allow(clippy::too_many_arguments)]

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;
use serde::{Deserialize, Serialize};

use crate::{clean, NotFound};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTypeRow {
    pub name: String,
    pub description: String,
    pub schema: String,
    pub sample: String,
    pub template: String,
    pub recipient_path: String,
    pub visibility: String,
    /// Comma-separated.
    pub grants: String,
    pub operational: bool,
    pub category: String,
    pub transactional: bool,
}

/// Event types as the console shows them (schema and sample pretty-printed).
#[cfg(feature = "ssr")]
fn rows(types: Vec<herald_core::catalog::EventType>) -> Vec<EventTypeRow> {
    let pretty = |v: Option<serde_json::Value>| {
        v.map(|v| serde_json::to_string_pretty(&v).unwrap_or_default()).unwrap_or_default()
    };
    types
        .into_iter()
        .map(|e| EventTypeRow {
            name: e.name,
            description: e.description,
            schema: pretty(e.payload_schema),
            sample: pretty(e.sample_payload),
            template: e.email_template.unwrap_or_default(),
            recipient_path: e.recipient_path.unwrap_or_default(),
            visibility: e.visibility,
            grants: e.grants.join(", "),
            operational: e.operational,
            category: e.category,
            transactional: e.transactional,
        })
        .collect()
}

/// The catalog's event types (admins; `None` for anyone else).
#[server(prefix = "/console/fn", endpoint = "event-types/list")]
pub async fn list_event_types() -> Result<Option<Vec<EventTypeRow>>, ServerFnError> {
    let who = crate::principal()?;
    Ok(crate::allowed(herald_core::catalog::list_event_types(&crate::db()?, &who).await)?.map(rows))
}

/// The event catalog as the caller sees it (an owner: the types they may receive).
#[server(prefix = "/console/fn", endpoint = "catalog")]
pub async fn catalog() -> Result<Option<Vec<EventTypeRow>>, ServerFnError> {
    let who = crate::principal()?;
    let types = herald_core::catalog::receivable_event_types(&crate::db()?, &who).await.map_err(crate::readable)?;
    Ok(Some(rows(types)))
}

/// `/catalog`: the event types the user may receive, with schema and example.
#[component]
pub fn CatalogPage() -> impl IntoView {
    let list = OnceResource::new(catalog());
    view! {
        <Title text="Event catalog — Herald"/>
        <section class="card">
            <h1>"Event catalog"</h1>
            <p class="status">"The events your webhook endpoints can subscribe to."</p>
        </section>
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || list.get().map(|r| match r {
                Ok(rows) => rows.unwrap_or_default().into_iter().map(|e| view! {
                    <section class="card" data-testid="catalog-entry">
                        <h2><code>{e.name.clone()}</code></h2>
                        <p>{if e.description.is_empty() { "No description.".to_owned() } else { e.description.clone() }}</p>
                        {(!e.schema.is_empty()).then(|| view! {
                            <details><summary>"JSON Schema"</summary><pre class="json" tabindex="0">{e.schema.clone()}</pre></details>
                        })}
                        {(!e.sample.is_empty()).then(|| view! {
                            <details open=true><summary>"Example payload"</summary><pre class="json" tabindex="0">{e.sample.clone()}</pre></details>
                        })}
                    </section>
                }).collect_view().into_any(),
                Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
            })}
        </Suspense>
    }
}

/// Creates (`original` empty) or updates an event type. JSON fields left empty are
/// cleared. Errors start with the field they are about.
#[server(prefix = "/console/fn", endpoint = "event-types/save")]
pub async fn save_event_type(
    original: String,
    name: String,
    description: String,
    payload_schema: String,
    sample_payload: String,
    email_template: String,
    recipient_path: String,
    visibility: String,
    grants: String,
    #[server(default)] category: String,
    #[server(default)] transactional: String,
) -> Result<String, ServerFnError> {
    use herald_core::catalog::{self, EventTypePatch, NewEventType};
    use herald_core::error::Error;
    let who = crate::principal()?;
    let json = |field: &str, v: &str| -> Result<Option<serde_json::Value>, ServerFnError> {
        if v.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(v).map(Some).map_err(|e| ServerFnError::new(format!("{field} is not JSON: {e}")))
    };
    let text = |v: &str| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
    let (schema, sample) = (json("payload_schema", &payload_schema)?, json("sample_payload", &sample_payload)?);
    let grants: Vec<String> =
        grants.split([',', '\n']).map(str::trim).filter(|g| !g.is_empty()).map(str::to_owned).collect();
    let db = crate::db()?;
    let shown = |e: Error| match e {
        Error::SchemaViolation { errors, .. } => ServerFnError::new(format!(
            "sample_payload does not match the schema: {}",
            errors.iter().map(|f| format!("{} {}", f.pointer, f.message)).collect::<Vec<_>>().join("; ")
        )),
        other => crate::readable(other),
    };
    let saved = if original.is_empty() {
        let new = NewEventType {
            name: name.trim().to_owned(),
            description,
            payload_schema: schema,
            sample_payload: sample,
            email_template: text(&email_template),
            recipient_path: text(&recipient_path),
            visibility: text(&visibility),
            grants,
            category: text(&category),
            transactional: !transactional.is_empty(),
        };
        catalog::create_event_type(&db, &who, new).await.map_err(shown)?
    } else {
        let patch = EventTypePatch {
            description: Some(description),
            payload_schema: Some(schema),
            sample_payload: Some(sample),
            email_template: Some(text(&email_template)),
            recipient_path: Some(text(&recipient_path)),
            visibility: text(&visibility),
            grants: Some(grants),
            category: text(&category),
            transactional: Some(!transactional.is_empty()),
        };
        catalog::update_event_type(&db, &who, &original, patch).await.map_err(shown)?
    };
    Ok(saved.name)
}

/// The field an error message is about (it starts with or names it).
fn field_of(message: &str) -> &'static str {
    const FIELDS: [&str; 7] =
        ["payload_schema", "sample_payload", "email_template", "recipient_path", "description", "category", "name"];
    FIELDS.into_iter().find(|f| message.contains(f)).unwrap_or("form")
}

/// `/event-types`: the list and a new type.
#[component]
pub fn EventTypesPage() -> impl IntoView {
    let save = ServerAction::<SaveEventType>::new();
    let list = Resource::new(move || save.version().get(), |_| list_event_types());
    view! {
        <Title text="Event types — Herald"/>
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || {
                list.get()
                    .map(|r| match r {
                        Ok(Some(rows)) => {
                            view! {
                                <section class="card">
                                    <h1>"Event types"</h1>
                                    <div class="scroll" tabindex="0" role="region" aria-label="Scrollable table"><table class="audit">
                                        <thead>
                                            <tr>
                                                <th scope="col">"Name"</th>
                                                <th scope="col">"Description"</th>
                                                <th scope="col">"Email template"</th>
                                                <th scope="col">"Recipient"</th>
                                                <th scope="col">"Who receives it"</th>
                                            </tr>
                                        </thead>
                                        <tbody>
                                            {rows
                                                .into_iter()
                                                .map(|e| {
                                                    let name = if e.operational {
                                                        view! { <span>{e.name.clone()} " (Herald's own)"</span> }.into_any()
                                                    } else {
                                                        view! { <a href=format!("/event-types/{}", e.name)>{e.name.clone()}</a> }.into_any()
                                                    };
                                                    view! {
                                                        <tr data-testid="event-type-row">
                                                            <td>{name}</td>
                                                            <td>{e.description}</td>
                                                            <td>{e.template}</td>
                                                            <td>{e.recipient_path}</td>
                                                            <td data-testid="event-type-visibility">
                                                                {match e.visibility.as_str() {
                                                                    "granted" => format!("granted: {}", e.grants),
                                                                    other => other.to_owned(),
                                                                }}
                                                            </td>
                                                        </tr>
                                                    }
                                                })
                                                .collect_view()}
                                        </tbody>
                                    </table></div>
                                </section>
                                <section class="card">
                                    <h2>"New event type"</h2>
                                    <EventTypeForm e=EventTypeRow::default() save/>
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

/// `/event-types/{name}`: edit one.
#[component]
pub fn EventTypeEdit() -> impl IntoView {
    let params = use_params_map();
    let name = Memo::new(move |_| params.with(|p| p.get("name").unwrap_or_default()));
    let save = ServerAction::<SaveEventType>::new();
    let list = Resource::new(move || save.version().get(), |_| list_event_types());
    view! {
        <Title text="Event type — Herald"/>
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || {
                list.get()
                    .map(|r| match r.map(|rows| rows.and_then(|rows| rows.into_iter().find(|e| e.name == name.get() && !e.operational))) {
                        Ok(Some(e)) => view! {
                            <section class="card">
                                <p><a href="/event-types">"← Event types"</a></p>
                                <h1>"Event type " <code>{e.name.clone()}</code></h1>
                                <EventTypeForm e save/>
                            </section>
                        }.into_any(),
                        Ok(None) => view! { <NotFound/> }.into_any(),
                        Err(e) => view! { <p class="error" role="alert">{clean(e)}</p> }.into_any(),
                    })
            }}
        </Suspense>
    }
}

/// The create/edit form; a problem appears under the field it is about.
#[component]
fn EventTypeForm(e: EventTypeRow, save: ServerAction<SaveEventType>) -> impl IntoView {
    let editing = !e.name.is_empty();
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    let problem = move |field: &'static str| {
        move || {
            save.value().get().and_then(|r| r.err()).map(clean).filter(|m| field_of(m) == field).map(|m| {
                view! { <span class="error" role="alert" data-testid=format!("error-{field}")>{m}</span> }
            })
        }
    };
    // The control a problem is about says so to assistive technology too.
    let invalid = move |field: &'static str| {
        move || save.value().get().and_then(|r| r.err()).map(clean).filter(|m| field_of(m) == field).map(|_| "true")
    };
    view! {
        {move || hydrated.get().then(|| view! { <span data-testid="event-type-ready" hidden=true></span> })}
        <ActionForm action=save>
            <input type="hidden" name="original" value=if editing { e.name.clone() } else { String::new() }/>
            <div class="form column">
                <label>
                    "Name"
                    <input type="text" name="name" value=e.name.clone() readonly=editing required aria-invalid=invalid("name") data-testid="et-name"/>
                    {problem("name")}
                </label>
                <label>
                    "Description"
                    <input type="text" name="description" value=e.description.clone() aria-invalid=invalid("description") data-testid="et-description"/>
                    {problem("description")}
                </label>
                <label>
                    "Payload JSON Schema (empty: any payload)"
                    <textarea name="payload_schema" rows="8" aria-invalid=invalid("payload_schema") data-testid="et-schema">{e.schema.clone()}</textarea>
                    {problem("payload_schema")}
                </label>
                <label>
                    "Sample payload (checked against the schema; templates preview with it)"
                    <textarea name="sample_payload" rows="6" aria-invalid=invalid("sample_payload") data-testid="et-sample">{e.sample.clone()}</textarea>
                    {problem("sample_payload")}
                </label>
                <label>
                    "Email template (a published template's key; empty: no email)"
                    <input type="text" name="email_template" value=e.template.clone() aria-invalid=invalid("email_template") data-testid="et-template"/>
                    {problem("email_template")}
                </label>
                <label>
                    "Recipient path in the payload (such as user.email)"
                    <input type="text" name="recipient_path" value=e.recipient_path.clone() aria-invalid=invalid("recipient_path") data-testid="et-recipient"/>
                    {problem("recipient_path")}
                </label>
                <label>
                    "Who receives its webhooks"
                    <select name="visibility" aria-invalid=invalid("visibility") data-testid="et-visibility">
                        {[("public", "every owner (public)"), ("internal", "admins only (internal)"), ("granted", "the owners granted below")]
                            .into_iter()
                            .map(|(v, label)| view! { <option value=v selected=e.visibility == v || (e.visibility.is_empty() && v == "public")>{label}</option> })
                            .collect_view()}
                    </select>
                    {problem("visibility")}
                </label>
                <label>
                    "Granted owners (teams or user:<subject>, comma-separated)"
                    <input type="text" name="grants" value=e.grants.clone() aria-invalid=invalid("grants") data-testid="et-grants"/>
                    {problem("grants")}
                </label>
                <label>
                    "Unsubscribe category (such as product-news; empty: general)"
                    <input type="text" name="category" value=e.category.clone() aria-invalid=invalid("category") data-testid="et-category"/>
                    {problem("category")}
                </label>
                <label class="check">
                    <input type="checkbox" name="transactional" value="on" checked=e.transactional data-testid="et-transactional"/>
                    " Transactional (password resets, security notices): never unsubscribable, no List-Unsubscribe"
                </label>
                <button type="submit" data-testid="et-save">{if editing { "Save" } else { "Create" }}</button>
            </div>
        </ActionForm>
        {move || save.value().get().map(|r| match r {
            Ok(name) => view! { <p class="status" role="status" data-testid="et-saved">"Saved " {name}"."</p> }.into_any(),
            Err(e) => {
                let m = clean(e);
                (field_of(&m) == "form").then(|| view! { <p class="error" role="alert" data-testid="error-form">{m}</p> }).into_any()
            }
        })}
    }
}
