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

/// What the chain's key is derived from `HERALD_SECRET_KEY` with.
const CHAIN_KEY_LABEL: &[u8] = b"herald/audit-chain/v1";

/// The chain's key, derived from `HERALD_SECRET_KEY` (`use_key`, at start). The
/// database never sees it, so the database's own role cannot extend the chain.
static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();

/// Loads the chain's key from Herald's secret key. One process, one key: a second,
/// different key is refused.
pub fn use_key(secret: &crate::secrets::SecretKey) -> anyhow::Result<()> {
    let derived = secret.derive(CHAIN_KEY_LABEL);
    let held = KEY.get_or_init(|| derived);
    anyhow::ensure!(*held == derived, "the audit chain's key is already loaded with another HERALD_SECRET_KEY");
    Ok(())
}

fn key() -> sqlx::Result<&'static [u8; 32]> {
    KEY.get().ok_or_else(|| sqlx::Error::Protocol("the audit chain's key is not loaded (HERALD_SECRET_KEY)".into()))
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A keyed entry's hash: HMAC-SHA256(key, prev_hash ‖ canonical content).
fn keyed_hash(key: &[u8; 32], prev: &[u8], canonical: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(prev);
    mac.update(canonical);
    mac.finalize().into_bytes().to_vec()
}

/// An entry from before the chain was keyed: SHA-256(prev_hash ‖ canonical content).
fn unkeyed_hash(prev: &[u8], canonical: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().to_vec()
}

/// Appends an entry on `conn` (the transaction making the change). Writers queue on
/// one lock until their transaction ends, so the chain never forks; the entry commits or
/// rolls back with the change. The database computes the canonical bytes; the hash is
/// made here, under the chain's key.
pub async fn record(
    conn: &mut PgConnection,
    actor: &Actor,
    action: &str,
    target: Target<'_>,
    before: Option<Value>,
    after: Option<Value>,
) -> sqlx::Result<()> {
    let key = key()?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CHAIN_LOCK).execute(&mut *conn).await?;
    let (seq, prev, at, canonical): (i64, Vec<u8>, DateTime<Utc>, Vec<u8>) = sqlx::query_as(
        "WITH head AS (SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1),
              v AS (SELECT coalesce((SELECT seq FROM head), 0) + 1 AS seq,
                           coalesce((SELECT hash FROM head), decode(repeat('00', 32), 'hex')) AS prev,
                           date_trunc('microseconds', clock_timestamp()) AS at)
         SELECT v.seq, v.prev, v.at, herald_audit_canonical(v.seq, v.at, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         FROM v",
    )
    .bind(actor.kind)
    .bind(&actor.id)
    .bind(&actor.owner)
    .bind(action)
    .bind(target.kind)
    .bind(&target.id)
    .bind(&before)
    .bind(&after)
    .bind(&actor.request_id)
    .bind(&actor.source)
    .fetch_one(&mut *conn)
    .await?;
    let hash = keyed_hash(key, &prev, &canonical);
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor_kind, actor, owner, action, target_kind, target, before, after,
                                request_id, source, prev_hash, hash, keyed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, true)",
    )
    .bind(seq)
    .bind(at)
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
    .bind(prev)
    .bind(hash)
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
    /// Every entry links to the one before and hashes to its stored hash. `unkeyed`:
    /// how many of them (the oldest) were written before the chain was keyed.
    Intact { count: i64, head: Option<Vec<u8>>, unkeyed: i64 },
    /// The first entry that does not.
    Broken { seq: i64, reason: String },
}

/// A point of the chain: an entry's sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: Vec<u8>,
}

impl Checkpoint {
    /// The checkpoint's tag: HMAC under the chain's key, so only a holder of
    /// `HERALD_SECRET_KEY` can make one.
    fn tag(&self, key: &[u8; 32]) -> Vec<u8> {
        keyed_hash(key, b"herald-audit-checkpoint/v1", &[&self.seq.to_be_bytes()[..], &self.hash].concat())
    }

