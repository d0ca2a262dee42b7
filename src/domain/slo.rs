//! Consistency as a service-level objective: "no violation open longer than `max_open`" for
//! `target` of the time over a rolling `window`, measured from what runs recorded.
//!
//! The SLI is time-based. Each completed run records when its oldest still-open violation was
//! opened; from that moment the state holds until the next run (a failed run changes nothing in
//! the ledger, so the violations it could not check stay open). The time in breach is the time
//! during which a violation had been open longer than `max_open`; the error budget is the
//! breach time the objective allows over its window, `(1 − target) × window`.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};

use super::HumanDuration;

/// A share of time, kept in parts per million so that `99.99%` is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target(u32);

const MILLION: u32 = 1_000_000;

impl Target {
    /// Parses `99.9%` (or `99.9`): a percentage above 0 and below 100, at most four decimals.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let number = raw.trim().trim_end_matches('%').trim();
        let bad = || {
            format!(
                "`{raw}` is not an objective; write a percentage above 0 and below 100 with at most four decimals, e.g. `99.9%`"
            )
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
            || fraction.len() > 4
            || whole.len() > 3
        {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let fraction: u32 = format!("{fraction:0<4}").parse().map_err(|_| bad())?;
        let ppm = whole * 10_000 + fraction;
        if ppm == 0 || ppm >= MILLION {
            return Err(bad());
        }
        Ok(Self(ppm))
    }

    /// The target as a ratio (0.999 for 99.9 %).
    pub fn ratio(self) -> f64 {
        f64::from(self.0) / f64::from(MILLION)
    }

    /// The share of the window allowed in breach (0.001 for 99.9 %).
    pub fn allowed_ratio(self) -> f64 {
        f64::from(MILLION - self.0) / f64::from(MILLION)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 10_000;
        let fraction = format!("{:04}", self.0 % 10_000);
        let fraction = fraction.trim_end_matches('0');
        if fraction.is_empty() {
            write!(f, "{whole}%")
        } else {
            write!(f, "{whole}.{fraction}%")
        }
    }
}

/// An invariant's consistency objective.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objective {
    /// The share of the window with no violation open longer than `max_open`.
    pub target: Target,
    pub max_open: HumanDuration,
    /// The rolling window the budget covers (30 days unless the invariant says otherwise).
    pub window: HumanDuration,
}

impl Objective {
    /// The breach time the objective allows over its window.
    pub fn allowed_breach(&self) -> TimeDelta {
        seconds(
            self.window.as_chrono().num_milliseconds() as f64 / 1000.0
                * self.target.allowed_ratio(),
        )
    }

    /// "no violation open longer than 1h, 99.9% of the time over 30 days".
    pub fn describe(&self) -> String {
        format!(
            "no violation open longer than {}, {} of the time over {}",
            self.max_open,
            self.target,
            self.window_words()
        )
    }

    /// The window as people say it: "30 days", "1 day", else "36h".
    pub fn window_words(&self) -> String {
        let secs = self.window.as_std().as_secs();
        match (secs / 86_400, secs % 86_400) {
            (1, 0) => "1 day".to_owned(),
            (days, 0) => format!("{days} days"),
            _ => self.window.to_string(),
        }
    }
}

fn seconds(s: f64) -> TimeDelta {
    TimeDelta::milliseconds((s * 1000.0).round() as i64)
}

/// What one finished run says about the objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SloObservation {
    /// When the run finished (its ledger change took effect).
    pub at: DateTime<Utc>,
    /// Whether the run completed. A failed run leaves the ledger as it was: the violations
    /// stay open, and the time until the next completed run is unverified.
    pub completed: bool,
    /// When the oldest violation still open after the run was opened (`None`: none open).
    /// Meaningless for a failed run.
    pub oldest_open_since: Option<DateTime<Utc>>,
}

/// The objective measured over `[from, to)`.
#[derive(Debug, Clone, PartialEq)]
pub struct SloMeasure {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Time covered by an observation (before the first run there is nothing to measure).
    pub measured: TimeDelta,
    /// Time during which a violation had been open longer than `max_open`.
    pub breach: TimeDelta,
    /// Time following a failed run, when nothing confirmed the state (counted in `measured`;
    /// in `breach` too where the violations left open were already too old).
    pub unverified: TimeDelta,
    /// At `to`: whether a violation has been open longer than `max_open`.
    pub breaching: bool,
}

impl SloMeasure {
    /// The SLI: the share of the measured time not in breach (`None` before any run).
    pub fn sli(&self) -> Option<f64> {
        let measured = self.measured.num_milliseconds();
        (measured > 0).then(|| 1.0 - self.breach.num_milliseconds() as f64 / measured as f64)
    }

    /// The share of `objective`'s error budget this breach time uses (1.0: all of it; above
    /// 1.0: overspent).
    pub fn budget_used(&self, objective: &Objective) -> f64 {
        let allowed = objective.allowed_breach().num_milliseconds();
        if allowed <= 0 {
            return if self.breach > TimeDelta::zero() {
                f64::INFINITY
            } else {
                0.0
            };
        }
        self.breach.num_milliseconds() as f64 / allowed as f64
    }
}

/// Since when, since when the oldest open violation has been open, and whether a failed run
/// left it unconfirmed.
type State = (DateTime<Utc>, Option<DateTime<Utc>>, bool);

