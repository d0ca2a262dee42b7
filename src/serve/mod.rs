//! `trueup serve`: the scheduler and the HTTP endpoints in one process.
//!
//! [`Application::build`] binds the listener (port 0 in tests) and loads the alert state;
//! [`Application::run_until`] serves until the given shutdown future resolves, then drains:
//! no new runs, runs in flight finish within the grace period or are cancelled (and recorded
//! as cancelled), the HTTP server stops.

pub mod outbox;
pub mod scheduler;
mod segments;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::ServeConfig;
use crate::domain::Invariant;

use crate::runtime::Runtime;
use crate::runtime::board::Board;
use crate::runtime::catalog::{self, Catalog};
use crate::runtime::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr}: {source}; pick another address with --listen or `serve.listen`"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error(
        "cannot {verb} {path}, the lock that keeps a SQLite store to one trueup serve: {source}; check that its folder is writable"
    )]
    Lock {
        verb: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("notification channel `{channel}`: {source}")]
    Channel {
        channel: String,
        source: crate::notify::ChannelError,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Target(#[from] crate::plan::targets::TargetError),
    #[error(
        "another trueup serve ({others}) is using this SQLite store; SQLite supports a single replica. Stop it, or move the store to PostgreSQL to run several"
    )]
    SingleReplica { others: String },
}

/// How often a replica says it is alive; one silent for three beats counts as gone.
const HEARTBEAT: Duration = Duration::from_secs(5);

pub struct Application {
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    runtime: Runtime,
    settings: ServeConfig,
    channels: Arc<std::collections::BTreeMap<String, crate::notify::Channel>>,
    /// Held for the life of the process on the SQLite store.
    _single_replica_lock: Option<std::fs::File>,
    /// Registered while building, so a SIGHUP sent as soon as the process announces itself
    /// reloads instead of killing it (the default action of an unhandled SIGHUP).
    hangups: tokio::sync::mpsc::Receiver<()>,
}