    /// The line `herald audit checkpoint` prints, to keep outside the database.
    pub fn signed_line(&self) -> sqlx::Result<String> {
        Ok(format!(
            "herald-audit-checkpoint v1 seq={} hash={} tag={}",
            self.seq,
            hex::encode(&self.hash),
            hex::encode(self.tag(key()?))
        ))
    }

    /// Reads a line of [`Checkpoint::signed_line`], checking its tag.
    pub fn parse_signed(line: &str) -> Result<Checkpoint, String> {
        let mut seq = None;
        let mut hash = None;
        let mut tag = None;
        let mut words = line.split_whitespace();
        if (words.next(), words.next()) != (Some("herald-audit-checkpoint"), Some("v1")) {
            return Err("not a checkpoint line (it starts with 'herald-audit-checkpoint v1')".into());
        }
        for w in words {
            match w.split_once('=') {
                Some(("seq", v)) => seq = v.parse::<i64>().ok(),
                Some(("hash", v)) => hash = hex::decode(v).ok(),
                Some(("tag", v)) => tag = hex::decode(v).ok(),
                _ => {
                    return Err(format!(
                        "unexpected '{}' in the checkpoint line",
                        w.chars().take(40).collect::<String>()
                    ))
                }
            }
        }
        let (Some(seq), Some(hash), Some(tag)) = (seq, hash, tag) else {
            return Err("the checkpoint line needs seq=, hash= and tag=".into());
        };
        let cp = Checkpoint { seq, hash };
        let key = key().map_err(|e| e.to_string())?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&cp.tag(key)[..], &tag[..])) {
            return Err(
                "the checkpoint's tag is not valid under this HERALD_SECRET_KEY (forged, or another key)".into()
            );
        }
        Ok(cp)
    }
}

/// The action of the entry a key rotation ends the old key's segment with.
pub const KEY_ROTATED: &str = "secret_key.rotated";
const CHAIN_KEY_PURPOSE: &str = "audit-chain-key";

/// The chain's keys by segment. A key rotation (`record_key_rotation`) ends a segment with a
/// [`KEY_ROTATED`] entry — hashed under that segment's key, like every entry of it —
/// carrying the segment's key sealed under the next segment's key. From the current key
/// alone, the walk opens them newest first; a rotation entry whose key does not open
/// (altered, forged, or another `HERALD_SECRET_KEY`) breaks the chain there.
struct Schedule(Vec<(i64, [u8; 32])>);

impl Schedule {
    /// The key of the segment holding entry `seq`.
    fn key_for(&self, seq: i64) -> &[u8; 32] {
        &self.0.iter().find(|(last, _)| seq <= *last).expect("the last segment is unbounded").1
    }
}

fn seal_chain_key(next: &[u8; 32], previous: &[u8; 32]) -> String {
    crate::secrets::SecretKey::from_bytes(*next).seal_for(CHAIN_KEY_PURPOSE, previous)
}

fn open_chain_key(next: &[u8; 32], sealed: &str) -> Option<[u8; 32]> {
    crate::secrets::SecretKey::from_bytes(*next).open_for(CHAIN_KEY_PURPOSE, sealed)?.try_into().ok()
}

async fn key_schedule(db: &PgPool) -> sqlx::Result<Result<Schedule, Verdict>> {
    let mut k = *key()?;
    let rows: Vec<(i64, Option<Value>)> =
        sqlx::query_as("SELECT seq, after FROM audit_log WHERE action = $1 ORDER BY seq DESC")
            .bind(KEY_ROTATED)
            .fetch_all(db)
            .await?;
    let mut segments = vec![(i64::MAX, k)];
    for (seq, after) in rows {
        let sealed = after.as_ref().and_then(|a| a.get("previous_chain_key")).and_then(Value::as_str);
        match sealed.and_then(|s| open_chain_key(&k, s)) {
            Some(previous) => {
                segments.push((seq, previous));
                k = previous;
            }
            None => {
                return Ok(Err(Verdict::Broken {
                    seq,
                    reason: "a key rotation whose previous key does not open under the key after it \
                             (altered, or another HERALD_SECRET_KEY)"
                        .into(),
                }))
            }
        }
    }
    segments.reverse();
    Ok(Ok(Schedule(segments)))
}

