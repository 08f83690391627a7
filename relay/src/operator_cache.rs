//! Operators' accounts as code issue checks them (permissions, suspension, session cap, IP
//! rules), kept in memory so that issuing a code costs no database round trip.
//!
//! A copy is only as good as its invalidation:
//! * every write the store makes to an operator forgets that operator's copy once the write
//!   is done, so a change made through this relay (console, REST API) holds from the very
//!   next code;
//! * another node of a grid, or `tsunagu-relay admin` on a grid node's config, publishes a
//!   hint on which every node forgets the operator (`grid::hints`, well under a second);
//! * the account poll (`database.account_poll`) forgets every copy: the bound for what
//!   `tsunagu-relay admin` writes into a single relay's database behind its back, the same
//!   bound live sessions already have.
//!
//! Logins do not use it: they read the account afresh, with the password check.
//!
//! A read that began before a change must not put back what it read. Each miss notes the
//! cache's generation before going to the database, every forget moves the generation on,
//! and what the read brings back is kept only if the generation did not move meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Accounts kept at most. When full, every copy is dropped and the cache fills again from
/// the next codes: far more operators than one relay serves at once, and a bound on memory
/// whatever the number of accounts.
pub const MAX_CACHED_OPERATORS: usize = 10_000;

/// A cheaply cloned handle; clones share one cache. `R` is the account as the store reads
/// it (the store's `OperatorRecord`).
pub struct OperatorCache<R> {
    inner: Arc<Mutex<Inner<R>>>,
}

impl<R> Clone for OperatorCache<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<R> Default for OperatorCache<R> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                records: HashMap::new(),
                generation: 0,
            })),
        }
    }
}

struct Inner<R> {
    records: HashMap<String, Arc<R>>,
    /// Moved on by every forget.
    generation: u64,
}

/// The generation a missed lookup saw, to hand back to [`OperatorCache::keep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup<R> {
    Hit(Arc<R>),
    /// Not kept: read the database, then [`OperatorCache::keep`] what it said.
    Miss(Generation),
}

impl<R> std::fmt::Debug for OperatorCache<R> {
    /// Counts only: the records hold password hashes and TOTP secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("OperatorCache")
            .field("operators", &inner.records.len())
            .field("generation", &inner.generation)
            .finish()
    }
}

impl<R> OperatorCache<R> {
    fn lock(&self) -> MutexGuard<'_, Inner<R>> {
        // Nothing panics while the lock is held, and every critical section leaves the map
        // whole: a poisoned lock still guards a consistent cache.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn lookup(&self, name: &str) -> Lookup<R> {
        let inner = self.lock();
        match inner.records.get(name) {
            Some(record) => Lookup::Hit(record.clone()),
            None => Lookup::Miss(Generation(inner.generation)),
        }
    }

    /// Keeps `record` of account `name`, read from the database after a lookup that saw
    /// `seen`, unless something was forgotten since (the read may predate that change).
    pub fn keep(&self, seen: Generation, name: String, record: R) {
        let mut inner = self.lock();
        if inner.generation != seen.0 {
            return;
        }
        if inner.records.len() >= MAX_CACHED_OPERATORS {
            inner.records.clear();
        }
        inner.records.insert(name, Arc::new(record));
    }

    /// Forgets `name`'s copy; call once a change to that account is written.
    pub fn forget(&self, name: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.records.remove(name);
    }

    /// Forgets every copy.
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.records.clear();
    }

    /// Accounts kept now.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An account as a test keeps it: its name, its session cap and its secrets.
    #[derive(Debug)]
    struct Account {
        name: String,
        max_sessions: u32,
        #[allow(dead_code)] // only there to show it is never printed
        secrets: (String, String),
    }

    type Cache = OperatorCache<Account>;

    fn record(name: &str, max_sessions: u32) -> Account {
        Account {
            name: name.into(),
            max_sessions,
            secrets: ("$argon2id$secret".into(), "JBSWY3DPEHPK3PXP".into()),
        }
    }

    fn keep(cache: &Cache, seen: Generation, record: Account) {
        cache.keep(seen, record.name.clone(), record);
    }

    fn miss(cache: &Cache, name: &str) -> Generation {
        match cache.lookup(name) {
            Lookup::Miss(g) => g,
            Lookup::Hit(r) => panic!("{} should not be kept", r.name),
        }
    }

    #[test]
    fn a_kept_account_is_found_until_it_is_forgotten() {
        let cache = Cache::default();
        let seen = miss(&cache, "alice");
        keep(&cache, seen, record("alice", 2));
        let Lookup::Hit(r) = cache.lookup("alice") else {
            panic!("alice is kept")
        };
        assert_eq!(r.max_sessions, 2);
        miss(&cache, "bob");
        cache.forget("alice");
        miss(&cache, "alice");
    }

    #[test]
    fn a_read_that_began_before_a_change_is_not_kept() {
        let cache = Cache::default();
        let seen = miss(&cache, "alice");
        // An admin changes alice (any operator) while the read is on its way.
        cache.forget("bob");
        keep(&cache, seen, record("alice", 0));
        let seen = miss(&cache, "alice");
        cache.forget_all();
        keep(&cache, seen, record("alice", 0));
        let seen = miss(&cache, "alice");
        keep(&cache, seen, record("alice", 1));
        assert!(matches!(cache.lookup("alice"), Lookup::Hit(r) if r.max_sessions == 1));
    }

    #[test]
    fn forget_all_empties_and_the_cache_stays_bounded() {
        let cache = Cache::default();
        for i in 0..MAX_CACHED_OPERATORS + 5 {
            let name = format!("op{i}");
            let seen = miss(&cache, &name);
            keep(&cache, seen, record(&name, 0));
            assert!(cache.len() <= MAX_CACHED_OPERATORS);
        }
        assert!(matches!(
            cache.lookup(&format!("op{}", MAX_CACHED_OPERATORS + 4)),
            Lookup::Hit(_)
        ));
        cache.forget_all();
        assert!(cache.is_empty());
    }

    #[test]
    fn debug_shows_no_secret() {
        let cache = Cache::default();
        let seen = miss(&cache, "alice");
        keep(&cache, seen, record("alice", 0));
        let shown = format!("{cache:?}");
        assert!(!shown.contains("argon2") && !shown.contains("JBSW"), "{shown}");
        assert!(shown.contains("operators: 1"), "{shown}");
    }
}
