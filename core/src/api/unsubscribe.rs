//! `/u/<token>`: one-click unsubscribe (RFC 8058) and the preference page. Public, no
//! credentials, no JavaScript: the sealed token is the only credential, and it names
//! one address. A forged or altered token gets a plain "not valid" page.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;
use crate::unsubscribe::{self, CategoryChoice, Preferences, Token};

/// The most a form or one-click body may be.
const MAX_FORM: usize = 16 * 1024;
/// The most a relay's webhook may be (SES includes the email's headers).
const MAX_REPORT: usize = 256 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/u/{token}", get(page).post(post).layer(axum::extract::DefaultBodyLimit::max(MAX_FORM)))
        .route("/inbound/ses", axum::routing::post(ses).layer(axum::extract::DefaultBodyLimit::max(MAX_REPORT)))
        .route("/inbound/mailgun", axum::routing::post(mailgun).layer(axum::extract::DefaultBodyLimit::max(MAX_REPORT)))
        .with_state(state)
}

fn token(s: &AppState, raw: &str) -> Option<Token> {
    let mut keys = vec![&s.config.secret_key];
    keys.extend(s.config.previous_secret_key.as_ref());
    Token::open(&keys, raw)
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, private"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("x-robots-tag", HeaderValue::from_static("noindex, nofollow"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    r
}

fn esc(s: &str) -> String {
    html_escape::encode_text(s).into_owned()
}

/// `a•••@example.net`: enough for a person to recognise, not the whole address.
fn masked(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            format!("{}•••@{domain}", local.chars().next().map(String::from).unwrap_or_default())
        }
        None => "•••".into(),
    }
}

fn invalid() -> Response {
    html(StatusCode::NOT_FOUND, shell("Link not valid", "<p>This link is not valid. It may have been cut short by your mail program: open it from the email again.</p>"))
}

fn shell(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title}</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:34rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}}h1{{font-size:1.4rem}}fieldset{{border:1px solid #ccd;border-radius:6px;margin:1rem 0;padding:.5rem 1rem}}label{{display:block;padding:.4rem 0}}button{{font:inherit;padding:.5rem 1rem;border-radius:6px;border:1px solid #335;background:#335;color:#fff;cursor:pointer}}.note{{background:#eef6ee;border-left:4px solid #3a3;padding:.5rem 1rem}}</style></head><body><main>{body}</main></body></html>",
        title = esc(title)
    )
}

fn render(t: &Token, p: &Preferences, note: Option<&str>) -> String {
    let mut body = format!("<h1>Email preferences</h1><p>For {}.</p>", esc(&masked(&t.address)));
    if let Some(n) = note {
        body.push_str(&format!("<p class=\"note\" role=\"status\">{}</p>", esc(n)));
    }
    let in_category = p.categories.iter().any(|c| c.category == t.category && c.subscribed);
    if in_category && !p.unsubscribed_from_all {
        body.push_str(&format!(
            "<form method=\"post\"><input type=\"hidden\" name=\"unsubscribe\" value=\"category\"><p><button type=\"submit\">Unsubscribe from {}</button></p></form>",
            esc(&t.category)
        ));
    }
    body.push_str("<form method=\"post\" id=\"preferences\"><input type=\"hidden\" name=\"save\" value=\"1\"><fieldset><legend>Email I want to get</legend>");
    for c in &p.categories {
        body.push_str(&format!(
            "<label><input type=\"checkbox\" name=\"category\" value=\"{v}\"{checked}> {v}</label>",
            v = esc(&c.category),
            checked = if c.subscribed { " checked" } else { "" }
        ));
    }
    body.push_str(&format!(
        "</fieldset><label><input type=\"checkbox\" name=\"all\" value=\"1\"{}> Unsubscribe from all of these</label><p><button type=\"submit\">Save</button></p></form><p><small>Messages about your account, such as password resets and security notices, are always sent.</small></p>",
        if p.unsubscribed_from_all { " checked" } else { "" }
    ));
    shell("Email preferences", &body)
}

