//! Prometheus metrics, named the Prometheus way: `trueup_*_total` counters, `*_seconds`,
//! labelled by invariant.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::domain::RunStatus;
use crate::domain::{Invariant, ViolationKind};
use crate::runner::RunOutcome;

pub struct Metrics {
    registry: Registry,
    runs: IntCounterVec,
    failures: IntCounterVec,
    missed_ticks: IntCounterVec,
    duration: HistogramVec,
    last_run: GaugeVec,
    last_success: GaugeVec,
    healthy: IntGaugeVec,
    violations: IntGaugeVec,
    rows_read: IntCounterVec,
    reload_ok: prometheus::IntGauge,
    reload_time: prometheus::Gauge,
    reloads: IntCounterVec,
    notifications_sent: IntCounterVec,
    notifications_failed: IntCounterVec,
    pub http_requests: IntCounterVec,
    plan_actions: IntGaugeVec,
    plan_actions_total: IntGaugeVec,
    source_privileged: IntGaugeVec,
    source_pool_size: IntGaugeVec,
    source_turns_held: IntGaugeVec,
    source_turns_waiting: IntGaugeVec,
    source_turn_wait: prometheus::CounterVec,
    /// Held while the turn-wait counters catch up: two scrapes at once would both add the
    /// same difference.
    source_turn_wait_catch_up: std::sync::Mutex<()>,
    slo_objective: GaugeVec,
    slo_breaching: IntGaugeVec,
    slo_sli: GaugeVec,
    slo_budget_remaining: GaugeVec,
    slo_breach: GaugeVec,
    slo_allowed_breach: GaugeVec,
    slo_unverified: GaugeVec,
    /// The event logs' intake.
    pub capture: std::sync::Arc<crate::capture::CaptureMetrics>,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Metrics {
    /// Sets, for each source whose role has been audited, whether it runs with a privileged
    /// role that `allow_privileged_role: true` accepted.
    pub fn record_sources<'a>(
        &self,
        sources: impl Iterator<Item = (&'a crate::domain::SourceName, bool)>,
    ) {
        for (name, privileged) in sources {
            self.source_privileged
                .with_label_values(&[name.as_str()])
                .set(i64::from(privileged));
        }
    }

    /// Sets each database source's connection turns as they are used now: how many of its
    /// `pool_size` are held, how many reads wait for one, and how long reads have waited.
    pub fn record_turns<'a>(
        &self,
        sources: impl Iterator<Item = (&'a crate::domain::SourceName, crate::source::TurnUse)>,
    ) {
        for (name, turns) in sources {
            let labels = [name.as_str()];
            self.source_pool_size
                .with_label_values(&labels)
                .set(i64::from(turns.pool_size));
            self.source_turns_held
                .with_label_values(&labels)
                .set(i64::from(turns.held));
            self.source_turns_waiting
                .with_label_values(&labels)
                .set(i64::try_from(turns.waiting).unwrap_or(i64::MAX));
            // The source keeps the total; the counter catches up with it.
            let _one_at_a_time = self
                .source_turn_wait_catch_up
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let waited = self.source_turn_wait.with_label_values(&labels);
            let more = turns.waited.as_secs_f64() - waited.get();
            if more > 0.0 {
                waited.inc_by(more);
            }
        }
    }

    /// Replaces the SLO gauges with the objectives measured now.
    pub fn record_slos(&self, statuses: &[(String, crate::slo::SloStatus)]) {
        for g in [
            &self.slo_objective,
            &self.slo_sli,
            &self.slo_budget_remaining,
            &self.slo_breach,
            &self.slo_allowed_breach,
            &self.slo_unverified,
        ] {
            g.reset();
        }
        self.slo_breaching.reset();
        for (invariant, status) in statuses {
            let labels = [invariant.as_str()];
            let m = &status.measure;
            self.slo_objective
                .with_label_values(&labels)
                .set(status.objective.target.ratio());
            self.slo_breaching
                .with_label_values(&labels)
                .set(i64::from(m.breaching));
            // No SLI before the first run: absent, not 100 %.
            if let Some(sli) = m.sli() {
                self.slo_sli.with_label_values(&labels).set(sli);
            }
            self.slo_budget_remaining
                .with_label_values(&labels)
                .set(status.budget_left());
            let secs = |d: chrono::TimeDelta| d.num_milliseconds() as f64 / 1000.0;
            self.slo_breach
                .with_label_values(&labels)
                .set(secs(m.breach));
            self.slo_allowed_breach
                .with_label_values(&labels)
                .set(secs(status.objective.allowed_breach()));
            self.slo_unverified
                .with_label_values(&labels)
                .set(secs(m.unverified));
        }
    }

    /// Replaces the plan gauges with the given plans and their progress.
    pub fn record_plans(
        &self,
        plans: &[(
            crate::store::PlanRecord,
            std::collections::BTreeMap<crate::domain::ActionStatus, u64>,
        )],
    ) {
        self.plan_actions.reset();
        self.plan_actions_total.reset();
        for (plan, progress) in plans {
            let id = plan.id.to_string();
            let labels = [id.as_str(), plan.invariant.as_str(), plan.kind.as_str()];
            self.plan_actions_total
                .with_label_values(&labels)
                .set(plan.action_count as i64);
            for status in crate::domain::ActionStatus::ALL {
                let n = progress.get(&status).copied().unwrap_or(0);
                self.plan_actions
                    .with_label_values(&[labels[0], labels[1], labels[2], status.as_str()])
                    .set(n as i64);
            }
        }
    }

    pub fn new() -> Self {
        let registry = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "trueup_invariant_run_duration_seconds",
                "How long evaluating an invariant took.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0,
            ]),
            &["invariant"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(duration.clone()))
            .expect("metric registered once");
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let capture = std::sync::Arc::new(crate::capture::CaptureMetrics::register(&registry));
        Self {
            runs: counter(
                &registry,
                "trueup_invariant_runs_total",
                "Evaluation runs, by how they ended (succeeded, failed, cancelled).",
                &["invariant", "status"],
            ),
            failures: counter(
                &registry,
                "trueup_invariant_evaluation_failures_total",
                "Evaluations that could not complete (source down, timeout, bad query).",
                &["invariant"],
            ),
            missed_ticks: counter(
                &registry,
                "trueup_invariant_missed_ticks_total",
                "Scheduled evaluations skipped because the previous run was still going.",
                &["invariant"],
            ),
            rows_read: counter(
                &registry,
                "trueup_invariant_rows_read_total",
                "Rows read from sources, by side (left, right).",
                &["invariant", "side"],
            ),
            reloads: counter(
                &registry,
                "trueup_config_reloads_total",
                "Reloads of the invariant files, by result (success, failure).",
                &["result"],
            ),
            reload_ok: {
                let g = prometheus::IntGauge::new(
                    "trueup_config_last_reload_successful",
                    "1 if the last reload of the invariant files succeeded, 0 if it was refused.",
                )
                .expect("valid metric definition");
                registry
                    .register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            reload_time: {
                let g = prometheus::Gauge::new(
                    "trueup_config_last_reload_success_timestamp_seconds",
                    "When the invariant files were last loaded successfully (Unix time).",
                )
                .expect("valid metric definition");
                registry
                    .register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            notifications_sent: counter(
                &registry,
                "trueup_notifications_sent_total",
                "Notifications delivered, by channel.",
                &["channel"],
            ),
            notifications_failed: counter(
                &registry,
                "trueup_notifications_failed_total",
                "Notification delivery attempts that failed (they are retried), by channel.",
                &["channel"],
            ),
            http_requests: counter(
                &registry,
                "trueup_http_requests_total",
                "HTTP requests served, by route and status code.",
                &["route", "status"],
            ),
            plan_actions: int_gauge(
                "trueup_plan_actions",
                "Actions of recent plans (compensations, replays) by status: pending, in_progress, applied, skipped, failed, manual, parked. Read from the store, so applies run from the CLI count too.",
                &["plan", "invariant", "kind", "status"],
            ),
            plan_actions_total: int_gauge(
                "trueup_plan_actions_planned",
                "How many actions each recent plan has.",
                &["plan", "invariant", "kind"],
            ),
            source_privileged: int_gauge(
                "trueup_source_privileged_role",
                "1 if the source's database role is privileged (superuser, server programs or files) and `allow_privileged_role: true` lets trueup use it anyway.",
                &["source"],
            ),
            source_pool_size: int_gauge(
                "trueup_source_pool_size",
                "The most connections trueup opens to the source at once (its pool_size); a read takes a turn for each.",
                &["source"],
            ),
            source_turns_held: int_gauge(
                "trueup_source_turns_held",
                "Turns on the source's connections held now: connections in use, and those reconciles have reserved for their reads.",
                &["source"],
            ),
            source_turns_waiting: int_gauge(
                "trueup_source_turns_waiting",
                "Reads waiting now for a turn on the source's connections (a reconcile waiting for both sides' turns counts as one).",
                &["source"],
            ),
            source_turn_wait: {
                let c = prometheus::CounterVec::new(
                    Opts::new(
                        "trueup_source_turn_wait_seconds_total",
                        "Time reads spent waiting for a turn on the source's connections, added as each wait ends (trueup_source_turns_waiting shows the ones going on).",
                    ),
                    &["source"],
                )
                .expect("valid metric definition");
                registry
                    .register(Box::new(c.clone()))
                    .expect("metric registered once");
                c
            },
            slo_objective: gauge(
                "trueup_slo_objective_ratio",
                "An invariant's consistency objective: the share of time with no violation open longer than its max_open (0.999 for 99.9%). The burn-rate rules in examples/prometheus/trueup-slo.yml read it.",
                &["invariant"],
            ),
            slo_breaching: int_gauge(
                "trueup_slo_breaching",
                "1 while a violation of the invariant has been open longer than its objective's max_open (the ledger's view: a failed run leaves violations open), else 0.",
                &["invariant"],
            ),
            slo_sli: gauge(
                "trueup_slo_sli_ratio",
                "The share of the objective's window (measured since the first run in it) with no violation open longer than max_open.",
                &["invariant"],
            ),
            slo_budget_remaining: gauge(
                "trueup_slo_error_budget_remaining_ratio",
                "The share of the error budget left over the objective's window: 1 untouched, 0 spent, below 0 overspent.",
                &["invariant"],
            ),
            slo_breach: gauge(
                "trueup_slo_breach_seconds",
                "Time in the objective's window during which a violation had been open longer than max_open.",
                &["invariant"],
            ),
            slo_allowed_breach: gauge(
                "trueup_slo_error_budget_seconds",
                "The breach time the objective allows over its window: (1 - objective) x window.",
                &["invariant"],
            ),
            slo_unverified: gauge(
                "trueup_slo_unverified_seconds",
                "Time in the objective's window after a failed run, before the next completed one: nothing confirmed the state then.",
                &["invariant"],
            ),
            duration,
            last_run: gauge(
                "trueup_invariant_last_run_timestamp_seconds",
                "When the last evaluation of the invariant finished (Unix time).",
                &["invariant"],
            ),
            last_success: gauge(
                "trueup_invariant_last_success_timestamp_seconds",
                "When the last evaluation that completed finished (Unix time).",
                &["invariant"],
            ),
            healthy: int_gauge(
                "trueup_invariant_healthy",
                "1 if the last evaluation completed, 0 if it failed.",
                &["invariant"],
            ),
            violations: int_gauge(
                "trueup_invariant_violations",
                "Violations seen by the last completed evaluation, by kind.",
                &["invariant", "kind", "severity"],
            ),
            source_turn_wait_catch_up: std::sync::Mutex::new(()),
            capture,
            registry,
        }
    }

    /// Makes every invariant's series exist from the start (at zero), so alerts on `rate()`
    /// and absence work before the first run.
    pub fn declare(&self, invariant: &Invariant) {
        let name = invariant.name.as_str();
        for status in ["succeeded", "failed", "cancelled"] {
            self.runs.with_label_values(&[name, status]);
        }
        self.failures.with_label_values(&[name]);
        self.missed_ticks.with_label_values(&[name]);
    }

    pub fn reloaded(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        self.reload_ok.set(i64::from(ok));
        if ok {
            self.reload_time
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
    }

    pub fn declare_channel(&self, channel: &str) {
        self.notifications_sent.with_label_values(&[channel]);
        self.notifications_failed.with_label_values(&[channel]);
    }

    pub fn notification(&self, channel: &str, delivered: bool) {
        if delivered {
            self.notifications_sent.with_label_values(&[channel]).inc();
        } else {
            self.notifications_failed
                .with_label_values(&[channel])
                .inc();
        }
    }

    pub fn missed(&self, invariant: &str, ticks: u64) {
        self.missed_ticks
            .with_label_values(&[invariant])
            .inc_by(ticks);
    }

    /// A tick that ended without an outcome (it panicked): unhealthy, one failure more.
    pub fn failed(&self, invariant: &str) {
        self.healthy.with_label_values(&[invariant]).set(0);
        self.failures.with_label_values(&[invariant]).inc();
    }

    pub fn record(&self, invariant: &Invariant, outcome: &RunOutcome) {
        let name = invariant.name.as_str();
        self.runs
            .with_label_values(&[name, outcome.status.as_str()])
            .inc();
        let secs = (outcome.finished_at - outcome.started_at).num_milliseconds() as f64 / 1000.0;
        self.duration.with_label_values(&[name]).observe(secs);
        let finished = outcome.finished_at.timestamp_millis() as f64 / 1000.0;
        self.last_run.with_label_values(&[name]).set(finished);
        match outcome.status {
            RunStatus::Succeeded => {
                self.healthy.with_label_values(&[name]).set(1);
                self.last_success.with_label_values(&[name]).set(finished);
                let s = &outcome.stats;
                self.rows_read
                    .with_label_values(&[name, "left"])
                    .inc_by(s.rows_left);
                self.rows_read
                    .with_label_values(&[name, "right"])
                    .inc_by(s.rows_right);
                for kind in ViolationKind::ALL {
                    let seen = s.counts.get(&kind).copied().unwrap_or(0);
                    self.violations
                        .with_label_values(&[name, kind.as_str(), invariant.severity.as_str()])
                        .set(i64::try_from(seen).unwrap_or(i64::MAX));
                }
            }
            // A failed or cancelled evaluation says nothing about violations: their gauges keep
            // the last known values, only health drops (ARCHITECTURE.md: never "all green").
            RunStatus::Failed | RunStatus::Cancelled => {
                self.healthy.with_label_values(&[name]).set(0);
                self.failures.with_label_values(&[name]).inc();
            }
            RunStatus::Running => {}
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