impl Application {
    /// Binds the listener. Nothing runs until [`Application::run_until`].
    pub async fn build(app: App, settings: ServeConfig) -> Result<Self, ServeError> {
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: settings.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(ServeError::Http)?;
        let invariants: Vec<Arc<Invariant>> =
            app.invariants.iter().cloned().map(Arc::new).collect();
        let mut channels = std::collections::BTreeMap::new();
        for (name, config) in &app.config.channels {
            let channel =
                crate::notify::Channel::open(config).map_err(|source| ServeError::Channel {
                    channel: name.clone(),
                    source,
                })?;
            channels.insert(name.clone(), channel);
        }
        let replica: Arc<str> = format!(
            "{}-{}-{:04x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "trueup".into()),
            std::process::id(),
            rand_suffix()
        )
        .into();
        let now = chrono::Utc::now();
        let others = app
            .store
            .heartbeat(
                &replica,
                now,
                now - chrono::TimeDelta::from_std(HEARTBEAT * 3).unwrap_or_default(),
            )
            .await?;
        // SQLite admits one serve process: an OS lock beside the database file says whether
        // another holds it, and is released by the kernel when that process dies, however.
        let single_replica_lock = if app.store.supports_replicas() {
            None
        } else {
            let lock = lock_sqlite_store(app.config.store.expose(), &others)?;
            // Holding the lock, this is the only worker: notices claimed by one that stopped
            // (killed mid-delivery) go out now rather than after their claim's lease.
            match app.store.release_outbox_claims().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!("{n} notice(s) claimed by a trueup that stopped are sent again")
                }
                Err(e) => tracing::warn!("cannot release stale notice claims: {e}"),
            }
            Some(lock)
        };
        let targets = crate::plan::targets::Targets::open(&app.config)?;
        let catalog = Arc::new(Catalog::new(invariants.clone()));
        let runtime = Runtime {
            catalog,
            targets: Arc::new(targets),
            replica,
            lease: settings.lease.as_std(),
            route: Arc::new(app.config.route()),
            wake_outbox: Arc::new(tokio::sync::Notify::new()),
            sources: app.sources.clone(),
            store: Arc::clone(&app.store),
            metrics: Arc::new(Metrics::new()),
            board: Arc::new(Board::default()),
            run_timeout: settings.run_timeout.as_std(),
            cancel_runs: CancellationToken::new(),
            config: Arc::new(app.config.clone()),
        };
        for name in channels.keys() {
            runtime.metrics.declare_channel(name);
        }
        // The alert state survives restarts; show it from the start.
        for inv in &invariants {
            let alert = runtime.store.alert(inv.name.as_str()).await?;
            runtime.board.declare(inv);
            runtime.board.alert(inv.name.as_str(), alert.state);
        }
        Ok(Self {
            addr,
            listener,
            app: Arc::new(app),
            runtime,
            settings,
            channels: Arc::new(channels),
            _single_replica_lock: single_replica_lock,
            hangups: hangup_signals(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves and schedules until `shutdown` resolves, then shuts down in order.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let stop = CancellationToken::new();
        let mut scheduled = scheduler::Scheduler::new(self.runtime.clone(), stop.clone());
        scheduled.apply(&self.runtime.catalog.snapshot()).await;
        self.runtime.metrics.reloaded(true);
        let segment_worker = tokio::spawn(segments::work_shared_segments(
            self.runtime.clone(),
            stop.clone(),
        ));
        let takeover = tokio::spawn(scheduler::take_over_abandoned_ticks(
            Arc::clone(&self.runtime.catalog),
            self.runtime.clone(),
            stop.clone(),
        ));
        let heartbeat = {
            let store = Arc::clone(&self.runtime.store);
            let metrics = Arc::clone(&self.runtime.metrics);
            let replica = Arc::clone(&self.runtime.replica);
            let catalog = Arc::clone(&self.runtime.catalog);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(HEARTBEAT);
                loop {
                    tokio::select! {
                        _ = every.tick() => {}
                        () = stop.cancelled() => return,
                    }
                    let now = chrono::Utc::now();
                    if let Err(e) = store.heartbeat(&replica, now, now).await {
                        tracing::warn!("cannot record the heartbeat: {e}");
                    }
                    if let Err(e) = refresh_plan_metrics(store.as_ref(), &metrics).await {
                        tracing::warn!("cannot read plan progress for /metrics: {e}");
                    }
                    if let Err(e) = refresh_slo_metrics(store.as_ref(), &catalog, &metrics).await {
                        tracing::warn!("cannot measure the SLOs for /metrics: {e}");
                        // Unknown, not the last figures: absent series are not read as good.
                        metrics.record_slos(&[]);
                    }
                }
            })
        };
        // Event log feeds run until the drain below; each finishes its batch in hand
        // (stored, then acknowledged).
        let stop_feeds = CancellationToken::new();
        let logs: Vec<_> = self.runtime.config.event_logs.values().cloned().collect();
        crate::capture::prepare_days(&logs, self.runtime.store.as_ref()).await;
        let feeds = crate::capture::spawn_feeds(
            self.runtime.config.event_logs.values().cloned(),
            Arc::clone(&self.runtime.store),
            Arc::clone(&self.runtime.metrics.capture),
            Arc::from(crate::capture::stable_consumer_name()),
            stop_feeds.clone(),
        );
        let retention = {
            let catalog = Arc::clone(&self.runtime.catalog);
            crate::capture::spawn_retention(
                logs,
                Arc::clone(&self.runtime.store),
                Arc::clone(&self.runtime.metrics.capture),
                move |log| {
                    let source = crate::domain::SourceName::of_log(log);
                    catalog
                        .snapshot()
                        .iter()
                        .filter(|i| i.sides().iter().any(|(_, s)| s.source == source))
                        .map(|i| crate::capture::retention::Reader {
                            invariant: i.name.clone(),
                            grace: i.grace,
                        })
                        .collect()
                },
                stop_feeds.clone(),
            )
        };
        let stop_outbox = CancellationToken::new();
        let outbox = tokio::spawn(
            outbox::Worker {
                store: Arc::clone(&self.runtime.store),
                channels: Arc::clone(&self.channels),
                metrics: Arc::clone(&self.runtime.metrics),
                wake: Arc::clone(&self.runtime.wake_outbox),
            }
            .run(stop_outbox.clone()),
        );
        tracing::info!(
            addr = %self.addr,
            invariants = self.runtime.catalog.snapshot().len(),
            scheduled = scheduled.scheduled(),
            "trueup is serving"
        );
        if self.settings.tokens.is_empty() {
            tracing::warn!(
                "no API tokens configured (serve.tokens): every route but /healthz and /readyz will answer 401"
            );
        }
        let router = crate::http::router(crate::http::HttpState {
            runtime: self.runtime.clone(),
            tokens: Arc::new(self.settings.tokens.clone()),
        });
        let server_stop = CancellationToken::new();
        let listener = self.listener;
        let server = {
            let server_stop = server_stop.clone();
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { server_stop.cancelled().await })
                    .await
            })
        };

        // Serve until asked to stop; reload the invariants on SIGHUP and when their files
        // change.
        let mut shutdown = std::pin::pin!(shutdown);
        let mut hangups = self.hangups;
        let dir = self.app.config.invariants_dir.clone();
        let mut seen = catalog::folder_state(&dir);
        let mut poll = tokio::time::interval(RELOAD_POLL);
        loop {
            let reason = tokio::select! {
                () = &mut shutdown => break,
                Some(()) = hangups.recv() => "SIGHUP",
                _ = poll.tick() => {
                    let now = catalog::folder_state(&dir);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "a change in the invariant files"
                }
            };
            // A reload waits for the loops it stops; a shutdown meanwhile goes ahead (the drain
            // below waits for them too).
            tokio::select! {
                () = reload(&self.app, &self.runtime, &mut scheduled, reason) => {}
                () = &mut shutdown => break,
            }
        }
        tracing::info!("shutting down: no new runs; waiting for runs in flight");
        stop.cancel();
        let grace = self.settings.shutdown_grace.as_std();
        let mut segment_worker = segment_worker;
        if tokio::time::timeout(grace, async {
            scheduled.drain().await;
            let _ = (&mut segment_worker).await;
        })
        .await
        .is_err()
        {
            tracing::warn!(
                "runs still going after {}; cancelling them",
                humantime::format_duration(grace)
            );
            self.runtime.cancel_runs.cancel();
            scheduled.drain().await;
        }
        if !segment_worker.is_finished() {
            let _ = segment_worker.await;
        }
        let _ = takeover.await;
        let _ = heartbeat.await;
        if let Err(e) = self.runtime.store.retire(&self.runtime.replica).await {
            tracing::warn!("cannot deregister this replica: {e}");
        }
        stop_feeds.cancel();
        for feed in feeds {
            let _ = feed.await;
        }
        if let Some(retention) = retention {
            let _ = retention.await;
        }
        // Undelivered notices stay in the outbox for the next start.
        stop_outbox.cancel();
        let _ = outbox.await;
        server_stop.cancel();
        let served = server.await;
        self.app.close().await;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Http(e)),
            Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
        }
    }
}

