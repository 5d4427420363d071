//! Caches of database rows on the hot path, emptied by `LISTEN/NOTIFY`.
//!
//! A trigger on the source tables notifies a channel whenever a row that matters
//! changes; [`Watched::listen`] empties the cache on every notification. Entries are
//! served only while the channel is being listened to (a lost connection may have lost
//! notifications), never after `ttl`, and a value read from the database is stored only
//! if no invalidation began since the read started ([`Watched::token`]), so a change
//! committed during the read is never cached over.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// The most entries kept; past it the cache starts over.
const MAX_ENTRIES: usize = 10_000;

/// The channels, one per kind of row cached (the triggers of the `…_lane.sql`
/// migration notify them).
pub const API_KEYS: &str = "herald_api_keys";
pub const CATALOG: &str = "herald_catalog";
pub const ENDPOINTS: &str = "herald_endpoints";

trait Invalidate: Send + Sync {
    fn channel(&self) -> &'static str;
    fn invalidate(&self);
}

/// Every cache of this process, by channel, so that a change empties them itself.
static LOCAL: Mutex<Vec<std::sync::Weak<dyn Invalidate>>> = Mutex::new(Vec::new());

/// Empties this process's caches of `channel` at once. Every domain operation that
/// changes cached rows calls it after its commit, so the process's very next request
/// sees the change (other processes learn it by the trigger's NOTIFY, within
/// milliseconds). Reads never call it.
pub fn changed(channel: &str) {
    let mut local = LOCAL.lock().expect("cache registry");
    local.retain(|w| match w.upgrade() {
        Some(c) => {
            if c.channel() == channel {
                c.invalidate();
            }
            true
        }
        None => false,
    });
}

impl<K: Eq + Hash + Send + 'static, V: Clone + Send + 'static> Invalidate for Watched<K, V> {
    fn channel(&self) -> &'static str {
        self.channel
    }
    fn invalidate(&self) {
        Watched::invalidate(self)
    }
}

pub struct Watched<K, V> {
    channel: &'static str,
    ttl: Duration,
    map: Mutex<HashMap<K, (Instant, V)>>,
    generation: AtomicU64,
    live: AtomicBool,
}

impl<K: Eq + Hash + Send + 'static, V: Clone + Send + 'static> Watched<K, V> {
    pub fn new(channel: &'static str, ttl: Duration) -> Arc<Self> {
        let cache = Arc::new(Self {
            channel,
            ttl,
            map: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            live: AtomicBool::new(false),
        });
        let weak: std::sync::Weak<dyn Invalidate> = Arc::downgrade(&cache) as std::sync::Weak<dyn Invalidate>;
        LOCAL.lock().expect("cache registry").push(weak);
        cache
    }

    /// A fresh entry, while the channel is listened to.
    pub fn get<Q: Eq + Hash + ?Sized>(&self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let map = self.map.lock().expect("cache");
        map.get(k).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, v)| v.clone())
    }

    /// Taken before reading the database for [`Watched::put`].
    pub fn token(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Stores what was read after `token` was taken, unless an invalidation began since.
    pub fn put(&self, token: u64, k: K, v: V) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let mut map = self.map.lock().expect("cache");
        if self.generation.load(Ordering::Acquire) != token {
            return;
        }
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(k, (Instant::now(), v));
    }

    /// Changes an entry in place (bookkeeping such as when a key was last marked used).
    pub fn update<Q: Eq + Hash + ?Sized>(&self, k: &Q, f: impl FnOnce(&mut V))
    where
        K: Borrow<Q>,
    {
        if let Some((_, v)) = self.map.lock().expect("cache").get_mut(k) {
            f(v);
        }
    }

    pub fn invalidate(&self) {
        let mut map = self.map.lock().expect("cache");
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
    }

    /// Listens on the channel and empties the cache on every notification, until the
    /// task is aborted. Reconnects after a second when the connection fails.
    pub async fn listen(self: Arc<Self>, db: PgPool) {
        loop {
            let listener = async {
                let mut l = sqlx::postgres::PgListener::connect_with(&db).await?;
                l.listen(self.channel).await?;
                Ok::<_, sqlx::Error>(l)
            };
            match listener.await {
                Ok(mut l) => loop {
                    self.invalidate();
                    self.live.store(true, Ordering::Release);
                    match l.try_recv().await {
                        Ok(Some(_)) => {}
                        // The connection dropped (notifications may be lost): nothing is
                        // served until the next call has reconnected and listens again.
                        Ok(None) => self.live.store(false, Ordering::Release),
                        Err(e) => {
                            tracing::warn!(channel = self.channel, error = %e, "cache listener failed; not caching");
                            break;
                        }
                    }
                },
                Err(e) => tracing::warn!(channel = self.channel, error = %e, "cannot LISTEN; not caching"),
            }
            self.live.store(false, Ordering::Release);
            self.invalidate();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
