//! The scheduler's lease in the config store, stored as `<holder> <expiry unix ms>
//! <term>`. It is taken and renewed by compare-and-swap, so each term (the fencing
//! token) belongs to one manager; a manager that takes the lease over starts a new term,
//! one past the last term the database saw.

use std::time::Duration;

use chrono::Utc;

use crate::error::Error;
use crate::stores::ConfigStore;

/// Where the lease lives.
pub const LEASE_KEY: &str = "nodes/scheduler";
/// How long a lease lasts without renewal: a dead scheduler is replaced within it. It
/// is renewed when less than half is left.
pub const LEASE: Duration = Duration::from_secs(5);

/// A lease as stored.
#[derive(Debug, PartialEq, Eq)]
pub struct Lease<'a> {
    /// The manager that holds it.
    pub holder: &'a str,
    /// When it expires, in unix ms (0 when unreadable: expired).
    pub expires_ms: i64,
    /// Its term (0 when unreadable).
    pub term: i64,
}

impl<'a> Lease<'a> {
    /// Reads a stored lease.
    pub fn parse(value: &'a str) -> Self {
        let mut parts = value.split(' ');
        let holder = parts.next().unwrap_or_default();
        let expires_ms = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let term = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Self { holder, expires_ms, term }
    }

    fn format(holder: &str, expires_ms: i64, term: i64) -> String {
        format!("{holder} {expires_ms} {term}")
    }
}

/// Takes or renews the lease for `manager_id`: its term when it holds it, `None` when
/// another manager does. `fence` is the last term the database saw (a new term is
/// above it, even if the config store lost the lease).
pub async fn acquire(config: &dyn ConfigStore, manager_id: &str, fence: i64) -> Result<Option<i64>, Error> {
    let now = Utc::now().timestamp_millis();
    let length = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
    let stored = config.get(LEASE_KEY).await?;
    let term = match stored.as_deref().map(Lease::parse) {
        // Ours, and no later term reached the database: the term goes on.
        Some(lease) if lease.holder == manager_id && lease.term >= fence => {
            if lease.expires_ms - now > length / 2 {
                return Ok(Some(lease.term));
            }
            lease.term
        }
        // Ours but stale (a later term took the fence): a new term.
        Some(lease) if lease.holder == manager_id => lease.term.max(fence) + 1,
        Some(lease) if lease.expires_ms > now => return Ok(None),
        Some(lease) => lease.term.max(fence) + 1,
        None => fence + 1,
    };
    let renewed = Lease::format(manager_id, now + length, term);
    Ok(config.compare_and_swap(LEASE_KEY, stored.as_deref(), &renewed).await?.then_some(term))
}

/// Whether another manager holds the lease now.
pub async fn held_by_another(config: &dyn ConfigStore, manager_id: &str) -> Result<bool, Error> {
    let now = Utc::now().timestamp_millis();
    let stored = config.get(LEASE_KEY).await?;
    Ok(stored.as_deref().map(Lease::parse).is_some_and(|lease| lease.holder != manager_id && lease.expires_ms > now))
}

/// Gives the lease up if `manager_id` holds it (graceful shutdown): it is left expired,
/// with its term, so the next holder starts the next term at once.
pub async fn release(config: &dyn ConfigStore, manager_id: &str) -> Result<(), Error> {
    let stored = config.get(LEASE_KEY).await?;
    if let Some(lease) = stored.as_deref().map(Lease::parse).filter(|lease| lease.holder == manager_id) {
        let expired = Lease::format(manager_id, 0, lease.term);
        config.compare_and_swap(LEASE_KEY, stored.as_deref(), &expired).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::stores::EmbeddedConfigStore;

    #[test]
    fn leases_are_read_as_stored() {
        assert_eq!(
            Lease::parse("m-a 1700000000000 7"),
            Lease { holder: "m-a", expires_ms: 1_700_000_000_000, term: 7 }
        );
        assert_eq!(Lease::parse("m-a"), Lease { holder: "m-a", expires_ms: 0, term: 0 });
    }

    #[tokio::test]
    async fn one_holder_per_term_and_a_takeover_starts_a_new_one() {
        let store = EmbeddedConfigStore::ephemeral();
        assert_eq!(acquire(&store, "a", 3).await.unwrap(), Some(4), "a new term is past the database's");
        assert_eq!(acquire(&store, "b", 3).await.unwrap(), None, "held by a");
        assert_eq!(acquire(&store, "a", 4).await.unwrap(), Some(4), "renewal keeps the term");
        release(&store, "a").await.unwrap();
        assert_eq!(acquire(&store, "b", 4).await.unwrap(), Some(5), "a takeover starts the next term");
        assert_eq!(acquire(&store, "a", 5).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_holder_whose_term_the_database_passed_starts_a_new_one() {
        let store = EmbeddedConfigStore::ephemeral();
        assert_eq!(acquire(&store, "a", 0).await.unwrap(), Some(1));
        assert_eq!(acquire(&store, "a", 9).await.unwrap(), Some(10), "term 9 reached the fence: 1 is stale");
        assert_eq!(acquire(&store, "a", 10).await.unwrap(), Some(10));
    }

    #[tokio::test]
    async fn racing_takers_get_one_term() {
        let store = std::sync::Arc::new(EmbeddedConfigStore::ephemeral());
        let takers = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { acquire(store.as_ref(), &format!("m{i}"), 0).await.unwrap() })
        });
        let won: Vec<i64> =
            futures_util::future::join_all(takers).await.into_iter().filter_map(|r| r.unwrap()).collect();
        assert_eq!(won, [1], "exactly one manager holds term 1");
    }
}
