//! The alert lifecycle of one invariant, with Prometheus' semantics: a violation must last
//! `for` before the alert fires; a firing alert may be held for `keep_firing_for` after the
//! violations clear; a failed evaluation changes nothing (an outage never resolves an alert).
//! Pure: the caller persists the state and queues the notices.

use chrono::{DateTime, TimeDelta, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The invariant holds (or was never evaluated).
    Inactive,
    /// Violated, for less than `for`.
    Pending,
    /// Violated for `for` or longer; people have been told.
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }

    pub fn parse(raw: &str) -> Self {
        match raw {
            "pending" => AlertState::Pending,
            "firing" => AlertState::Firing,
            _ => AlertState::Inactive,
        }
    }
}

/// How an invariant's alert behaves (`alert:` in its file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertPolicy {
    /// How long violations must last before the alert fires.
    pub for_: TimeDelta,
    /// How long a firing alert stays firing after the violations clear.
    pub keep_firing_for: TimeDelta,
    /// While firing with unchanged evidence, remind this often.
    pub repeat_interval: TimeDelta,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        Self {
            for_: TimeDelta::zero(),
            keep_firing_for: TimeDelta::zero(),
            repeat_interval: TimeDelta::hours(4),
        }
    }
}

/// The persisted state of one invariant's alert.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Alert {
    pub state: AlertState,
    /// When the current pending/firing episode began.
    pub active_since: Option<DateTime<Utc>>,
    pub last_violating_at: Option<DateTime<Utc>>,
    pub last_notified_at: Option<DateTime<Utc>>,
}

impl Alert {
    pub fn inactive() -> Self {
        Self {
            state: AlertState::Inactive,
            active_since: None,
            last_violating_at: None,
            last_notified_at: None,
        }
    }
}

/// What one run said about the invariant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// Violations are open; `changed` when new or reopened ones appeared in this run.
    Violating {
        open: u64,
        changed: bool,
    },
    Holding,
    /// The evaluation failed: nothing is known.
    Failed,
}

/// Why people should hear about the alert now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Notice {
    Firing,
    /// Still firing, and new violations appeared.
    Updated,
    /// Still firing, unchanged, and `repeat_interval` has passed.
    Repeat,
    Resolved,
}

impl Notice {
    pub fn as_str(self) -> &'static str {
        match self {
            Notice::Firing => "firing",
            Notice::Updated => "updated",
            Notice::Repeat => "repeat",
            Notice::Resolved => "resolved",
        }
    }
}

