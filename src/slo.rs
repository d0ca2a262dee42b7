//! Consistency objectives measured from the store: the rolling window's SLI and error budget
//! (overview, /metrics) and the budget a span of time used (an incident's report).

use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::{Invariant, Objective, SloMeasure, measure_slo};
use crate::store::{Store, StoreError};

/// An invariant's objective over its rolling window, ending now.
#[derive(Debug, Clone, PartialEq)]
pub struct SloStatus {
    pub objective: Objective,
    pub measure: SloMeasure,
}

impl SloStatus {
    /// The share of the error budget left (1.0 untouched, 0 spent, below 0 overspent).
    pub fn budget_left(&self) -> f64 {
        1.0 - self.measure.budget_used(&self.objective)
    }
}

/// The status of `invariant`'s objective at `now`, if it declares one.
pub async fn status(
    store: &dyn Store,
    invariant: &Invariant,
    now: DateTime<Utc>,
) -> Result<Option<SloStatus>, StoreError> {
    let Some(objective) = &invariant.slo else {
        return Ok(None);
    };
    let from = now - objective.window.as_chrono();
    let measure = over(store, invariant.name.as_str(), objective, from, now).await?;
    Ok(Some(SloStatus {
        objective: objective.clone(),
        measure,
    }))
}

/// `objective` measured over `[from, to)` for the invariant named `invariant`.
pub async fn over(
    store: &dyn Store,
    invariant: &str,
    objective: &Objective,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<SloMeasure, StoreError> {
    let to = to.max(from);
    let history = store.slo_observations(invariant, from, to).await?;
    Ok(measure_slo(
        objective,
        history.seed,
        &history.runs,
        from,
        to,
    ))
}

/// What is left of a budget of which `used` (a ratio) is spent: "58% left", or once it is
/// all spent "none left (277.8% used)".
pub fn budget_left_words(used: f64) -> String {
    if used < 1.0 {
        format!("{} left", percent(1.0 - used))
    } else {
        format!("none left ({} used)", percent(used))
    }
}

/// A span as the console and reports write it: "3 h 2 min", "43 min 12 s", "0 s".
pub fn span_words(d: TimeDelta) -> String {
    let total = d.num_seconds().max(0);
    let (days, hours, minutes, seconds) = (
        total / 86_400,
        total % 86_400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    let parts: Vec<String> = [(days, "d"), (hours, "h"), (minutes, "min"), (seconds, "s")]
        .into_iter()
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}"))
        .collect();
    if parts.is_empty() {
        "0 s".to_owned()
    } else {
        parts.join(" ")
    }
}

/// A ratio as a percentage with the precision an objective needs: "99.95%", "42%", "-310%".
pub fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if !p.is_finite() {
        return "over 1000000%".to_owned();
    }
    let text = if p > 99.0 && p < 100.0 {
        // 99.996 must not read 100.
        let mut decimals = 2;
        while decimals < 6 && format!("{p:.decimals$}").starts_with("100") {
            decimals += 1;
        }
        format!("{p:.decimals$}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    } else if (p - p.round()).abs() < 0.05 || p.abs() >= 1000.0 {
        format!("{:.0}", p.round())
    } else {
        format!("{p:.1}")
    };
    format!("{text}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_in_their_two_largest_units() {
        assert_eq!(span_words(TimeDelta::seconds(43 * 60 + 12)), "43 min 12 s");
        assert_eq!(
            span_words(TimeDelta::seconds(3 * 3600 + 2 * 60 + 5)),
            "3 h 2 min"
        );
        assert_eq!(span_words(TimeDelta::seconds(7200)), "2 h");
        assert_eq!(span_words(TimeDelta::seconds(86_400 + 60)), "1 d");
        assert_eq!(span_words(TimeDelta::zero()), "0 s");
    }

    #[test]
    fn a_spent_budget_says_none_is_left_and_how_much_was_used() {
        assert_eq!(budget_left_words(0.42), "58% left");
        assert_eq!(budget_left_words(0.0), "100% left");
        assert_eq!(budget_left_words(1.0), "none left (100% used)");
        assert_eq!(budget_left_words(2.7778), "none left (277.8% used)");
    }

    #[test]
    fn percentages_never_round_a_miss_up_to_a_hundred() {
        assert_eq!(percent(0.42), "42%");
        assert_eq!(percent(0.9995), "99.95%");
        assert_eq!(percent(0.999_949), "99.99%");
        assert_eq!(percent(0.999_96), "99.996%");
        assert_eq!(percent(0.999_999_9), "99.99999%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(-3.1), "-310%");
        assert_eq!(percent(0.125), "12.5%");
    }
}
