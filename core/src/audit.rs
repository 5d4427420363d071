//! The audit log: who changed what, when, from where — append-only and hash-chained
//! (see the `…_audit.sql` migration). [`record`] writes an entry inside the caller's
//! transaction, so an entry exists exactly when its change was committed; [`verify`]
//! walks the chain.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::model::text_enum;

/// Who acts: a person (OIDC), an API key, an IdP client, Herald itself, or the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    User,
    ApiKey,
    Client,
    System,
    Cli,
}
text_enum!(ActorKind { User => "user", ApiKey => "api_key", Client => "client", System => "system", Cli => "cli" });

/// The actor of a change, with where the request came from.
#[derive(Debug, Clone)]
pub struct Actor {
    pub kind: ActorKind,
    /// The API key id, user subject, client id, `herald` or the OS user of the CLI.
    pub id: String,
    pub owner: Option<String>,
    pub request_id: Option<String>,
    /// The peer address of the request.
    pub source: Option<String>,
}

impl Actor {
    /// Herald itself (for example disabling a failing endpoint).
    pub fn system() -> Self {
        Actor { kind: ActorKind::System, id: "herald".into(), owner: None, request_id: None, source: None }
    }

    /// The `herald` command line, run by `user` on this machine.
    pub fn cli(user: &str) -> Self {
        Actor { kind: ActorKind::Cli, id: user.to_owned(), owner: None, request_id: None, source: None }
    }
}

/// What an entry is about, e.g. `("endpoint", id)`.
pub struct Target<'a> {
    pub kind: &'a str,
    pub id: String,
}

/// The advisory lock that serialises writers of the chain.
const CHAIN_LOCK: i64 = 0x4845_5241_4c44_4155; // "HERALDAU"

/// Appends an entry on `conn` (the transaction making the change). Writers queue on
/// one lock until their transaction ends, so the chain never forks; the entry commits or
/// rolls back with the change.
pub async fn record(
    conn: &mut PgConnection,
    actor: &Actor,
    action: &str,
    target: Target<'_>,
    before: Option<Value>,
    after: Option<Value>,
) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CHAIN_LOCK).execute(&mut *conn).await?;
    sqlx::query(
        "WITH head AS (SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1),
              v AS (SELECT coalesce((SELECT seq FROM head), 0) + 1 AS seq,
                           coalesce((SELECT hash FROM head), decode(repeat('00', 32), 'hex')) AS prev,
                           date_trunc('microseconds', clock_timestamp()) AS at)
         INSERT INTO audit_log (seq, at, actor_kind, actor, owner, action, target_kind, target, before, after,
                                request_id, source, prev_hash, hash)
         SELECT v.seq, v.at, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, v.prev,
                herald_audit_hash(v.prev, v.seq, v.at, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         FROM v",
    )
    .bind(actor.kind)
    .bind(&actor.id)
    .bind(&actor.owner)
    .bind(action)
    .bind(target.kind)
    .bind(&target.id)
    .bind(before)
    .bind(after)
    .bind(&actor.request_id)
    .bind(&actor.source)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Appends an entry in a transaction of its own (for acts that change nothing else,
/// such as revealing a secret).
pub async fn record_alone(
    db: &PgPool,
    actor: &Actor,
    action: &str,
    target: Target<'_>,
    after: Option<Value>,
) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    record(&mut tx, actor, action, target, None, after).await?;
    tx.commit().await
}

/// One entry, as `GET /api/v1/audit` shows it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Entry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor_kind: ActorKind,
    pub actor: String,
    pub owner: Option<String>,
    pub action: String,
    pub target_kind: Option<String>,
    pub target: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub request_id: Option<String>,
    pub source: Option<String>,
    #[serde(serialize_with = "hex_bytes")]
    pub hash: Vec<u8>,
}

fn hex_bytes<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

/// Filters for [`list`]; every one optional.
#[derive(Debug, Default)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Keyset pagination: entries before this sequence number (newest first).
    pub before: Option<i64>,
}

/// Entries matching `f`, newest first.
pub async fn list(db: &PgPool, f: &Filter, limit: i64) -> sqlx::Result<Vec<Entry>> {
    sqlx::query_as(
        "SELECT seq, at, actor_kind, actor, owner, action, target_kind, target, before, after, request_id, source, hash
         FROM audit_log
         WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2)
           AND ($3::text IS NULL OR target = $3) AND ($4::timestamptz IS NULL OR at >= $4)
           AND ($5::timestamptz IS NULL OR at < $5) AND ($6::int8 IS NULL OR seq < $6)
         ORDER BY seq DESC LIMIT $7",
    )
    .bind(&f.actor)
    .bind(&f.action)
    .bind(&f.target)
    .bind(f.since)
    .bind(f.until)
    .bind(f.before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The result of walking the chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry links to the one before and hashes to its stored hash.
    Intact { count: i64, head: Option<Vec<u8>> },
    /// The first entry that does not.
    Broken { seq: i64, reason: String },
}

/// Walks the chain from the first entry: sequence numbers without gaps, each entry's
/// `prev_hash` equal to the previous entry's hash, and each hash equal to the hash of
/// the entry's content as stored now.
pub async fn verify(db: &PgPool) -> sqlx::Result<Verdict> {
    let mut rows = sqlx::query_as::<_, (i64, Vec<u8>, Vec<u8>, Vec<u8>)>(
        "SELECT seq, prev_hash, hash,
                herald_audit_hash(prev_hash, seq, at, actor_kind, actor, owner, action, target_kind, target, before,
                                  after, request_id, source)
         FROM audit_log ORDER BY seq",
    )
    .fetch(db);
    let mut expected_seq = 1i64;
    let mut prev = vec![0u8; 32];
    while let Some((seq, prev_hash, hash, recomputed)) = rows.try_next().await? {
        if seq != expected_seq {
            return Ok(Verdict::Broken {
                seq: expected_seq,
                reason: format!("entry {expected_seq} is missing (the next one is {seq})"),
            });
        }
        if prev_hash != prev {
            return Ok(Verdict::Broken { seq, reason: "it does not link to the entry before it".into() });
        }
        if hash != recomputed {
            return Ok(Verdict::Broken { seq, reason: "its content does not match its hash".into() });
        }
        prev = hash;
        expected_seq += 1;
    }
    let count = expected_seq - 1;
    Ok(Verdict::Intact { count, head: (count > 0).then_some(prev) })
}