/// The next state of `alert` after `observation` at `now`, and the notice to send, if any.
pub fn step(
    alert: &Alert,
    observation: Observation,
    now: DateTime<Utc>,
    policy: &AlertPolicy,
) -> (Alert, Option<Notice>) {
    let mut next = alert.clone();
    let notice = match (alert.state, observation) {
        (_, Observation::Failed) => None,
        (AlertState::Inactive, Observation::Holding) => None,
        (AlertState::Pending, Observation::Holding) => {
            next = Alert {
                last_notified_at: alert.last_notified_at,
                ..Alert::inactive()
            };
            None
        }
        (AlertState::Inactive, Observation::Violating { .. }) => {
            next.active_since = Some(now);
            next.last_violating_at = Some(now);
            if policy.for_ <= TimeDelta::zero() {
                next.state = AlertState::Firing;
                Some(Notice::Firing)
            } else {
                next.state = AlertState::Pending;
                None
            }
        }
        (AlertState::Pending, Observation::Violating { .. }) => {
            next.last_violating_at = Some(now);
            let since = alert.active_since.unwrap_or(now);
            if now - since >= policy.for_ {
                next.state = AlertState::Firing;
                Some(Notice::Firing)
            } else {
                None
            }
        }
        (AlertState::Firing, Observation::Violating { changed, .. }) => {
            next.last_violating_at = Some(now);
            let last = alert.last_notified_at.unwrap_or(DateTime::<Utc>::MIN_UTC);
            if changed {
                Some(Notice::Updated)
            } else if now - last >= policy.repeat_interval {
                Some(Notice::Repeat)
            } else {
                None
            }
        }
        (AlertState::Firing, Observation::Holding) => {
            let last = alert.last_violating_at.unwrap_or(now);
            if now - last < policy.keep_firing_for {
                None
            } else {
                next = Alert {
                    last_notified_at: alert.last_notified_at,
                    ..Alert::inactive()
                };
                Some(Notice::Resolved)
            }
        }
    };
    if notice.is_some() {
        next.last_notified_at = Some(now);
    }
    (next, notice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + TimeDelta::seconds(secs)
    }

    const VIOLATING: Observation = Observation::Violating {
        open: 3,
        changed: false,
    };
    const NEW_EVIDENCE: Observation = Observation::Violating {
        open: 4,
        changed: true,
    };

    /// Runs a sequence of observations; returns the notices with the times they were sent.
    fn play(policy: AlertPolicy, seq: &[(i64, Observation)]) -> (Alert, Vec<(i64, Notice)>) {
        let mut alert = Alert::inactive();
        let mut notices = Vec::new();
        for (at, obs) in seq {
            let (next, notice) = step(&alert, *obs, t(*at), &policy);
            if let Some(n) = notice {
                notices.push((*at, n));
            }
            alert = next;
        }
        (alert, notices)
    }

    #[test]
    fn without_for_a_violation_fires_at_once_and_resolves_when_it_clears() {
        let (alert, notices) = play(
            AlertPolicy::default(),
            &[
                (0, VIOLATING),
                (60, VIOLATING),
                (120, Observation::Holding),
                (180, Observation::Holding),
            ],
        );
        assert_eq!(notices, vec![(0, Notice::Firing), (120, Notice::Resolved)]);
        assert_eq!(alert.state, AlertState::Inactive);
    }

    #[test]
    fn a_violation_shorter_than_for_never_fires() {
        let policy = AlertPolicy {
            for_: TimeDelta::minutes(5),
            ..Default::default()
        };
        let (_, notices) = play(
            policy,
            &[
                (0, VIOLATING),
                (120, VIOLATING),
                (180, Observation::Holding),
            ],
        );
        assert!(notices.is_empty());
        let (alert, notices) = play(
            policy,
            &[(0, VIOLATING), (120, VIOLATING), (300, VIOLATING)],
        );
        assert_eq!(notices, vec![(300, Notice::Firing)]);
        assert_eq!(alert.active_since, Some(t(0)));
    }

    #[test]
    fn a_failed_evaluation_never_resolves_or_fires() {
        let (alert, notices) = play(
            AlertPolicy::default(),
            &[
                (0, VIOLATING),
                (60, Observation::Failed),
                (120, Observation::Failed),
            ],
        );
        assert_eq!(notices, vec![(0, Notice::Firing)]);
        assert_eq!(alert.state, AlertState::Firing);
        let (alert, notices) = play(AlertPolicy::default(), &[(0, Observation::Failed)]);
        assert!(notices.is_empty());
        assert_eq!(alert.state, AlertState::Inactive);
    }

    #[test]
    fn while_firing_it_speaks_only_when_evidence_changes_or_the_repeat_interval_passes() {
        let policy = AlertPolicy {
            repeat_interval: TimeDelta::hours(1),
            ..Default::default()
        };
        let (_, notices) = play(
            policy,
            &[
                (0, VIOLATING),
                (600, VIOLATING),
                (1200, NEW_EVIDENCE),
                (1800, VIOLATING),
                (4800, VIOLATING),
                (5400, VIOLATING),
            ],
        );
        assert_eq!(
            notices,
            vec![
                (0, Notice::Firing),
                (1200, Notice::Updated),
                (4800, Notice::Repeat)
            ]
        );
    }

    #[test]
    fn keep_firing_for_holds_the_alert_through_a_short_gap() {
        let policy = AlertPolicy {
            keep_firing_for: TimeDelta::minutes(10),
            ..Default::default()
        };
        let (alert, notices) = play(
            policy,
            &[
                (0, VIOLATING),
                (60, Observation::Holding),
                (120, VIOLATING),
                (180, Observation::Holding),
                (719, Observation::Holding),
            ],
        );
        assert_eq!(notices, vec![(0, Notice::Firing)]);
        assert_eq!(alert.state, AlertState::Firing);
        let (_, notices) = play(
            policy,
            &[
                (0, VIOLATING),
                (60, Observation::Holding),
                (661, Observation::Holding),
            ],
        );
        assert_eq!(notices, vec![(0, Notice::Firing), (661, Notice::Resolved)]);
    }
}
