//! Turns on a database's connections. A source's pool opens at most `pool_size` connections,
//! and every read that takes one first takes a turn: a permit of the source's gate, held until
//! the connection is back (or closed). A reconcile reads both sides at once and cannot go on
//! with one, so it takes both sides' turns together, in source-name order, before it reads
//! ([`super::Sources::for_reconcile`]); its reads then take turns among those. So a reader
//! holding a turn finds a connection free (or one on its way back to the pool), and no two
//! runs each hold the half of a pair the other waits for. A read waits for its turn before its
//! deadline starts: queued is not stalled. The role audit alone takes no turn (see
//! `postgres::audit_role`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::SourceName;

use super::SourceError;

/// How long a read waits for its turn on a database's connections before it fails (runs in
/// `serve` also end at their own timeout): long enough for a reconcile of a large table to
/// finish, bounded so that a re-check or a dry run never waits for ever.
pub const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Who may take one of a source's connections.
#[derive(Clone, Default)]
pub(crate) enum Gate {
    /// Anyone, at once: a source opened on its own (not through [`super::Sources`]), or one
    /// that keeps no pool.
    #[default]
    Open,
    /// Every read of the process takes one of the source's `pool_size` turns.
    Shared {
        turns: Arc<Semaphore>,
        pool_size: u32,
        waits: Arc<Waits>,
    },
    /// A reconcile's: it holds some of the shared turns, and its reads take turns among them.
    Reserved(Arc<Reservation>),
}

/// How reads have waited for a source's shared turns, for `/metrics`.
#[derive(Default)]
pub(crate) struct Waits {
    now: AtomicU64,
    micros: AtomicU64,
}

/// A database source's turns, as `/metrics` shows them: saturation (`held` of `pool_size`)
/// and the waiting it causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnUse {
    pub pool_size: u32,
    /// Connections in use, and those reconciles have reserved for their reads.
    pub held: u32,
    /// Reads waiting for a turn now.
    pub waiting: u64,
    /// Time reads spent waiting for a turn, all told.
    pub waited: std::time::Duration,
}

/// One read waiting: counted while it waits, its time added when the wait ends (or is dropped).
struct Waiting<'a> {
    waits: &'a Waits,
    since: tokio::time::Instant,
}