async fn page(State(s): State<AppState>, Path(raw): Path<String>) -> Response {
    let Some(t) = token(&s, &raw) else { return invalid() };
    match unsubscribe::preferences(&s.db, &t.address).await {
        Ok(p) => html(StatusCode::OK, render(&t, &p, None)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a recipient's preferences");
            html(
                StatusCode::SERVICE_UNAVAILABLE,
                shell("Try again", "<p>Something went wrong. Please try again in a moment.</p>"),
            )
        }
    }
}

async fn post(State(s): State<AppState>, Path(raw): Path<String>, body: Bytes) -> Response {
    let Some(t) = token(&s, &raw) else { return invalid() };
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let has = |k: &str, v: &str| fields.iter().any(|(a, b)| a == k && b == v);
    let outcome = if has("List-Unsubscribe", "One-Click") || has("unsubscribe", "category") {
        // RFC 8058: a mail provider's POST, with no page and no login; or the page's button.
        let source = if has("List-Unsubscribe", "One-Click") { "one_click" } else { "preferences" };
        unsubscribe::unsubscribe(&s.db, &t.address, Some(&t.category), source, Some(t.delivery))
            .await
            .map(|_| format!("You are unsubscribed from {}.", t.category))
    } else if has("save", "1") {
        let chosen: Vec<&str> = fields.iter().filter(|(k, _)| k == "category").map(|(_, v)| v.as_str()).collect();
        let known = match unsubscribe::preferences(&s.db, &t.address).await {
            Ok(p) => p,
            Err(e) => return retry(e),
        };
        let want = Preferences {
            categories: known
                .categories
                .iter()
                .map(|c| CategoryChoice {
                    category: c.category.clone(),
                    subscribed: chosen.contains(&c.category.as_str()),
                })
                .collect(),
            unsubscribed_from_all: has("all", "1"),
        };
        match unsubscribe::set_preferences(&s.db, &t.address, &want, "preferences").await {
            Ok(_) => Ok("Your preferences are saved.".to_owned()),
            Err(crate::error::Error::Invalid(m)) => Ok(m),
            Err(e) => return retry(anyhow::anyhow!("{e}")),
        }
    } else {
        return html(StatusCode::BAD_REQUEST, shell("Not understood", "<p>That request was not understood.</p>"));
    };
    let note = match outcome {
        Ok(n) => n,
        Err(e) => return retry(e),
    };
    if has("List-Unsubscribe", "One-Click") {
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "unsubscribed\n")
            .into_response();
    }
    match unsubscribe::preferences(&s.db, &t.address).await {
        Ok(p) => html(StatusCode::OK, render(&t, &p, Some(&note))),
        Err(e) => retry(e),
    }
}

fn retry(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "cannot change a recipient's preferences");
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        shell("Try again", "<p>Something went wrong. Please try again in a moment.</p>"),
    )
}

/// `POST /inbound/ses`: SES bounce and complaint notifications through SNS.
async fn ses(State(s): State<AppState>, body: Bytes) -> Response {
    let r = s.relay_hooks.sns(&s.db, &body).await;
    relay_answer("ses", r)
}

/// `POST /inbound/mailgun`: Mailgun's `failed` and `complained` webhooks.
async fn mailgun(State(s): State<AppState>, body: Bytes) -> Response {
    let r = s.relay_hooks.mailgun(&s.db, &body).await;
    relay_answer("mailgun", r)
}

fn relay_answer(source: &str, r: sqlx::Result<crate::relay_webhooks::Outcome>) -> Response {
    use crate::relay_webhooks::Outcome;
    let (status, what) = match r {
        Ok(Outcome::Recorded) => (StatusCode::OK, "recorded"),
        Ok(Outcome::Dropped(why)) => {
            crate::metrics::inbound_dropped(source, why);
            (StatusCode::OK, why)
        }
        Ok(Outcome::Refused("not_configured")) => (StatusCode::NOT_FOUND, "not found"),
        Ok(Outcome::Refused(why)) => {
            crate::metrics::inbound_dropped(source, why);
            tracing::warn!(source, why, "relay webhook refused");
            (StatusCode::FORBIDDEN, why)
        }
        Err(e) => {
            tracing::warn!(source, error = %e, "cannot record a relay webhook; the relay will retry");
            (StatusCode::SERVICE_UNAVAILABLE, "try again later")
        }
    };
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{what}\n")).into_response()
}
