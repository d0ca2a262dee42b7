//! Everything a command needs, opened once: configuration, invariants, store and sources.

use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;

use crate::config::Config;
use crate::diagnostic::Diagnostics;
use crate::domain::{Actor, Invariant};
use crate::plan::Evaluation;
use crate::runner::{self, RunOutcome};
use crate::source::{SourceError, Sources};
use crate::store::{self, Store, StoreError};

/// How many invariants one `check` evaluates at a time.
const PARALLEL_EVALUATIONS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(Diagnostics),
    #[error("{0}")]
    Rules(Diagnostics),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("no invariant named `{name}`{hint}")]
    UnknownInvariant { name: String, hint: String },
}

pub struct App {
    pub config: Config,
    pub invariants: Vec<Invariant>,
    pub store: Arc<dyn Store>,
    pub sources: Sources,
}

impl App {
    /// Loads the config (explicit path, `./trueup.yaml`, or defaults), the invariants, opens
    /// the store (migrating it) and the sources.
    pub async fn open(config_path: Option<&Path>) -> Result<Self, AppError> {
        let config = Config::discover(config_path).map_err(AppError::Config)?;
        Self::with_config(config).await
    }

    pub async fn with_config(config: Config) -> Result<Self, AppError> {
        let invariants =
            crate::rules::load(&config.invariants_dir, &crate::rules::Known::of(&config))
                .map_err(AppError::Rules)?;
        let store = store::open(&config.store).await?;
        let mut sources = Sources::open_all(&config.sources).await?;
        // Each event log is a source too (`log:NAME`), read from the store.
        let reader: Arc<dyn crate::source::LogReader> = store.clone();
        sources.attach_logs(config.event_logs.keys(), reader);
        Ok(Self {
            config,
            invariants,
            store,
            sources,
        })
    }

    /// The loaded invariant with this name.
    pub fn invariant(&self, name: &str) -> Option<&Invariant> {
        self.invariants.iter().find(|i| i.name.as_str() == name)
    }

    /// The invariants named, in the order given, or all of them.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Invariant>, AppError> {
        if names.is_empty() {
            return Ok(self.invariants.iter().collect());
        }
        names
            .iter()
            .map(|name| {
                self.invariants
                    .iter()
                    .find(|i| i.name.as_str() == name)
                    .ok_or_else(|| AppError::UnknownInvariant {
                        name: name.clone(),
                        hint: crate::rules::suggest(
                            name,
                            self.invariants.iter().map(|i| i.name.as_str()),
                        )
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_else(|| "; `trueup validate` lists what is loaded".into()),
                    })
            })
            .collect()
    }

    /// Evaluates the selected invariants now, a few at a time, and proposes the plans their
    /// compensations call for (as `requested_by`); results in selection order. With
    /// `full_pass`, incremental reconciles read every row too.
    pub async fn check(
        &self,
        names: &[String],
        requested_by: &Actor,
        full_pass: bool,
    ) -> Result<Vec<Evaluation>, AppError> {
        let selected = self.select(names)?;
        let limits = runner::RunLimits {
            full_pass,
            ..runner::RunLimits::default()
        };
        let outcomes: Vec<Result<RunOutcome, StoreError>> =
            futures_util::stream::iter(selected.iter().copied())
                .map(|inv| {
                    runner::run_invariant_limited(inv, &self.sources, self.store.as_ref(), &limits)
                })
                .buffered(PARALLEL_EVALUATIONS)
                .collect()
                .await;
        let outcomes = outcomes.into_iter().collect::<Result<Vec<_>, _>>()?;
        // Proposed in selection order, so plan numbers follow the invariants' order.
        let mut evaluations = Vec::with_capacity(outcomes.len());
        for (inv, outcome) in selected.iter().zip(outcomes) {
            evaluations.push(
                crate::plan::propose_after_run(
                    self.store.as_ref(),
                    &self.config,
                    inv,
                    outcome,
                    requested_by,
                )
                .await,
            );
        }
        Ok(evaluations)
    }

    pub async fn close(&self) {
        self.sources.close().await;
        self.store.close().await;
    }
}
