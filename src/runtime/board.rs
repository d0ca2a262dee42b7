//! What the service knows about each invariant right now: health, last run, last error.
//! In memory; the ledger in the store is the record.

use std::collections::BTreeMap;
use std::sync::RwLock;

use chrono::{DateTime, Utc};

use crate::domain::Invariant;
use crate::domain::RunStatus;
use crate::runner::RunOutcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not evaluated since start.
    Unknown,
    Ok,
    /// The last evaluation failed; nothing about violations is known from it.
    Error,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct InvariantState {
    pub health: Health,
    /// The alert's state (inactive, pending, firing).
    pub alert: crate::domain::AlertState,
    pub running: bool,
    pub last_run_id: Option<i64>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_status: Option<RunStatus>,
    pub last_error: Option<String>,
    pub open_violations: Option<u64>,
}

#[derive(Default)]
pub struct Board {
    states: RwLock<BTreeMap<String, InvariantState>>,
    /// One lock per invariant: held for the whole of a run, scheduled or requested.
    run_locks: std::sync::Mutex<BTreeMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl Board {
    /// The lock that keeps two runs of `name` from overlapping.
    pub fn run_lock(&self, name: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.run_locks.lock().unwrap_or_else(|e| e.into_inner());
        std::sync::Arc::clone(locks.entry(name.to_owned()).or_default())
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut InvariantState)) {
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        let state = states.entry(name.to_owned()).or_insert(InvariantState {
            health: Health::Unknown,
            alert: crate::domain::AlertState::Inactive,
            running: false,
            last_run_id: None,
            last_run_at: None,
            last_status: None,
            last_error: None,
            open_violations: None,
        });
        f(state);
    }

    pub fn declare(&self, invariant: &Invariant) {
        self.update(invariant.name.as_str(), |_| {});
    }

    pub fn alert(&self, name: &str, state: crate::domain::AlertState) {
        self.update(name, |s| s.alert = state);
    }

    pub fn started(&self, name: &str) {
        self.update(name, |s| s.running = true);
    }

    pub fn finished(&self, name: &str, outcome: &RunOutcome) {
        self.update(name, |s| {
            s.running = false;
            s.last_run_id = Some(outcome.run_id);
            s.last_run_at = Some(outcome.finished_at);
            s.last_status = Some(outcome.status);
            match outcome.status {
                RunStatus::Succeeded => {
                    s.health = Health::Ok;
                    s.last_error = None;
                    s.open_violations = Some(outcome.open_after);
                }
                RunStatus::Failed => {
                    s.health = Health::Error;
                    s.last_error.clone_from(&outcome.error);
                }
                RunStatus::Cancelled | RunStatus::Running => {}
            }
        });
    }

    pub fn store_failed(&self, name: &str, error: &str) {
        self.update(name, |s| {
            s.running = false;
            s.health = Health::Error;
            s.last_error = Some(format!("cannot record the run: {error}"));
        });
    }

    pub fn get(&self, name: &str) -> Option<InvariantState> {
        self.states
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn snapshot(&self) -> BTreeMap<String, InvariantState> {
        self.states
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
