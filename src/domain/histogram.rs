//! Counts of events by time bucket: how an outage window shows up in the violations.

use chrono::{DateTime, TimeDelta, Utc};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub count: u64,
}

/// Buckets of width `bucket` aligned on the Unix epoch, from the first event's bucket to the
/// last one's, empty buckets included (a gap in the outage shows as zeros, not as nothing).
/// `None` when the width is not positive.
pub fn histogram(times: &[DateTime<Utc>], bucket: TimeDelta) -> Option<Vec<Bucket>> {
    let width = bucket.num_seconds();
    if width <= 0 {
        return None;
    }
    let index = |t: &DateTime<Utc>| t.timestamp().div_euclid(width);
    let (Some(first), Some(last)) = (times.iter().map(index).min(), times.iter().map(index).max())
    else {
        return Some(Vec::new());
    };
    let mut counts = vec![0u64; (last - first + 1) as usize];
    for t in times {
        counts[(index(t) - first) as usize] += 1;
    }
    Some(
        counts
            .into_iter()
            .enumerate()
            .filter_map(|(i, count)| {
                let start = DateTime::from_timestamp((first + i as i64) * width, 0)?;
                Some(Bucket { start, count })
            })
            .collect(),
    )
}

/// One bucket of a stacked histogram: events still open and events resolved since.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StackedBucket {
    pub start: DateTime<Utc>,
    pub open: u64,
    pub resolved: u64,
}

/// Buckets of width `bucket` aligned on the Unix epoch covering `[from, to)` — a range the
/// caller chose, so the buckets do not move when the events do — with the events of each
/// series counted where they fall; events outside the range are left out. `None` when the
/// width is not positive or the range is empty or holds more than `max_buckets`.
pub fn stacked_histogram(
    open: &[DateTime<Utc>],
    resolved: &[DateTime<Utc>],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: TimeDelta,
    max_buckets: usize,
) -> Option<Vec<StackedBucket>> {
    let width = bucket.num_seconds();
    if width <= 0 || to <= from {
        return None;
    }
    let first = from.timestamp().div_euclid(width);
    let last = (to.timestamp() - 1).div_euclid(width);
    let len = usize::try_from(last - first + 1).ok()?;
    if len > max_buckets {
        return None;
    }
    let mut counts = vec![(0u64, 0u64); len];
    let slot = |t: &DateTime<Utc>| {
        let i = t.timestamp().div_euclid(width) - first;
        usize::try_from(i).ok().filter(|i| *i < len)
    };
    for t in open {
        if let Some(i) = slot(t) {
            counts[i].0 += 1;
        }
    }
    for t in resolved {
        if let Some(i) = slot(t) {
            counts[i].1 += 1;
        }
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, (open, resolved))| {
            let start = DateTime::from_timestamp((first + i as i64) * width, 0)?;
            Some(StackedBucket {
                start,
                open,
                resolved,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stacked_histogram_keeps_its_range_whatever_the_events_and_counts_both_series() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let open = [t("2026-11-25T02:03:00Z"), t("2026-11-25T04:00:00Z")];
        let resolved = [
            t("2026-11-25T02:59:59Z"),
            t("2026-11-25T03:10:00Z"),
            // Outside the range: left out.
            t("2026-11-25T05:00:00Z"),
            t("2026-11-25T01:59:59Z"),
        ];
        let (from, to) = (t("2026-11-25T02:00:00Z"), t("2026-11-25T05:00:00Z"));
        let h = stacked_histogram(&open, &resolved, from, to, TimeDelta::hours(1), 10).unwrap();
        let got: Vec<(String, u64, u64)> = h
            .iter()
            .map(|b| (b.start.format("%H:%M").to_string(), b.open, b.resolved))
            .collect();
        assert_eq!(
            got,
            [
                ("02:00".into(), 1, 1),
                ("03:00".into(), 0, 1),
                ("04:00".into(), 1, 0)
            ]
        );
        // No events at all: the same three buckets, empty.
        let empty = stacked_histogram(&[], &[], from, to, TimeDelta::hours(1), 10).unwrap();
        assert_eq!(empty.len(), 3);
        assert!(empty.iter().all(|b| b.open == 0 && b.resolved == 0));
        assert_eq!(
            stacked_histogram(&open, &[], to, from, TimeDelta::hours(1), 10),
            None
        );
        assert_eq!(
            stacked_histogram(&open, &[], from, to, TimeDelta::hours(1), 2),
            None
        );
        assert_eq!(
            stacked_histogram(&open, &[], from, to, TimeDelta::zero(), 10),
            None
        );
    }

    #[test]
    fn events_fall_in_epoch_aligned_buckets_with_empty_ones_kept() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let times = [
            t("2026-11-25T02:01:00Z"),
            t("2026-11-25T02:04:59Z"),
            t("2026-11-25T02:05:00Z"),
            t("2026-11-25T02:17:30Z"),
        ];
        let h = histogram(&times, TimeDelta::minutes(5)).unwrap();
        let counts: Vec<(String, u64)> = h
            .iter()
            .map(|b| (b.start.format("%H:%M").to_string(), b.count))
            .collect();
        assert_eq!(
            counts,
            [
                ("02:00".into(), 2),
                ("02:05".into(), 1),
                ("02:10".into(), 0),
                ("02:15".into(), 1)
            ]
        );
        assert_eq!(histogram(&[], TimeDelta::minutes(5)), Some(Vec::new()));
        assert_eq!(histogram(&times, TimeDelta::zero()), None);
    }
}