/// Measures `objective` over `[from, to)`. `seed` is the last completed run before `from`
/// (its state holds at `from`); `runs` are the runs that finished in `[from, to)`, in order.
pub fn measure(
    objective: &Objective,
    seed: Option<SloObservation>,
    runs: &[SloObservation],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> SloMeasure {
    let max_open = objective.max_open.as_chrono();
    let mut out = SloMeasure {
        from,
        to,
        measured: TimeDelta::zero(),
        breach: TimeDelta::zero(),
        unverified: TimeDelta::zero(),
        breaching: false,
    };
    // The state since `since`: when the oldest open violation opened, and whether a failed
    // run left it unconfirmed.
    let mut state: Option<State> = seed
        .filter(|s| s.completed)
        .map(|s| (from, s.oldest_open_since, false));
    let mut close = |state: &Option<State>, until: DateTime<Utc>| {
        let Some((since, open_since, unverified)) = *state else {
            return;
        };
        let since = since.max(from);
        let until = until.min(to);
        if until <= since {
            return;
        }
        out.measured += until - since;
        if unverified {
            out.unverified += until - since;
        }
        if let Some(opened) = open_since {
            let breach_from = (opened + max_open).max(since);
            if until > breach_from {
                out.breach += until - breach_from;
            }
        }
    };
    for run in runs.iter().filter(|r| r.at < to) {
        close(&state, run.at);
        state = if run.completed {
            Some((run.at, run.oldest_open_since, false))
        } else {
            // The ledger is unchanged: what was open stays open, unconfirmed. Before any
            // completed run nothing is known, and nothing is measured.
            state.map(|(_, open_since, _)| (run.at, open_since, true))
        };
    }
    close(&state, to);
    out.breaching = matches!(state, Some((_, Some(opened), _)) if to - opened > max_open);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + TimeDelta::minutes(minutes)
    }

    fn objective(target: &str, max_open: &str) -> Objective {
        Objective {
            target: Target::parse(target).unwrap(),
            max_open: HumanDuration::parse(max_open).unwrap(),
            window: HumanDuration::parse("30d").unwrap(),
        }
    }

    fn run(minute: i64, open_since: Option<i64>) -> SloObservation {
        SloObservation {
            at: at(minute),
            completed: true,
            oldest_open_since: open_since.map(at),
        }
    }

    #[test]
    fn targets_parse_exactly_and_print_as_written() {
        for (raw, shown, ratio) in [
            ("99.9%", "99.9%", 0.999),
            ("99.99 %", "99.99%", 0.9999),
            ("95", "95%", 0.95),
            ("99.0001%", "99.0001%", 0.990_001),
        ] {
            let t = Target::parse(raw).unwrap();
            assert_eq!(t.to_string(), shown);
            assert!((t.ratio() - ratio).abs() < 1e-12, "{raw}");
        }
        for bad in [
            "100%",
            "0%",
            "",
            "99.99999%",
            "-5%",
            "ninety",
            "1e2",
            "150%",
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(e.contains("e.g. `99.9%`"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_allowed_breach_of_99_9_percent_over_30_days_is_43_minutes_12_seconds() {
        let o = objective("99.9%", "1h");
        assert_eq!(o.allowed_breach(), TimeDelta::seconds(43 * 60 + 12));
        assert_eq!(
            o.describe(),
            "no violation open longer than 1h, 99.9% of the time over 30 days"
        );
    }

    #[test]
    fn breach_starts_when_the_oldest_open_violation_passes_max_open_and_ends_at_the_run_that_resolves_it()
     {
        // Runs every 10 minutes; a violation opened at minute 10 is resolved by the run at 100.
        let o = objective("99%", "1h");
        let runs: Vec<_> = (0..=12)
            .map(|i| run(i * 10, (1..10).contains(&i).then_some(10)))
            .collect();
        let m = measure(&o, None, &runs, at(0), at(130));
        assert_eq!(m.measured, TimeDelta::minutes(130));
        // Open longer than 1h from minute 70 until the run at 100 saw it gone.
        assert_eq!(m.breach, TimeDelta::minutes(30));
        assert_eq!(m.unverified, TimeDelta::zero());
        assert!(!m.breaching);
        assert!((m.sli().unwrap() - 100.0 / 130.0).abs() < 1e-9);
        // 30 minutes of 1 % of 30 days (7 h 12 min).
        assert!((m.budget_used(&o) - 30.0 / 432.0).abs() < 1e-9);
    }

    #[test]
    fn failed_runs_keep_the_violations_open_and_their_time_is_unverified() {
        let o = objective("99.9%", "1h");
        let failed = |minute| SloObservation {
            at: at(minute),
            completed: false,
            oldest_open_since: None,
        };
        // Opened at 0; runs from 30 to 120 fail; the run at 150 still sees it.
        let runs = vec![run(0, Some(0)), failed(30), failed(120), run(150, Some(0))];
        let m = measure(&o, None, &runs, at(0), at(180));
        assert_eq!(m.breach, TimeDelta::minutes(120), "from 60 to 180");
        assert_eq!(m.unverified, TimeDelta::minutes(120), "from 30 to 150");
        assert!(m.breaching);
    }

    #[test]
    fn a_seed_run_before_the_window_carries_its_state_in_and_time_before_any_run_is_not_measured() {
        let o = objective("99.9%", "1h");
        let seeded = measure(
            &o,
            Some(run(-200, Some(-100))),
            &[run(30, None)],
            at(0),
            at(60),
        );
        assert_eq!(seeded.measured, TimeDelta::minutes(60));
        assert_eq!(seeded.breach, TimeDelta::minutes(30));
        let unseeded = measure(&o, None, &[run(30, Some(-100))], at(0), at(60));
        assert_eq!(unseeded.measured, TimeDelta::minutes(30));
        assert_eq!(unseeded.breach, TimeDelta::minutes(30));
        assert_eq!(measure(&o, None, &[], at(0), at(60)).sli(), None);
    }
}