/// Takes the chain's writer lock for the rest of `conn`'s transaction: no entry is
/// appended by anyone else until it ends.
pub async fn lock_chain(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CHAIN_LOCK).execute(&mut *conn).await?;
    Ok(())
}

/// Ends the current key's segment of the chain (`rekey::rotate_secret_key`): a
/// [`KEY_ROTATED`] entry, hashed under the current chain key like the rest of its
/// segment, carrying that key sealed under `new`'s chain key, so walks with `new` alone
/// verify every entry. `after` adds what the rotation did. Returns the entry's number.
pub async fn record_key_rotation(
    conn: &mut PgConnection,
    actor: &Actor,
    new: &crate::secrets::SecretKey,
    mut after: Value,
) -> sqlx::Result<i64> {
    let old_chain = *key()?;
    let new_chain = new.derive(CHAIN_KEY_LABEL);
    after["previous_chain_key"] = Value::String(seal_chain_key(&new_chain, &old_chain));
    record(conn, actor, KEY_ROTATED, Target { kind: "herald", id: "secret-key".into() }, None, Some(after)).await?;
    sqlx::query_scalar("SELECT max(seq) FROM audit_log").fetch_one(&mut *conn).await
}

/// Walks the chain from the first entry (`from: None`) or from a checkpoint: the
/// checkpoint's entry must still have its hash, sequence numbers have no gaps, each
/// entry's `prev_hash` is the previous entry's hash, and each hash is the keyed hash of
/// the entry's content as stored now (unkeyed SHA-256 only for entries older than every
/// keyed one).
pub async fn verify_from(db: &PgPool, from: Option<&Checkpoint>) -> sqlx::Result<Verdict> {
    let schedule = match key_schedule(db).await? {
        Ok(s) => s,
        Err(broken) => return Ok(broken),
    };
    let mut expected_seq = 1i64;
    let mut prev = vec![0u8; 32];
    if let Some(cp) = from {
        let at: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1").bind(cp.seq).fetch_optional(db).await?;
        match at {
            None => {
                return Ok(Verdict::Broken {
                    seq: cp.seq,
                    reason: "the checkpoint's entry is gone (entries were removed)".into(),
                })
            }
            Some(h) if h != cp.hash => {
                return Ok(Verdict::Broken { seq: cp.seq, reason: "the checkpoint's entry was rewritten".into() })
            }
            Some(_) => {}
        }
        expected_seq = cp.seq + 1;
        prev = cp.hash.clone();
    }
    let mut rows = sqlx::query_as::<_, (i64, Vec<u8>, Vec<u8>, bool, Vec<u8>)>(
        "SELECT seq, prev_hash, hash, keyed,
                herald_audit_canonical(seq, at, actor_kind, actor, owner, action, target_kind, target, before,
                                       after, request_id, source)
         FROM audit_log WHERE seq >= $1 ORDER BY seq",
    )
    .bind(expected_seq)
    .fetch(db);
    let mut unkeyed = 0i64;
    let mut seen_keyed = from.is_some();
    while let Some((seq, prev_hash, hash, keyed, canonical)) = rows.try_next().await? {
        if seq != expected_seq {
            return Ok(Verdict::Broken {
                seq: expected_seq,
                reason: format!("entry {expected_seq} is missing (the next one is {seq})"),
            });
        }
        if prev_hash != prev {
            return Ok(Verdict::Broken { seq, reason: "it does not link to the entry before it".into() });
        }
        let recomputed = if keyed {
            seen_keyed = true;
            keyed_hash(schedule.key_for(seq), &prev_hash, &canonical)
        } else if seen_keyed {
            return Ok(Verdict::Broken { seq, reason: "an unkeyed entry after keyed ones".into() });
        } else {
            unkeyed += 1;
            unkeyed_hash(&prev_hash, &canonical)
        };
        if hash != recomputed {
            return Ok(Verdict::Broken { seq, reason: "its content does not match its hash".into() });
        }
        prev = hash;
        expected_seq += 1;
    }
    let count = expected_seq - 1;
    Ok(Verdict::Intact { count, head: (count > 0).then_some(prev), unkeyed })
}

