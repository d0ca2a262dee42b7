//! Counts of events by time bucket: how an outage window shows up in the violations.

use chrono::{DateTime, TimeDelta, Utc};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
