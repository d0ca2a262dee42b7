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
    },
    /// A reconcile's: it holds some of the shared turns, and its reads take turns among them.
    Reserved(Arc<Reservation>),
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
    /// A turn for one connection of `source`, waiting at most [`TURN_WAIT`].
    pub(crate) async fn turn(&self, source: &SourceName) -> Result<Turn, SourceError> {
        match self {
            Gate::Open => Ok(Turn::default()),
            Gate::Shared { turns, pool_size } => Ok(Turn {
                _permit: Some(wait(source, turns, 1, *pool_size).await?),
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
            Gate::Shared { turns, pool_size } => {
                if n > *pool_size {
                    return Err(SourceError::PoolTooSmall {
                        source_name: source.clone(),
                        pool_size: *pool_size,
                    });
                }
                let held = wait(source, turns, n, *pool_size).await?;
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

    /// Ends every wait for a shared turn at once (the process is shutting down).
    pub(crate) fn close(&self) {
        if let Gate::Shared { turns, .. } = self {
            turns.close();
        }
    }
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
    use super::*;

    fn shared(pool_size: u32) -> Gate {
        Gate::Shared {
            turns: Arc::new(Semaphore::new(pool_size as usize)),
            pool_size,
        }
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
        let gate = shared(3);
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

    #[tokio::test]
    async fn a_reservation_larger_than_the_pool_is_refused_at_once() {
        let err = shared(1).reserve(&name(), 2).await.err().unwrap();
        assert!(
            matches!(err, SourceError::PoolTooSmall { pool_size: 1, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_turn_waits_while_the_reservations_hold_every_connection() {
        let gate = shared(2);
        let db = name();
        let held = gate.reserve(&db, 2).await.unwrap();
        let waiting = gate.turn(&db);
        tokio::pin!(waiting);
        tokio::select! {
            biased;
            _ = &mut waiting => panic!("no turn is free"),
            () = std::future::ready(()) => {}
        }
        drop(held);
        let turn = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the turn comes once the reservation is given back");
        assert!(turn.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_that_does_not_come_within_the_turn_wait_fails_saying_what_to_change() {
        let gate = shared(2);
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
        let reserved = shared(4).reserve(&name(), 1).await.unwrap();
        let err = reserved.reserve(&name(), 1).await.err().unwrap();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
