//! What happens to an endpoint besides its owner's edits: test events, and Herald
//! disabling it (410 Gone, failing too long) with the `endpoint.disabled` event.

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::endpoints::get;
use super::endpoints::target;
use crate::access::{Principal, Scope};
use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::notifications::accept::{self, Accepted, Processor, Submission};

/// Sends a `webhook.test` event to one endpoint (whatever its filter). Returns the
/// notification.
pub async fn send_test(db: &PgPool, processor: &Processor, who: &Principal, endpoint: Uuid) -> Result<Accepted> {
    who.require(Scope::EndpointsWrite)?;
    let ep = get(db, who, endpoint).await?;
    if !ep.enabled {
        return Err(Error::Conflict("the endpoint is disabled; enable it before sending a test event".into()));
    }
    let prepared = processor
        .prepare(Submission {
            event_type: "webhook.test".into(),
            payload: json!({"endpoint_id": ep.id, "message": "This is a test event from Herald."}),
            recipients: None,
            owner: ep.owner.clone(),
            key_id: who.key_id,
            operational_owner: Some(ep.owner.clone()),
            owners: None,
        })
        .await?
        .only_endpoint(ep.id);
    let mut tx = db.begin().await?;
    let accepted = accept::insert(&mut tx, prepared).await?;
    let after = json!({ "notification_id": accepted.id });
    audit::record(&mut tx, &who.actor(), "endpoint.tested", target(ep.id), None, Some(after)).await?;
    tx.commit().await?;
    Ok(accepted)
}

/// Disables an endpoint on Herald's own initiative (410 Gone, failing too long): records
/// the reason and, in the same transaction, emits `endpoint.disabled` — an email to the
/// owner if their address is known, and a webhook to the endpoints subscribed to it
/// (the same owner's, and admins'). Returns false if it was already disabled.
pub async fn disable_and_notify(db: &PgPool, processor: &Processor, id: Uuid, reason: &str) -> Result<bool> {
    let row: Option<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT e.owner, e.url, o.email FROM endpoints e LEFT JOIN owners o ON o.subject = e.owner
         WHERE e.id = $1 AND e.enabled",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    let Some((owner, url, email)) = row else { return Ok(false) };
    let now = Utc::now();
    let prepared = processor
        .prepare(Submission {
            event_type: "endpoint.disabled".into(),
            payload: json!({
                "endpoint": {"id": id, "url": url},
                "reason": reason,
                "disabled_at": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }),
            recipients: email.map(|e| vec![e]),
            owner: owner.clone(),
            key_id: None,
            operational_owner: Some(owner),
            owners: None,
        })
        .await
        .map_err(|e| Error::Internal(anyhow::Error::new(e).context("cannot prepare the endpoint.disabled event")))?;
    let mut tx = db.begin().await?;
    let changed = sqlx::query(
        "UPDATE endpoints SET enabled = false, disabled_at = $2, disabled_reason = $3, failing_since = NULL,
                updated_at = now()
         WHERE id = $1 AND enabled",
    )
    .bind(id)
    .bind(now)
    .bind(reason)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !changed {
        return Ok(false);
    }
    accept::insert(&mut tx, prepared)
        .await
        .map_err(|e| Error::Internal(anyhow::Error::new(e).context("cannot emit endpoint.disabled")))?;
    let after = json!({ "enabled": false, "disabled_reason": reason });
    audit::record(&mut tx, &Actor::system(), "endpoint.disabled", target(id), None, Some(after)).await?;
    tx.commit().await?;
    crate::cache::changed(crate::cache::ENDPOINTS);
    tracing::warn!(endpoint_id = %id, reason, "webhook endpoint disabled");
    crate::metrics::endpoint_disabled();
    Ok(true)
}