/// Walks the whole chain, and checks every stored checkpoint whose tag is valid
/// against the entry it names.
pub async fn verify(db: &PgPool) -> sqlx::Result<Verdict> {
    let verdict = verify_from(db, None).await?;
    if let Verdict::Intact { .. } = verdict {
        // Every stored checkpoint with its entry's hash now, in one read.
        #[derive(sqlx::FromRow)]
        struct Stored {
            seq: i64,
            hash: Vec<u8>,
            tag: Vec<u8>,
            now: Option<Vec<u8>>,
        }
        let rows: Vec<Stored> = sqlx::query_as(
            "SELECT c.seq, c.hash, c.tag, a.hash AS now FROM audit_checkpoints c LEFT JOIN audit_log a ON a.seq = c.seq
             ORDER BY c.seq",
        )
        .fetch_all(db)
        .await?;
        for (cp, now) in genuine(rows.into_iter().map(|r| (Checkpoint { seq: r.seq, hash: r.hash }, r.tag, r.now)))? {
            if now.as_ref() != Some(&cp.hash) {
                return Ok(Verdict::Broken {
                    seq: cp.seq,
                    reason: "the entry does not match a checkpoint recorded earlier".into(),
                });
            }
        }
    }
    Ok(verdict)
}

/// The checkpoints among `rows` whose tags are valid (forged ones are skipped).
fn genuine<X>(rows: impl Iterator<Item = (Checkpoint, Vec<u8>, X)>) -> sqlx::Result<Vec<(Checkpoint, X)>> {
    let key = key()?;
    Ok(rows
        .filter(|(cp, tag, _)| bool::from(subtle::ConstantTimeEq::ct_eq(&cp.tag(key)[..], &tag[..])))
        .map(|(cp, _, x)| (cp, x))
        .collect())
}

/// The newest stored checkpoint whose tag is valid, among the newest few (past forged
/// ones, the walk starts from the first entry).
async fn newest_checkpoint(db: &PgPool) -> sqlx::Result<Option<Checkpoint>> {
    let rows: Vec<(i64, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash, tag FROM audit_checkpoints ORDER BY seq DESC LIMIT 16").fetch_all(db).await?;
    Ok(genuine(rows.into_iter().map(|(seq, hash, tag)| (Checkpoint { seq, hash }, tag, ())))?
        .into_iter()
        .next()
        .map(|(cp, ())| cp))
}

/// Records the chain's head as a checkpoint (after walking the chain up to it) and
/// returns it; `None` while the chain is empty. Refuses a broken chain.
pub async fn checkpoint(db: &PgPool) -> sqlx::Result<Result<Option<Checkpoint>, Verdict>> {
    match verify_incremental(db).await? {
        Verdict::Intact { count, head: Some(hash), .. } => Ok(Ok(Some(Checkpoint { seq: count, hash }))),
        Verdict::Intact { .. } => Ok(Ok(None)),
        broken => Ok(Err(broken)),
    }
}

/// Verifies only what was appended since the newest valid stored checkpoint (the
/// console's check on every view), then stores the head as the new checkpoint. What
/// lies before that checkpoint is checked by [`verify`] (`herald audit verify`).
pub async fn verify_incremental(db: &PgPool) -> sqlx::Result<Verdict> {
    let key = key()?;
    let from = newest_checkpoint(db).await?;
    let verdict = verify_from(db, from.as_ref()).await?;
    if let Verdict::Intact { count, head: Some(hash), .. } = &verdict {
        let cp = Checkpoint { seq: *count, hash: hash.clone() };
        if from.as_ref().is_none_or(|f| f.seq < cp.seq) {
            sqlx::query(
                "INSERT INTO audit_checkpoints (seq, hash, tag) VALUES ($1, $2, $3) ON CONFLICT (seq) DO NOTHING",
            )
            .bind(cp.seq)
            .bind(&cp.hash)
            .bind(cp.tag(key))
            .execute(db)
            .await?;
        }
    }
    Ok(verdict)
}
