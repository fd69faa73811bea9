//! Ground-truth measurements written into status: consumer lag from the Kafka cluster and the
//! outbox backlog from the database. The figures are reused for half a status period
//! (`Context::recent_figures`); the clients that measure them are pooled ([`Clients`]): one
//! Kafka client per cluster and one PostgreSQL pool per database, kept while they are used, so
//! the connections a status refresh opens do not grow with the number of resources.

pub mod address;
pub mod kafka;
pub mod postgres;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client unused this long is dropped (its connections close): a cluster or database no
/// resource names any more does not keep connections open.
pub const IDLE_CLIENT_TTL: Duration = Duration::from_secs(600);

/// The measurement clients of the operator, shared by every reconcile.
#[derive(Debug, Default)]
pub struct Clients {
    pub kafka: Pool<kafka::Client>,
    /// Per cluster, a client that reads the record at a group's committed offset (its
    /// timestamp: the lag in seconds); one measurement at a time uses it (it assigns).
    pub kafka_readers: Pool<Mutex<rdkafka::consumer::BaseConsumer>>,
    pub postgres: Pool<sqlx::PgPool>,
}

/// Clients keyed by what they connect with (bootstrap servers and security settings, or the
/// connect options): a hash, so that no credential is kept as a map key or shown in `Debug`.
pub struct Pool<C> {
    entries: Mutex<HashMap<u64, Entry<C>>>,
}

struct Entry<C> {
    client: Arc<C>,
    used: Instant,
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Pool {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<C> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("clients", &self.len())
            .finish()
    }
}

impl<C: Send + Sync + 'static> Pool<C> {
    /// The client for `key`, made by `make` when there is none; clients idle for
    /// [`IDLE_CLIENT_TTL`] are dropped on the way (on the blocking pool when there is a
    /// runtime: closing a librdkafka client waits for its threads).
    pub fn get<K: Hash, E>(
        &self,
        key: &K,
        make: impl FnOnce() -> Result<C, E>,
    ) -> Result<Arc<C>, E> {
        let key = hash(key);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let idle: Vec<u64> = entries
            .iter()
            .filter(|(k, e)| **k != key && now.duration_since(e.used) >= IDLE_CLIENT_TTL)
            .map(|(k, _)| *k)
            .collect();
        let evicted: Vec<Entry<C>> = idle.iter().filter_map(|k| entries.remove(k)).collect();
        if !evicted.is_empty() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(evicted))),
                Err(_) => drop(evicted),
            }
        }
        if let Some(e) = entries.get_mut(&key) {
            e.used = now;
            return Ok(e.client.clone());
        }
        let client = Arc::new(make()?);
        entries.insert(
            key,
            Entry {
                client: client.clone(),
                used: now,
            },
        );
        Ok(client)
    }
}

impl<C> Pool<C> {
    /// Clients held.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// No client is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn hash<K: Hash>(key: &K) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_per_key_reused() {
        let pool: Pool<u32> = Pool::default();
        let mut made = 0;
        let mut make = || -> Result<u32, ()> {
            made += 1;
            Ok(made)
        };
        let a = pool.get(&"cluster-a", &mut make).unwrap();
        let again = pool.get(&"cluster-a", &mut make).unwrap();
        let b = pool.get(&"cluster-b", &mut make).unwrap();
        assert_eq!((*a, *again, *b), (1, 1, 2));
        assert_eq!(pool.len(), 2);
    }
}