/// Takes the exclusive lock of a SQLite store (`<database>.serve.lock`).
fn lock_sqlite_store(url: &str, others: &[String]) -> Result<std::fs::File, ServeError> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    let lock_path = format!("{path}.serve.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| ServeError::Lock {
            verb: "open",
            path: lock_path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServeError::SingleReplica {
            others: if others.is_empty() {
                format!("it holds {lock_path}")
            } else {
                others.join(", ")
            },
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(ServeError::Lock {
            verb: "lock",
            path: lock_path,
            source,
        }),
    }
}

/// A few random bits so two replicas on one host with a reused pid stay distinct.
fn rand_suffix() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
}

/// Re-reads the invariant files. On any error the running set stays as it is, every problem
/// is logged, and `trueup_config_last_reload_successful` drops to 0. On success the new set
/// is in place, and nothing of a removed invariant runs any more, before the gauge says 1.
async fn reload(app: &App, runtime: &Runtime, scheduled: &mut scheduler::Scheduler, reason: &str) {
    let known = crate::rules::Known::of(&app.config);
    match crate::rules::load(&app.config.invariants_dir, &known) {
        Ok(list) => {
            let invariants: Vec<Arc<Invariant>> = list.into_iter().map(Arc::new).collect();
            let changes = scheduled.apply(&invariants).await;
            runtime.catalog.replace(invariants);
            runtime.metrics.reloaded(true);
            tracing::info!(
                reason,
                added = ?changes.added,
                removed = ?changes.removed,
                changed = ?changes.changed,
                unchanged = changes.unchanged.len(),
                "reloaded the invariants"
            );
        }
        Err(diagnostics) => {
            runtime.metrics.reloaded(false);
            for d in &diagnostics.0 {
                tracing::error!("{d}");
            }
            tracing::error!(
                reason,
                problems = diagnostics.0.len(),
                "reload refused; the previous invariants keep running"
            );
        }
    }
}

/// How often the invariant folder is checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// A stream of SIGHUPs (none where there are no signals).
fn hangup_signals() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Registers SIGTERM and SIGINT (Ctrl-C) handlers now and returns a future that resolves on
/// the first of them. Registering eagerly matters: a handler installed only when the future is
/// first polled leaves a window after the process announces itself in which SIGTERM still has
/// its default action and kills it without a graceful shutdown.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static>
{
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = interrupt.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// A grace period long enough for the usual run; see `serve.shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The consistency objectives of the loaded invariants, measured now from the store (runs may
/// complete in other replicas).
async fn refresh_slo_metrics(
    store: &dyn crate::store::Store,
    catalog: &crate::runtime::catalog::Catalog,
    metrics: &Metrics,
) -> Result<(), crate::store::StoreError> {
    let now = chrono::Utc::now();
    let mut statuses = Vec::new();
    for invariant in catalog.snapshot() {
        if let Some(status) = crate::slo::status(store, &invariant, now).await? {
            statuses.push((invariant.name.to_string(), status));
        }
    }
    metrics.record_slos(&statuses);
    Ok(())
}

/// Plans shown in /metrics: the most recent ones.
const PLANS_IN_METRICS: u32 = 20;

/// Progress of recent plans from the store (applies may run in other processes).
async fn refresh_plan_metrics(
    store: &dyn crate::store::Store,
    metrics: &Metrics,
) -> Result<(), crate::store::StoreError> {
    let mut rows = Vec::new();
    for plan in store.plans(None, PLANS_IN_METRICS).await? {
        let progress = store.action_progress(plan.id).await?;
        rows.push((plan, progress));
    }
    metrics.record_plans(&rows);
    Ok(())
}
