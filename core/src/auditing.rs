//! The audit log as callers read it (the store and the chain are `audit`): admins only,
//! through the access policy like every other operation.

use sqlx::PgPool;

use crate::access::Principal;
use crate::audit::{self, Entry, Filter, Verdict};
use crate::error::Result;

/// Entries matching `f`, newest first (admins).
pub async fn list(db: &PgPool, who: &Principal, f: &Filter, limit: i64) -> Result<Vec<Entry>> {
    who.require_admin()?;
    Ok(audit::list(db, f, limit).await?)
}

/// The chain's state for the console (admins): verified from the newest stored
/// checkpoint, so a view costs the entries written since the last one, never the whole
/// chain.
pub async fn chain(db: &PgPool, who: &Principal) -> Result<Verdict> {
    who.require_admin()?;
    Ok(audit::verify_incremental(db).await?)
}
