//! `trueup serve`: the scheduler and the HTTP endpoints in one process.
//!
//! [`Application::build`] binds the listener (port 0 in tests) and starts the scheduler;
//! [`Application::run_until`] serves until the given shutdown future resolves, then drains:
//! no new runs, runs in flight finish within the grace period or are cancelled (and recorded
//! as cancelled), the HTTP server stops.

pub mod metrics;
pub mod scheduler;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::ServeConfig;
use crate::domain::Invariant;

use metrics::Metrics;
use scheduler::Shared;
use state::Board;

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
    #[error("notification channel `{channel}`: {message}")]
    Channel { channel: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
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
    invariants: Vec<Arc<Invariant>>,
    shared: Shared,
    settings: ServeConfig,
    channels: Arc<std::collections::BTreeMap<String, crate::notify::Channel>>,
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
                crate::notify::Channel::open(config).map_err(|message| ServeError::Channel {
                    channel: name.clone(),
                    message,
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
        if !others.is_empty() && !app.store.supports_replicas() {
            let _ = app.store.retire(&replica).await;
            return Err(ServeError::SingleReplica {
                others: others.join(", "),
            });
        }
        let shared = Shared {
            replica,
            lease: settings.lease.as_std(),
            channels: Arc::new(channels.keys().cloned().collect()),
            wake_outbox: Arc::new(tokio::sync::Notify::new()),
            sources: app.sources.clone(),
            store: Arc::clone(&app.store),
            metrics: Arc::new(Metrics::new()),
            board: Arc::new(Board::default()),
            run_timeout: settings.run_timeout.as_std(),
            cancel_runs: CancellationToken::new(),
        };
        for name in channels.keys() {
            shared.metrics.declare_channel(name);
        }
        // The alert state survives restarts; show it from the start.
        for inv in &invariants {
            let alert = shared.store.alert(inv.name.as_str()).await?;
            shared.board.declare(inv);
            shared.board.alert(inv.name.as_str(), alert.state);
        }
        Ok(Self {
            addr,
            listener,
            app: Arc::new(app),
            invariants,
            shared,
            settings,
            channels: Arc::new(channels),
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
        let mut scheduled = scheduler::start(&self.invariants, &self.shared, &stop);
        let takeover = tokio::spawn(scheduler::take_over_abandoned_ticks(
            self.invariants.clone(),
            self.shared.clone(),
            stop.clone(),
        ));
        let heartbeat = {
            let store = Arc::clone(&self.shared.store);
            let replica = Arc::clone(&self.shared.replica);
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
                }
            })
        };
        let stop_outbox = CancellationToken::new();
        let outbox = tokio::spawn(
            crate::notify::worker::Worker {
                store: Arc::clone(&self.shared.store),
                channels: Arc::clone(&self.channels),
                metrics: Arc::clone(&self.shared.metrics),
                wake: Arc::clone(&self.shared.wake_outbox),
            }
            .run(stop_outbox.clone()),
        );
        tracing::info!(
            addr = %self.addr,
            invariants = self.invariants.len(),
            scheduled = scheduled.len(),
            "trueup is serving"
        );
        if self.settings.tokens.is_empty() {
            tracing::warn!(
                "no API tokens configured (serve.tokens): every route but /healthz and /readyz will answer 401"
            );
        }
        let router = crate::http::router(crate::http::HttpState {
            shared: self.shared.clone(),
            invariants: self.invariants.clone(),
            tokens: Arc::new(self.settings.tokens.clone()),
        });
        let server_stop = CancellationToken::new();
        let server = {
            let server_stop = server_stop.clone();
            tokio::spawn(async move {
                axum::serve(self.listener, router)
                    .with_graceful_shutdown(async move { server_stop.cancelled().await })
                    .await
            })
        };

        shutdown.await;
        tracing::info!("shutting down: no new runs; waiting for runs in flight");
        stop.cancel();
        let grace = self.settings.shutdown_grace.as_std();
        if tokio::time::timeout(grace, drain(&mut scheduled))
            .await
            .is_err()
        {
            tracing::warn!(
                "runs still going after {}; cancelling them",
                humantime::format_duration(grace)
            );
            self.shared.cancel_runs.cancel();
            drain(&mut scheduled).await;
        }
        let _ = takeover.await;
        let _ = heartbeat.await;
        if let Err(e) = self.shared.store.retire(&self.shared.replica).await {
            tracing::warn!("cannot deregister this replica: {e}");
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

/// A few random bits so two replicas on one host with a reused pid stay distinct.
fn rand_suffix() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
}

async fn drain(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// A grace period long enough for the usual run; see `serve.shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
