//! trueup: declare business invariants, check them against real databases, keep a ledger of
//! violations.
//!
//! Code map, in reading order (see ARCHITECTURE.md for the boundaries):
//! - [`domain`]: pure types (names, schedules, durations, values, invariants, violations).
//! - [`config`]: `trueup.yaml`, secrets by `${ENV}` reference only.
//! - [`rules`]: invariant files → [`domain::Invariant`], every error with its location.
//! - [`source`]: read-only access to the databases being checked.
//! - [`engine`]: evaluation (check, reconcile merge, transitions).
//! - [`store`]: trueup's own tables (runs, violation ledger), SQLite or PostgreSQL.
//! - [`runner`]: one run of one invariant, from sources to ledger.
//! - [`demo`]: the self-contained demo (`trueup demo`).
//! - [`app`]: config + invariants + store + sources, opened once for a command.
//! - [`notify`]: alert notices, their email and webhook channels.
//! - [`plan`]: compensation plans: propose, approve, apply (the only writes to monitored
//!   systems, through [`plan::targets`]).
//! - [`incident`]: incidents (window, scope, phases, notes).
//! - [`runtime`]: the running service's context (metrics, board, catalog) and what every
//!   surface does the same way: run an invariant now, request an apply, verify an incident.
//! - [`http`]: the API and the console, over the runtime.
//! - [`serve`]: `trueup serve`, the composition root: scheduler, outbox worker, reload,
//!   shutdown.
//! - [`cli`]: the commands.

pub mod app;
pub mod capture;
pub mod cli;
pub mod config;
pub mod connect;
pub mod demo;
pub mod diagnostic;
pub mod domain;
pub mod engine;
pub mod http;
pub mod incident;
pub mod net;
pub mod notify;
pub mod plan;
pub mod rules;
pub mod runner;
pub mod runtime;
pub mod serve;
pub mod slo;
pub mod source;
pub mod store;
pub mod trace;
pub mod yaml;

// The reconcile hot path allocates a row vector and its strings per row; mimalloc's thread
// caches make that markedly cheaper than glibc malloc (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc advises its arenas for them,
/// and where the kernel's THP setting is `madvise` (a common default) every touched 2 MiB of
/// an arena then becomes resident whole: a checksummed reconcile of 10M rows a side peaked
/// at ~100 MiB with them and ~60 MiB without, in the same time (BENCHMARKS.md). Called
/// first thing in `main`, and by the benchmarks, which measure the same process. A kernel
/// that refuses leaves them on: more memory, nothing else.
pub fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}