impl<'a> Waiting<'a> {
    fn start(waits: &'a Waits) -> Self {
        waits.now.fetch_add(1, Ordering::Relaxed);
        Self {
            waits,
            since: tokio::time::Instant::now(),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.waits.now.fetch_sub(1, Ordering::Relaxed);
        let micros = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.waits.micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Turns a reconcile took on one source, shared out among its reads.
pub(crate) struct Reservation {
    turns: Arc<Semaphore>,
    pool_size: u32,
    /// Given back when the last of the reconcile's connections is back, not when the
    /// reconcile returns: a reader may still be rolling back.
    _held: OwnedSemaphorePermit,
}

/// A read's turn: held as long as its connection is out of the pool.
#[derive(Default)]
pub(crate) struct Turn {
    _permit: Option<OwnedSemaphorePermit>,
    _of: Option<Arc<Reservation>>,
}

impl Gate {
    /// The gate of a source whose pool opens at most `pool_size` connections.
    pub(crate) fn new_shared(pool_size: u32) -> Self {
        Gate::Shared {
            turns: Arc::new(Semaphore::new(pool_size as usize)),
            pool_size,
            waits: Arc::default(),
        }
    }

    /// A turn for one connection of `source`, waiting at most [`TURN_WAIT`].
    pub(crate) async fn turn(&self, source: &SourceName) -> Result<Turn, SourceError> {
        match self {
            Gate::Open => Ok(Turn::default()),
            Gate::Shared {
                turns,
                pool_size,
                waits,
            } => Ok(Turn {
                _permit: Some(shared(source, turns, 1, *pool_size, waits).await?),
                _of: None,
            }),
            // Only the reconcile's own reads hold these, each briefly past its end (a
            // rollback): a wait as long as a whole turn's is a defect, not a busy pool.
            Gate::Reserved(reservation) => {
                let permit = wait(source, &reservation.turns, 1, reservation.pool_size)
                    .await
                    .map_err(|e| match e {
                        SourceError::NoTurn { source_name, .. } => SourceError::Connect {
                            source_name,
                            message: format!(
                                "a reconcile's own reads kept its turns on the source's connections for {} minutes (a defect in trueup: please report it)",
                                TURN_WAIT.as_secs() / 60
                            ),
                        },
                        other => other,
                    })?;
                Ok(Turn {
                    _permit: Some(permit),
                    _of: Some(Arc::clone(reservation)),
                })
            }
        }
    }

    /// `n` turns taken at once, shared out among the reads that go through the gate returned.
    /// An open gate stays open; a reserved one (a reconcile inside a reconcile) is refused
    /// rather than risk waiting on itself.
    pub(crate) async fn reserve(&self, source: &SourceName, n: u32) -> Result<Gate, SourceError> {
        match self {
            Gate::Open => Ok(Gate::Open),
            Gate::Shared {
                turns,
                pool_size,
                waits,
            } => {
                if n > *pool_size {
                    return Err(SourceError::PoolTooSmall {
                        source_name: source.clone(),
                        pool_size: *pool_size,
                    });
                }
                let held = shared(source, turns, n, *pool_size, waits).await?;
                Ok(Gate::Reserved(Arc::new(Reservation {
                    turns: Arc::new(Semaphore::new(n as usize)),
                    pool_size: *pool_size,
                    _held: held,
                })))
            }
            Gate::Reserved(_) => Err(SourceError::Connect {
                source_name: source.clone(),
                message: "a reconcile took turns on the source's connections twice (a defect in trueup: please report it)".into(),
            }),
        }
    }

    /// How the source's shared turns are used now; `None` for a gate that is not shared.
    pub(crate) fn usage(&self) -> Option<TurnUse> {
        let Gate::Shared {
            turns,
            pool_size,
            waits,
        } = self
        else {
            return None;
        };
        let free = u32::try_from(turns.available_permits()).unwrap_or(u32::MAX);
        Some(TurnUse {
            pool_size: *pool_size,
            held: pool_size.saturating_sub(free),
            waiting: waits.now.load(Ordering::Relaxed),
            waited: std::time::Duration::from_micros(waits.micros.load(Ordering::Relaxed)),
        })
    }

    /// Ends every wait for a shared turn at once (the process is shutting down).
    pub(crate) fn close(&self) {
        if let Gate::Shared { turns, .. } = self {
            turns.close();
        }
    }
}

/// `n` of the shared turns: at once when they are free, else waited for and counted.
async fn shared(
    source: &SourceName,
    turns: &Arc<Semaphore>,
    n: u32,
    pool_size: u32,
    waits: &Waits,
) -> Result<OwnedSemaphorePermit, SourceError> {
    if let Ok(permit) = Arc::clone(turns).try_acquire_many_owned(n) {
        return Ok(permit);
    }
    let _waiting = Waiting::start(waits);
    wait(source, turns, n, pool_size).await
}

async fn wait(
    source: &SourceName,
    turns: &Arc<Semaphore>,
    n: u32,
    pool_size: u32,
) -> Result<OwnedSemaphorePermit, SourceError> {
    match tokio::time::timeout(TURN_WAIT, Arc::clone(turns).acquire_many_owned(n)).await {
        Ok(Ok(permit)) => Ok(permit),
        // Closed by `close`: the process is shutting down.
        Ok(Err(_)) => Err(SourceError::Connect {
            source_name: source.clone(),
            message: "the source was closed (trueup is shutting down)".to_owned(),
        }),
        Err(_) => Err(SourceError::NoTurn {
            source_name: source.clone(),
            pool_size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn gate(pool_size: u32) -> Gate {
        Gate::new_shared(pool_size)
    }

    fn free(gate: &Gate) -> usize {
        match gate {
            Gate::Shared { turns, .. } => turns.available_permits(),
            Gate::Reserved(r) => r.turns.available_permits(),
            Gate::Open => usize::MAX,
        }
    }

    fn name() -> SourceName {
        SourceName::parse("db").unwrap()
    }

    #[tokio::test]
    async fn a_reservation_is_given_back_only_when_its_last_turn_is() {
        let gate = gate(3);
        let reserved = gate.reserve(&name(), 2).await.unwrap();
        assert_eq!(free(&gate), 1);
        let turn = reserved.turn(&name()).await.unwrap();
        assert_eq!(free(&reserved), 1);
        drop(reserved);
        // The reconcile returned, but one of its connections is still out.
        assert_eq!(free(&gate), 1);
        drop(turn);
        assert_eq!(free(&gate), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn usage_counts_the_turns_held_the_reads_waiting_and_how_long_they_waited() {
        let gate = gate(3);
        let used = |held, waiting, secs| TurnUse {
            pool_size: 3,
            held,
            waiting,
            waited: std::time::Duration::from_secs(secs),
        };
        assert_eq!(gate.usage(), Some(used(0, 0, 0)));
        let reserved = gate.reserve(&name(), 2).await.unwrap();
        let one = gate.turn(&name()).await.unwrap();
        assert_eq!(gate.usage(), Some(used(3, 0, 0)));
        let db = name();
        let waiting = gate.turn(&db);
        tokio::pin!(waiting);
        // Polled once, it queues for a turn.
        assert!(waiting.as_mut().now_or_never().is_none(), "no turn is free");
        assert_eq!(gate.usage(), Some(used(3, 1, 0)));
        tokio::time::sleep(std::time::Duration::from_secs(7)).await;
        drop(reserved);
        let two = waiting.await.unwrap();
        assert_eq!(gate.usage(), Some(used(2, 0, 7)));
        drop((one, two));
        assert_eq!(gate.usage(), Some(used(0, 0, 7)));
        assert_eq!(Gate::Open.usage(), None);
    }

    #[tokio::test]
    async fn a_reservation_larger_than_the_pool_is_refused_at_once() {
        let err = gate(1).reserve(&name(), 2).await.err().unwrap();
        assert!(
            matches!(err, SourceError::PoolTooSmall { pool_size: 1, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_turn_waits_while_the_reservations_hold_every_connection() {
        let gate = gate(2);
        let db = name();
        let held = gate.reserve(&db, 2).await.unwrap();
        let waiting = gate.turn(&db);
        tokio::pin!(waiting);
        // Polled once, it queues for a turn.
        assert!(waiting.as_mut().now_or_never().is_none(), "no turn is free");
        drop(held);
        let turn = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the turn comes once the reservation is given back");
        assert!(turn.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_that_does_not_come_within_the_turn_wait_fails_saying_what_to_change() {
        let gate = gate(2);
        let held = gate.reserve(&name(), 2).await.unwrap();
        let asked = tokio::time::Instant::now();
        let err = gate.turn(&name()).await.err().unwrap();
        assert!(asked.elapsed() >= TURN_WAIT, "{:?}", asked.elapsed());
        assert_eq!(
            err.to_string(),
            "source `db`: no turn on its 2 connections came within 15 minutes, other reads held \
             them all: raise its `pool_size`, or run fewer invariants on it at once"
        );
        drop(held);
    }

    #[tokio::test]
    async fn a_reconcile_inside_a_reconcile_is_refused_rather_than_left_waiting_on_itself() {
        let reserved = gate(4).reserve(&name(), 1).await.unwrap();
        let err = reserved.reserve(&name(), 1).await.err().unwrap();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
