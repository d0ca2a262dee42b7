//! The intake's metrics, registered into the service's registry.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::domain::Intake;

pub struct CaptureMetrics {
    ingested: IntCounterVec,
    duplicates: IntCounterVec,
    redelivered: IntCounterVec,
    rejected: IntCounterVec,
    lag: IntGaugeVec,
    up: IntGaugeVec,
    purged: IntCounterVec,
    held: IntGaugeVec,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> M {
    registry
        .register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

impl CaptureMetrics {
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                registry,
                IntGaugeVec::new(Opts::new(name, help), &["log", "feed"]).expect("valid metric"),
            )
        };
        Self {
            ingested: counter(
                "trueup_log_events_ingested_total",
                "Events stored in an event log (first deliveries of their id), by log and feed.",
                &["log", "feed"],
            ),
            duplicates: counter(
                "trueup_log_duplicate_deliveries_total",
                "Deliveries of an event id the log already held: counted, not stored again.",
                &["log", "feed"],
            ),
            redelivered: counter(
                "trueup_log_redeliveries_total",
                "Stream messages delivered again after they were stored but not acknowledged (a restart): neither stored nor counted again.",
                &["log", "feed"],
            ),
            rejected: counter(
                "trueup_log_events_rejected_total",
                "Deliveries refused and not stored, by reason: signature, expired, too_large, malformed, or gone (a pending Redis entry deleted before it was stored).",
                &["log", "feed", "reason"],
            ),
            lag: gauge(
                "trueup_log_ingest_lag_messages",
                "Messages of a stream feed not yet delivered to trueup's consumer.",
            ),
            up: gauge(
                "trueup_log_feed_up",
                "1 while a stream feed runs (its consumer open and its server answering), 0 while it connects or waits to start again after a failure.",
            ),
            purged: counter(
                "trueup_log_events_purged_total",
                "Events deleted from an event log by its retain: setting.",
                &["log"],
            ),
            held: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "trueup_log_retention_held",
                        "1 while an event log's retention deletes nothing: an open violation or unfinished plan action without an event time may need any event, or an invariant reading the log has no completed full run that judged its events.",
                    ),
                    &["log"],
                )
                .expect("valid metric"),
            ),
        }
    }

    pub fn intake(&self, log: &str, feed: &str, intake: Intake) {
        let c = match intake {
            Intake::Stored => &self.ingested,
            Intake::Duplicate { .. } => &self.duplicates,
            Intake::Redelivered => &self.redelivered,
        };
        c.with_label_values(&[log, feed]).inc();
    }

    pub fn rejected(&self, log: &str, feed: &str, reason: &str) {
        self.rejected.with_label_values(&[log, feed, reason]).inc();
    }

    pub fn set_lag(&self, log: &str, feed: &str, pending: u64) {
        self.lag
            .with_label_values(&[log, feed])
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    pub fn purged(&self, log: &str, count: u64, held: bool) {
        self.purged.with_label_values(&[log]).inc_by(count);
        self.held.with_label_values(&[log]).set(i64::from(held));
    }

    pub fn set_up(&self, log: &str, feed: &str, up: bool) {
        self.up.with_label_values(&[log, feed]).set(i64::from(up));
    }
}
