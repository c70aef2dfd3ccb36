//! Reads kept in memory for a moment, under a generation: identity's
//! access decisions (users as subjects, delegated grants, tenants) and the
//! tenants other services ask identity for. Every CheckAccess and every
//! authorization reads these, several thousand times a second for the same
//! few keys.
//!
//! Three rules keep it correct and smooth:
//! - **Generation.** The owner bumps a generation after each commit that
//!   may change what was read; an entry is only used while the generation
//!   it was read under (its [`Stamp`], taken *before* the read) is current.
//!   A read that raced a commit is stored under the old generation, so it
//!   is never used.
//! - **Age.** An entry is used for at most `ttl` from the moment its read
//!   began: the bound on how long another replica's change may go unseen.
//!   A zero `ttl` turns the cache off.
//! - **One read at a time per key.** Callers that miss the same key under
//!   the same generation wait for one read and share it, instead of each
//!   sending its own to the database (or to identity) at the moment an
//!   entry expires or a commit makes it stale. And once an entry is past
//!   half its age, the first caller to see it reads it again while the
//!   others go on using it, so a busy key does not expire under load.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::OnceCell;

/// Entries one map keeps at most unless told otherwise; when full it
/// starts again empty.
const CAPACITY: usize = 100_000;

/// A generation, bumped after every commit that may change what was read.
#[derive(Debug, Default)]
pub struct Generation(AtomicU64);

impl Generation {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Generations by stripe: a change to one key bumps its stripe only, and
/// so makes stale the entries of the keys that share it. With 4,096
/// stripes, a key shares its stripe with one of 50 keys that change at
/// once with a chance of about 1% (64 stripes made that 55%).
#[derive(Debug)]
pub struct Stripes(Box<[Generation]>);

/// How many stripes [`Stripes`] has: 32 KiB of counters.
const STRIPES: usize = 4096;

impl Default for Stripes {
    fn default() -> Self {
        Self((0..STRIPES).map(|_| Generation::new()).collect())
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

/// A value and when the read that produced it began.
type Read<V> = (V, Instant);

#[derive(Debug)]
struct Entry<V> {
    stamp: Stamp,
    read: Read<V>,
}

/// A read in progress for one key under one stamp, shared by the callers
/// that wait for it.
#[derive(Debug)]
struct Flight<V> {
    stamp: Stamp,
    cell: Arc<OnceCell<Read<V>>>,
}

#[derive(Debug)]
struct Maps<K, V> {
    entries: HashMap<K, Entry<V>>,
    flights: HashMap<K, Flight<V>>,
}

/// One map of entries read under a generation.
#[derive(Debug)]
pub struct Cached<K, V> {
    ttl: Duration,
    capacity: usize,
    maps: Mutex<Maps<K, V>>,
}

/// What a caller does after looking: use a value, or take part in a read
/// (`stale` is what it answers if a refresh read fails).
enum Look<V> {
    Use(V),
    Read {
        cell: Arc<OnceCell<Read<V>>>,
        stale: Option<V>,
    },
}

impl<K: Eq + Hash + Clone, V: Clone> Cached<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, CAPACITY)
    }

