//! What access decisions read, kept in memory for a moment: users (as
//! subjects), delegated grants and tenants. Every CheckAccess and every
//! peer's authorization reads these; from SQLite each read is a hand-off to
//! the connection's worker thread, which cost more than the rest of the call.
//!
//! Two rules keep it correct:
//! - **Generation.** Every identity commit bumps the generation after it
//!   commits ([`Identity::commit`](crate::Identity)); an entry is only used
//!   while the generation it was read under is current. A read that raced a
//!   commit was stored under the old generation, so it is never used. In
//!   this process a change is seen by the very next call.
//! - **Age.** An entry is used for at most `identity.decision_cache_ms`
//!   (1 s by default): the bound on how long another identity replica (on
//!   PostgreSQL) may decide from what it read before a change made through
//!   this one. 0 turns the cache off.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

/// Entries one map keeps at most; when full it starts again empty.
const CAPACITY: usize = 100_000;

/// The current generation, bumped after every commit.
#[derive(Debug, Default)]
pub struct Generation(AtomicU64);

impl Generation {
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Generations by stripe: a change to one key bumps its stripe only.
#[derive(Debug)]
pub struct Stripes([Generation; 64]);

impl Default for Stripes {
    fn default() -> Self {
        Self(std::array::from_fn(|_| Generation::default()))
    }
}

impl Stripes {
    pub fn of<K: Hash>(&self, key: &K) -> &Generation {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        &self.0[(h % self.0.len() as u64) as usize]
    }
}

/// The generations an entry was read under (a map may be checked against
/// more than one).
pub type Stamp = (u64, u64);

/// One map of entries read under a generation.
#[derive(Debug)]
pub struct Cached<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (Stamp, Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> Cached<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The value read under `generation`, if still fresh.
    pub fn get(&self, key: &K, generation: Stamp) -> Option<V> {
        if self.ttl.is_zero() {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((g, at, v)) if *g == generation && at.elapsed() < self.ttl => Some(v.clone()),
            _ => None,
        }
    }

    /// The value for `key` under `generation` (taken before the read), or
    /// what `load` reads, kept.
    pub async fn get_or_load<E, F>(
        &self,
        key: K,
        generation: Stamp,
        load: impl FnOnce() -> F,
    ) -> Result<V, E>
    where
        F: std::future::Future<Output = Result<V, E>>,
    {
        if let Some(v) = self.get(&key, generation) {
            return Ok(v);
        }
        let v = load().await?;
        self.put(key, generation, v.clone());
        Ok(v)
    }

    /// Keeps `value`, read under `generation` (taken before the read).
    pub fn put(&self, key: K, generation: Stamp, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(key, (generation, Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_for_its_generation_and_its_age_only() {
        let g = Generation::default();
        let c = Cached::new(Duration::from_millis(50));
        let now = || (g.current(), 0);
        let before = now();
        c.put("u", before, 1);
        assert_eq!(c.get(&"u", now()), Some(1));
        // A commit makes it stale at once.
        g.bump();
        assert_eq!(c.get(&"u", now()), None);
        // A read that began before the commit is stored under the old
        // generation and never used.
        c.put("u", before, 2);
        assert_eq!(c.get(&"u", now()), None);
        c.put("u", now(), 3);
        assert_eq!(c.get(&"u", now()), Some(3));
        assert_eq!(
            c.get(&"u", (g.current(), 1)),
            None,
            "a second generation moved"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&"u", now()), None, "too old");
    }

    #[test]
    fn a_borrowed_key_falls_in_the_stripe_of_its_owned_form() {
        let s = Stripes::default();
        let owned = ("partner".to_owned(), "customer".to_owned());
        assert!(std::ptr::eq(s.of(&owned), s.of(&("partner", "customer"))));
    }

    #[test]
    fn a_zero_ttl_turns_it_off() {
        let c = Cached::new(Duration::ZERO);
        c.put("u", (0, 0), 1);
        assert_eq!(c.get(&"u", (0, 0)), None);
    }
}
