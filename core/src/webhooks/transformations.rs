//! Endpoint transformations as owners use them: trying a script against a sample event
//! before saving it, and the checks a transformed webhook passes before it is sent
//! (the same for the dispatcher and the trial). The sandbox is `crate::transform`.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::access::{Principal, Scope};
use crate::error::{Error, Result};
use crate::ssrf::Guard;
use crate::transform::{self, Limits, Outcome, Webhook};

/// Trials running at once in this process (each holds a blocking thread for at most the
/// time limit); more wait their turn.
const TRIALS_AT_ONCE: usize = 2;
static TRIALS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(TRIALS_AT_ONCE));

/// `POST /api/v1/transformations/test` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Trial {
    /// The script: it must define `function handler(webhook)`.
    pub script: String,
    /// The webhook to run it on; a sample `user.registered` event when absent.
    #[serde(default)]
    pub webhook: Option<Webhook>,
}

/// What a trial made of the webhook.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrialResult {
    /// `send`, `cancel` or `error`.
    pub outcome: String,
    /// The webhook as it would be sent (`send` only).
    pub webhook: Option<Webhook>,
    /// Why it failed (`error` only): the message an attempt would record.
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// The sample event a trial runs on when none is given.
pub fn sample() -> Webhook {
    Webhook {
        event_type: "user.registered".into(),
        payload: json!({
            "type": "user.registered",
            "timestamp": "2026-12-07T12:00:00.000Z",
            "data": {"user": {"name": "Ada Lovelace", "email": "ada@example.com"}}
        }),
        url: "https://example.com/webhooks".into(),
        headers: BTreeMap::new(),
    }
}

/// Runs a script on a sample (or given) webhook for its owner, under the limits every
/// attempt has, and checks the result as the dispatcher would.
pub async fn trial(who: &Principal, guard: &Guard, t: Trial) -> Result<TrialResult> {
    who.require(Scope::EndpointsWrite)?;
    if t.script.len() > transform::MAX_SCRIPT_BYTES {
        return Err(Error::Invalid(format!("script must be at most {} KiB", transform::MAX_SCRIPT_BYTES >> 10)));
    }
    let input = t.webhook.unwrap_or_else(sample);
    let _turn = TRIALS.acquire().await.map_err(|e| anyhow::anyhow!("trials: {e}"))?;
    let started = Instant::now();
    let ran = transform::run_blocking(Arc::from(t.script), input, Limits::default()).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    Ok(match ran.map_err(|f| f.0).and_then(|o| checked(guard, o).map_err(|e| e.to_string())) {
        Ok(None) => TrialResult { outcome: "cancel".into(), webhook: None, error: None, duration_ms },
        Ok(Some((w, _))) => TrialResult { outcome: "send".into(), webhook: Some(w), error: None, duration_ms },
        Err(e) => TrialResult { outcome: "error".into(), webhook: None, error: Some(e), duration_ms },
    })
}

/// What a transformation returned, checked before it is sent: `None` when it cancelled,
/// else the webhook, its URL (http or https, no credentials, allowed by the SSRF guard)
/// and its body. Headers follow the rules of an endpoint's custom headers.
pub fn checked(guard: &Guard, out: Outcome) -> std::result::Result<Option<(Webhook, String)>, TransformedInvalid> {
    let w = match out {
        Outcome::Cancel => return Ok(None),
        Outcome::Send(w) => w,
    };
    let url: reqwest::Url = w.url.parse().map_err(|e| TransformedInvalid(format!("url is not valid: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.as_str().len() > 2048 {
        return Err(TransformedInvalid("url must be an http or https URL of at most 2048 characters".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TransformedInvalid("url must not contain credentials".into()));
    }
    if guard.check_url(&url).is_err() {
        return Err(TransformedInvalid(crate::ssrf::REFUSED_BY_POLICY.into()));
    }
    crate::webhooks::endpoints::check_headers(&w.headers).map_err(|e| TransformedInvalid(e.to_string()))?;
    let body = serde_json::to_string(&w.payload).map_err(|e| TransformedInvalid(e.to_string()))?;
    Ok(Some((Webhook { url: url.to_string(), ..w }, body)))
}

/// Why a transformed webhook cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformedInvalid(pub String);

impl std::fmt::Display for TransformedInvalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the transformed webhook: {}", self.0)
    }
}