    /// Keeps at most `capacity` entries (then starts again empty).
    pub fn with_capacity(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            maps: Mutex::new(Maps {
                entries: HashMap::new(),
                flights: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps<K, V>> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value for `key` under `stamp` (taken before any read), or what
    /// `load` reads, kept. Concurrent callers with the same key and stamp
    /// share one `load`.
    pub async fn get_or_load<E, F>(
        &self,
        key: K,
        stamp: Stamp,
        load: impl FnOnce() -> F,
    ) -> Result<V, E>
    where
        F: Future<Output = Result<V, E>>,
    {
        if self.ttl.is_zero() {
            return load().await;
        }
        let (cell, stale) = match self.look(&key, stamp) {
            Look::Use(v) => return Ok(v),
            Look::Read { cell, stale } => (cell, stale),
        };
        let read = cell
            .get_or_try_init(|| async {
                let began = Instant::now();
                load().await.map(|v| (v, began))
            })
            .await
            .cloned();
        let mut maps = self.lock();
        if maps
            .flights
            .get(&key)
            .is_some_and(|f| Arc::ptr_eq(&f.cell, &cell))
        {
            maps.flights.remove(&key);
        }
        match read {
            Ok((v, began)) => {
                if maps.entries.len() >= self.capacity {
                    maps.entries.clear();
                    // Reads whose callers were all dropped leave their
                    // flight behind; none outlives a start-over.
                    maps.flights.retain(|_, f| Arc::strong_count(&f.cell) > 1);
                }
                // A newer entry (under a later stamp, or read later under
                // this one) stays. Stamps taken later are at least as high
                // in both generations.
                let newer = maps.entries.get(&key).is_some_and(|e| {
                    if e.stamp == stamp {
                        e.read.1 > began
                    } else {
                        e.stamp.0 >= stamp.0 && e.stamp.1 >= stamp.1
                    }
                });
                if !newer {
                    maps.entries.insert(
                        key,
                        Entry {
                            stamp,
                            read: (v.clone(), began),
                        },
                    );
                }
                Ok(v)
            }
            // The entry a refresh was for is still young enough to answer.
            Err(e) => stale.ok_or(e),
        }
    }

    fn look(&self, key: &K, stamp: Stamp) -> Look<V> {
        let mut maps = self.lock();
        let current = maps
            .entries
            .get(key)
            .filter(|e| e.stamp == stamp)
            .map(|e| (e.read.1.elapsed(), &e.read.0))
            .filter(|(age, _)| *age < self.ttl)
            .map(|(age, v)| (age, v.clone()));
        let flying = maps
            .flights
            .get(key)
            .filter(|f| f.stamp == stamp)
            .map(|f| f.cell.clone());
        let stale = match current {
            // Young, or past half its age and already being read again.
            Some((age, v)) if age < self.ttl / 2 || flying.is_some() => return Look::Use(v),
            current => current.map(|(_, v)| v),
        };
        let cell = flying.unwrap_or_else(|| {
            let cell = Arc::new(OnceCell::new());
            maps.flights.insert(
                key.clone(),
                Flight {
                    stamp,
                    cell: cell.clone(),
                },
            );
            cell
        });
        Look::Read { cell, stale }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    type Loads = Arc<AtomicUsize>;

    #[test]
    fn a_stripe_is_shared_by_few_keys() {
        // A grant change bumps its key's stripe: of 1,000 other keys, about
        // a quarter of one should see it (1,000 / 4,096).
        let stripes = Stripes::default();
        let key = |i: u32| (format!("partner-{i}"), "customer".to_owned());
        let before: Vec<u64> = (0..1000).map(|i| stripes.of(&key(i)).current()).collect();
        stripes.of(&key(1000)).bump();
        let moved = (0..1000)
            .filter(|&i| stripes.of(&key(i)).current() != before[i as usize])
            .count();
        assert!(moved <= 3, "{moved} of 1,000 keys went stale");
        assert_eq!(stripes.of(&key(1000)).current(), 1);
    }

    /// `get_or_load` that counts its loads and answers `v`.
    async fn get(c: &Cached<&'static str, u32>, stamp: Stamp, loads: &Loads, v: u32) -> u32 {
        c.get_or_load("u", stamp, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(v)
        })
        .await
        .unwrap()
    }

    /// A caller of `get_or_load` on its own task, whose read (counted)
    /// waits for `gate`, then answers `v`.
    fn gated(
        c: &Arc<Cached<&'static str, u32>>,
        stamp: Stamp,
        loads: &Loads,
        gate: &Arc<Notify>,
        v: u32,
    ) -> tokio::task::JoinHandle<Result<u32, ()>> {
        let (c, loads, gate) = (c.clone(), loads.clone(), gate.clone());
        tokio::spawn(async move {
            c.get_or_load("u", stamp, || async {
                loads.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                Ok(v)
            })
            .await
        })
    }

    #[tokio::test]
    async fn an_entry_lives_for_its_generation_and_its_age_only() {
        let g = Generation::default();
        let c = Cached::new(Duration::from_millis(100));
        let loads = Loads::default();
        let now = || (g.current(), 0);
        assert_eq!(get(&c, now(), &loads, 1).await, 1);
        assert_eq!(get(&c, now(), &loads, 2).await, 1, "kept");
        // A commit makes it stale at once.
        let before = now();
        g.bump();
        assert_eq!(get(&c, now(), &loads, 3).await, 3);
        assert_eq!(get(&c, now(), &loads, 33).await, 3, "kept in its place");
        // A read that began before the commit is never used after it.
        let stale = Cached::new(Duration::from_secs(60));
        assert_eq!(get(&stale, before, &loads, 4).await, 4);
        assert_eq!(get(&stale, now(), &loads, 5).await, 5);
        assert_eq!(
            get(&c, (g.current(), 1), &loads, 6).await,
            6,
            "a second generation moved"
        );
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(get(&c, (g.current(), 1), &loads, 7).await, 7, "too old");
        assert_eq!(loads.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn callers_that_miss_together_share_one_read() {
        let c = Arc::new(Cached::new(Duration::from_secs(60)));
        let loads = Loads::default();
        let gate = Arc::new(Notify::new());
        let callers: Vec<_> = (0..16)
            .map(|_| gated(&c, (0, 0), &loads, &gate, 7))
            .collect();
        while loads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Every caller is waiting by now (none finished without the gate).
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), Ok(7));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_caller_under_a_newer_generation_does_not_take_an_older_read() {
        let c = Arc::new(Cached::new(Duration::from_secs(60)));
        let gate = Arc::new(Notify::new());
        let old = gated(&c, (1, 0), &Loads::default(), &gate, 1);
        tokio::task::yield_now().await;
        let loads = Loads::default();
        assert_eq!(get(&c, (2, 0), &loads, 2).await, 2);
        gate.notify_waiters();
        assert_eq!(old.await.unwrap(), Ok(1));
        // The older read did not replace the newer entry.
        assert_eq!(get(&c, (2, 0), &loads, 3).await, 2);
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn past_half_its_age_one_caller_reads_again_while_the_others_use_the_entry() {
        let c = Arc::new(Cached::new(Duration::from_millis(200)));
        let loads = Loads::default();
        assert_eq!(get(&c, (0, 0), &loads, 1).await, 1);
        std::thread::sleep(Duration::from_millis(110));
        let gate = Arc::new(Notify::new());
        let refresher = gated(&c, (0, 0), &loads, &gate, 2);
        while loads.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(get(&c, (0, 0), &loads, 9).await, 1, "answered at once");
        gate.notify_waiters();
        assert_eq!(refresher.await.unwrap(), Ok(2));
        assert_eq!(get(&c, (0, 0), &loads, 9).await, 2, "the new read, young");
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        // A refresh that fails answers the entry, still young enough.
        std::thread::sleep(Duration::from_millis(110));
        let failed = c
            .get_or_load("u", (0, 0), || async { Err::<u32, _>("database gone") })
            .await;
        assert_eq!(failed, Ok(2));
        // A failure with nothing to fall back on is the caller's.
        let empty: Cached<&str, u32> = Cached::new(Duration::from_millis(200));
        let failed = empty
            .get_or_load("u", (0, 0), || async { Err::<u32, _>("database gone") })
            .await;
        assert_eq!(failed, Err("database gone"));
    }

    #[tokio::test]
    async fn a_read_whose_callers_went_away_hands_over_and_is_forgotten_at_a_start_over() {
        let c = Cached::with_capacity(Duration::from_secs(60), 1);
        let gone = c.get_or_load("a", (0, 0), std::future::pending::<Result<u32, ()>>);
        assert!(tokio::time::timeout(Duration::from_millis(10), gone)
            .await
            .is_err());
        assert_eq!(c.lock().flights.len(), 1, "left behind");
        // The next caller for the key reads for itself.
        let next = c.get_or_load("a", (0, 0), || async { Ok::<_, ()>(1) });
        assert_eq!(next.await, Ok(1));
        let gone = c.get_or_load("b", (0, 0), std::future::pending::<Result<u32, ()>>);
        assert!(tokio::time::timeout(Duration::from_millis(10), gone)
            .await
            .is_err());
        // Full (capacity 1): the next entry starts over, without the flight.
        let c_read = c.get_or_load("c", (0, 0), || async { Ok::<_, ()>(3) });
        assert_eq!(c_read.await, Ok(3));
        assert_eq!(c.lock().flights.len(), 0);
    }

    #[test]
    fn a_borrowed_key_falls_in_the_stripe_of_its_owned_form() {
        let s = Stripes::default();
        let owned = ("partner".to_owned(), "customer".to_owned());
        assert!(std::ptr::eq(s.of(&owned), s.of(&("partner", "customer"))));
    }

    #[tokio::test]
    async fn a_zero_ttl_turns_it_off() {
        let c = Cached::new(Duration::ZERO);
        let loads = Loads::default();
        assert_eq!(get(&c, (0, 0), &loads, 1).await, 1);
        assert_eq!(get(&c, (0, 0), &loads, 2).await, 2);
    }
}
