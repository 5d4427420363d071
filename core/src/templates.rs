//! Template rendering with MiniJinja, strict about undefined variables.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

/// One published version of an email template.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EmailTemplate {
    pub key: String,
    pub version: i32,
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
    /// Email tracking, opted into per version (see `tracking`).
    pub track_opens: bool,
    pub track_clicks: bool,
}

/// What a delivery sends: fixed at acceptance so every retry sends the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RenderedEmail {
    pub template: String,
    pub version: i32,
    pub subject: String,
    pub html: String,
    pub text: String,
    /// The version's tracking choices, applied when the email is sent (under
    /// `HERALD_TRACKING`); the stored content stays as rendered.
    #[serde(default)]
    pub track_opens: bool,
    #[serde(default)]
    pub track_clicks: bool,
    /// The category a recipient may unsubscribe from (non-transactional mail): the
    /// email then carries `List-Unsubscribe` and each recipient's own links in place of
    /// the `unsubscribe::*_MARKER`s. `None` for transactional mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<String>,
}

/// Renders subject, HTML (auto-escaped) and text bodies against `context`.
/// An undefined variable is an error naming the part that failed.
pub fn render_email(t: &EmailTemplate, context: &serde_json::Value) -> Result<RenderedEmail, String> {
    render_email_for(t, context, None)
}

/// [`render_email`] for mail of an event type: non-transactional mail (`unsubscribe`
/// is its category) gets `unsubscribe_url` and `preferences_url` (each recipient's own
/// when sent); transactional mail gets them empty.
pub fn render_email_for(
    t: &EmailTemplate,
    context: &serde_json::Value,
    unsubscribe: Option<&str>,
) -> Result<RenderedEmail, String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|name| if name == "html" { AutoEscape::Html } else { AutoEscape::None });
    let (u, p) = match unsubscribe {
        Some(_) => (crate::unsubscribe::UNSUBSCRIBE_MARKER, crate::unsubscribe::PREFERENCES_MARKER),
        None => ("", ""),
    };
    let ctx =
        minijinja::context! { unsubscribe_url => u, preferences_url => p, ..minijinja::Value::from_serialize(context) };
    // "html of template 'welcome' v3, line 2: undefined value (user.nickname)": the part,
    // the line and what went wrong, for a person fixing the template.
    let describe = |part: &str, e: minijinja::Error| {
        let version = if t.version > 0 { format!("v{}", t.version) } else { "(unsaved)".to_owned() };
        let line = e.line().map(|l| format!(", line {l}")).unwrap_or_default();
        let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
        format!("{part} of template '{}' {version}{line}: {}{detail}", t.key, e.kind())
    };
    let mut render = |part: &'static str, source: &str| -> Result<String, String> {
        env.add_template_owned(part, source.to_owned()).map_err(|e| describe(part, e))?;
        env.get_template(part).and_then(|tmpl| tmpl.render(&ctx)).map_err(|e| describe(part, e))
    };
    let subject = render("subject", &t.subject)?;
    let html = render("html", &t.html_body)?;
    let text = render("text", &t.text_body)?;
    // A subject is one header line.
    let subject = subject.split(['\r', '\n']).map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
    Ok(RenderedEmail {
        template: t.key.clone(),
        version: t.version,
        subject,
        html,
        text,
        track_opens: t.track_opens,
        track_clicks: t.track_clicks,
        unsubscribe: unsubscribe.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmpl(subject: &str, html: &str) -> EmailTemplate {
        EmailTemplate {
            key: "t".into(),
            version: 1,
            subject: subject.into(),
            html_body: html.into(),
            text_body: "Hi {{ user.name }}".into(),
            track_opens: false,
            track_clicks: false,
        }
    }

    #[test]
    fn renders_and_escapes_html_only() {
        let r = render_email(
            &tmpl("Hi {{ user.name }}\r\nBcc: x", "<b>{{ user.name }}</b>"),
            &json!({"user": {"name": "A&B"}}),
        )
        .unwrap();
        assert_eq!(r.subject, "Hi A&B Bcc: x");
        assert_eq!(r.html, "<b>A&amp;B</b>");
        assert_eq!(r.text, "Hi A&B");
    }

    #[test]
    fn undefined_is_an_error() {
        let e = render_email(&tmpl("{{ user.nickname }}", ""), &json!({"user": {"name": "A"}})).unwrap_err();
        assert!(e.contains("subject"), "{e}");
        assert!(e.contains("undefined"), "{e}");
        let e = render_email(&tmpl("Hi", "<p>\n{{ user.nickname }}</p>"), &json!({"user": {}})).unwrap_err();
        assert!(e.starts_with("html of template") && e.contains("line 2: undefined value"), "{e}");
    }
}
