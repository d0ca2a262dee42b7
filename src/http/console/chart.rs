//! The invariant page's timeline: violations by event time, still open and resolved stacked,
//! over a range that does not move when violations resolve, with a y-axis of counts, time ticks
//! at round hours (UTC) and a selection — drawn as SVG on the server. This module is geometry
//! and wording only; the page gathers the event times.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

/// The drawing's box, in SVG user units: the page scales it to its width.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 214.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 712.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 170.0;
/// About this many bars at most: wide enough to click, fine enough to see an outage's edges.
const MAX_BARS: i64 = 60;
/// Bucket widths, in seconds, that read as round times.
const WIDTHS: [i64; 13] = [
    60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86_400, 172_800, 604_800,
];
/// At most this many time ticks, at the first of these steps that keeps to it.
const MAX_TICKS: i64 = 8;
const TICK_STEPS: [i64; 13] = [
    300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86_400, 172_800, 604_800, 2_419_200,
];

/// What the chart is drawn from.
pub(crate) struct ChartInput<'a> {
    /// Event times of the violations still open (open or reopened).
    pub open: &'a [DateTime<Utc>],
    /// Event times of resolved violations.
    pub resolved: &'a [DateTime<Utc>],
    /// The range to show; `None` fits the events.
    pub range: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The widest replay window without a reason: the default selection stays within it.
    /// `None` when the invariant does not replay (no selection is made for it).
    pub max_window: Option<TimeDelta>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Chart {
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub bottom: f64,
    pub bucket_secs: i64,
    pub from: String,
    pub to: String,
    pub bars: Vec<Bar>,
    pub y_ticks: Vec<Tick>,
    pub x_ticks: Vec<Tick>,
    /// Events in the range, by series.
    pub open_total: u64,
    pub resolved_total: u64,
    pub selection: Option<Selection>,
    /// `max_window` in seconds, for the page's script to say when a selection is wider.
    pub max_window_secs: Option<i64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Bar {
    pub from: String,
    pub to: String,
    pub open: u64,
    pub resolved: u64,
    pub x: f64,
    pub w: f64,
    pub open_y: f64,
    pub open_h: f64,
    pub resolved_y: f64,
    pub resolved_h: f64,
    pub selected: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Tick {
    /// Where it sits: y for a count, x for a time.
    pub pos: f64,
    pub label: String,
    /// A second line under a time: its date, where the day changes.
    pub sub: Option<String>,
}

/// A window chosen on the chart and what it holds.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Selection {
    pub from: String,
    pub to: String,
    pub secs: i64,
    pub open: u64,
    pub resolved: u64,
}

/// Why a range cannot be drawn.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ChartError {
    #[error("the range's start {from} is not before its end {to}")]
    Reversed { from: String, to: String },
    #[error("the range {from} to {to} is wider than the chart draws ({most} weeks at most)")]
    TooWide { from: String, to: String, most: i64 },
}

/// The chart, or `None` when there is nothing to draw: no range asked for and no event.
pub(crate) fn chart(input: &ChartInput<'_>) -> Result<Option<Chart>, ChartError> {
    let (from, to) = match input.range {
        Some((from, to)) if to <= from => {
            return Err(ChartError::Reversed {
                from: from.to_rfc3339(),
                to: to.to_rfc3339(),
            });
        }
        Some(range) => range,
        None => {
            let all = input.open.iter().chain(input.resolved);
            match (all.clone().min(), all.max()) {
                (Some(a), Some(b)) => (*a, *b + TimeDelta::seconds(1)),
                _ => return Ok(None),
            }
        }
    };
    let bucket = bucket_width(from, to).ok_or_else(|| ChartError::TooWide {
        from: from.to_rfc3339(),
        to: to.to_rfc3339(),
        most: MAX_BARS,
    })?;
    // A fitted range snaps out to whole buckets; a range asked for is kept as asked (its
    // buckets are still the aligned ones that cover it).
    let (from, to) = match input.range {
        Some(r) => r,
        None => (floor(from, bucket), ceil(to, bucket)),
    };
    let buckets = crate::domain::stacked_histogram(
        input.open,
        input.resolved,
        from,
        to,
        TimeDelta::seconds(bucket),
        MAX_BARS as usize + 1,
    )
    .unwrap_or_default();
    let tallest = buckets
        .iter()
        .map(|b| b.open + b.resolved)
        .max()
        .unwrap_or(0);
    let step = count_step(tallest);
    let y_max = tallest.div_ceil(step).max(1) * step;
    let y = |count: u64| BOTTOM - (count as f64 / y_max as f64) * (BOTTOM - TOP);
    // A bar of one among thousands still shows.
    let h = |count: u64| {
        if count == 0 {
            0.0
        } else {
            ((count as f64 / y_max as f64) * (BOTTOM - TOP)).max(1.5)
        }
    };
    let slot = (RIGHT - LEFT) / buckets.len().max(1) as f64;
    let selection = input
        .max_window
        .and_then(|w| default_selection(&buckets, bucket, w));
    let bars = buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let start = b.start;
            let end = start + TimeDelta::seconds(bucket);
            let (open_h, resolved_h) = (h(b.open), h(b.resolved));
            Bar {
                from: start.to_rfc3339(),
                to: end.to_rfc3339(),
                open: b.open,
                resolved: b.resolved,
                x: round(LEFT + i as f64 * slot + slot * 0.08),
                w: round((slot * 0.84).max(1.0)),
                open_y: round(BOTTOM - open_h),
                open_h: round(open_h),
                resolved_y: round(BOTTOM - open_h - resolved_h),
                resolved_h: round(resolved_h),
                selected: selection.is_some_and(|(a, b)| start >= a && end <= b),
            }
        })
        .collect();
    let y_ticks = (0..=y_max / step)
        .map(|k| Tick {
            pos: round(y(k * step)),
            label: crate::incident::render::thousands((k * step) as i64),
            sub: None,
        })
        .collect();
    Ok(Some(Chart {
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        right: RIGHT,
        top: TOP,
        bottom: BOTTOM,
        bucket_secs: bucket,
        from: from.to_rfc3339(),
        to: to.to_rfc3339(),
        bars,
        y_ticks,
        x_ticks: time_ticks(from, to),
        open_total: count_in(input.open, from, to),
        resolved_total: count_in(input.resolved, from, to),
        selection: selection.map(|(a, b)| Selection {
            from: a.to_rfc3339(),
            to: b.to_rfc3339(),
            secs: (b - a).num_seconds(),
            open: count_in(input.open, a, b),
            resolved: count_in(input.resolved, a, b),
        }),
        max_window_secs: input.max_window.map(|w| w.num_seconds()),
    }))
}

/// The narrowest round bucket width that draws `[from, to)` in at most `MAX_BARS` bars.
fn bucket_width(from: DateTime<Utc>, to: DateTime<Utc>) -> Option<i64> {
    WIDTHS
        .into_iter()
        .find(|w| (to.timestamp() - 1).div_euclid(*w) - from.timestamp().div_euclid(*w) < MAX_BARS)
}

fn floor(t: DateTime<Utc>, width: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp().div_euclid(width) * width, 0).unwrap_or(t)
}

fn ceil(t: DateTime<Utc>, width: i64) -> DateTime<Utc> {
    let s = t.timestamp();
    let up = s.div_euclid(width) * width + if s.rem_euclid(width) == 0 { 0 } else { width };
    DateTime::from_timestamp(up, 0).unwrap_or(t)
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn count_in(times: &[DateTime<Utc>], from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    times.iter().filter(|t| **t >= from && **t < to).count() as u64
}

/// A round step (1, 2 or 5 times a power of ten) that divides `0..=tallest` into at most four
/// intervals.
fn count_step(tallest: u64) -> u64 {
    let raw = tallest.div_ceil(4).max(1);
    let mut magnitude = 1u64;
    while magnitude.saturating_mul(10) <= raw {
        magnitude *= 10;
    }
    [1, 2, 5, 10]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10 * magnitude)
}

/// Ticks at round times (epoch-aligned multiples of the step: round hours in UTC), at most
/// `MAX_TICKS`; a time tick carries its date on the first tick and where the day changes.
fn time_ticks(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Tick> {
    let (a, b) = (from.timestamp(), to.timestamp());
    let span = (b - a).max(1) as f64;
    // Ticks within the hour only for a range shorter than two hours: round hours read best.
    let step = TICK_STEPS
        .into_iter()
        .filter(|s| *s >= 3600 || b - a < 2 * 3600)
        .find(|s| b.div_euclid(*s) - (a + s - 1).div_euclid(*s) < MAX_TICKS)
        .unwrap_or(*TICK_STEPS.last().unwrap_or(&86_400));
    let mut ticks = Vec::new();
    let mut t = (a + step - 1).div_euclid(step) * step;
    while t <= b {
        let Some(at) = DateTime::from_timestamp(t, 0) else {
            break;
        };
        let daily = step >= 86_400;
        let label = if daily {
            at.format("%b %-d").to_string()
        } else {
            at.format("%H:%M").to_string()
        };
        let sub = (!daily && (ticks.is_empty() || t.rem_euclid(86_400) == 0))
            .then(|| at.format("%b %-d").to_string());
        ticks.push(Tick {
            pos: round(LEFT + (t - a) as f64 / span * (RIGHT - LEFT)),
            label,
            sub,
        });
        t += step;
    }
    ticks
}

/// The window a replay starts from: the first bucket with an open violation, and as many
/// buckets after it as fit in `max_window` (cut to `max_window` when one bucket is wider).
/// (Its counts are taken from the event times, so they are exact even when it is cut.)
fn default_selection(
    buckets: &[crate::domain::StackedBucket],
    width: i64,
    max_window: TimeDelta,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let first = buckets.iter().position(|b| b.open > 0)?;
    let last = buckets.iter().rposition(|b| b.open > 0)?;
    let from = buckets[first].start;
    let widest = from + max_window;
    let mut to = buckets[first].start + TimeDelta::seconds(width);
    for b in &buckets[first + 1..=last] {
        let end = b.start + TimeDelta::seconds(width);
        if end > widest {
            break;
        }
        to = end;
    }
    Some((from, to.min(widest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// One event a minute from `from` for `minutes`.
    fn every_minute(from: &str, minutes: i64) -> Vec<DateTime<Utc>> {
        (0..minutes)
            .map(|m| t(from) + TimeDelta::minutes(m))
            .collect()
    }

    #[test]
    fn counts_get_a_round_axis_of_at_most_four_steps() {
        for (tallest, step) in [
            (0, 1),
            (1, 1),
            (4, 1),
            (5, 2),
            (15, 5),
            (100, 50),
            (5957, 2000),
            (20_001, 10_000),
        ] {
            assert_eq!(count_step(tallest), step, "{tallest}");
        }
    }

    #[test]
    fn a_six_hour_outage_reads_off_the_chart_at_round_hours_and_is_selected_within_max_window() {
        // 02:00 to 08:00: 360 open violations; the chart fits them in ten-minute bars.
        let open = every_minute("2026-11-25T02:00:00Z", 360);
        let c = chart(&ChartInput {
            open: &open,
            resolved: &[],
            range: None,
            max_window: Some(TimeDelta::hours(2)),
        })
        .unwrap()
        .unwrap();
        assert_eq!(c.bucket_secs, 600);
        assert_eq!(c.bars.len(), 36);
        assert_eq!(c.from, "2026-11-25T02:00:00+00:00");
        assert_eq!(c.to, "2026-11-25T08:00:00+00:00");
        let ticks: Vec<(&str, Option<&str>)> = c
            .x_ticks
            .iter()
            .map(|t| (t.label.as_str(), t.sub.as_deref()))
            .collect();
        assert_eq!(
            ticks,
            [
                ("02:00", Some("Nov 25")),
                ("03:00", None),
                ("04:00", None),
                ("05:00", None),
                ("06:00", None),
                ("07:00", None),
                ("08:00", None)
            ]
        );
        assert_eq!(c.x_ticks[0].pos, LEFT);
        assert_eq!(c.x_ticks[6].pos, RIGHT);
        // Ten per bar: an axis of 0, 5, 10.
        let y: Vec<&str> = c.y_ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(y, ["0", "5", "10"]);
        assert_eq!(c.y_ticks[2].pos, TOP);
        assert_eq!(c.bars[0].open_y, TOP);
        // The default selection starts at the outage and stays within max_window.
        assert_eq!(
            c.selection,
            Some(Selection {
                from: "2026-11-25T02:00:00+00:00".into(),
                to: "2026-11-25T04:00:00+00:00".into(),
                secs: 7200,
                open: 120,
                resolved: 0,
            })
        );
        assert_eq!(c.bars.iter().filter(|b| b.selected).count(), 12);
        assert!(c.bars[11].selected && !c.bars[12].selected);
        assert_eq!((c.open_total, c.resolved_total), (360, 0));
    }

    #[test]
    fn after_a_replay_the_range_stays_and_the_window_shows_resolved() {
        // The same outage, its first four hours replayed (resolved), the rest still open.
        let all = every_minute("2026-11-25T02:00:00Z", 360);
        let (resolved, open) = all.split_at(240);
        let c = chart(&ChartInput {
            open,
            resolved,
            range: None,
            max_window: Some(TimeDelta::hours(6)),
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.from.as_str(), c.to.as_str()),
            ("2026-11-25T02:00:00+00:00", "2026-11-25T08:00:00+00:00")
        );
        assert_eq!(c.bars.len(), 36);
        assert!(c.bars[..24].iter().all(|b| b.open == 0 && b.resolved == 10));
        assert!(c.bars[24..].iter().all(|b| b.open == 10 && b.resolved == 0));
        // Stacked: a resolved bar is drawn as tall as an open one was.
        assert_eq!(c.bars[0].resolved_y, c.bars[30].open_y);
        assert_eq!(c.bars[0].resolved_h, c.bars[30].open_h);
        // The selection starts where violations are still open.
        let s = c.selection.unwrap();
        assert_eq!(s.from, "2026-11-25T06:00:00+00:00");
        assert_eq!((s.open, s.resolved), (120, 0));
    }

    #[test]
    fn a_range_asked_for_is_kept_and_a_reversed_or_too_wide_one_is_refused() {
        let open = every_minute("2026-11-25T02:00:00Z", 30);
        let (from, to) = (t("2026-11-24T00:00:00Z"), t("2026-11-26T00:00:00Z"));
        let c = chart(&ChartInput {
            open: &open,
            resolved: &[],
            range: Some((from, to)),
            max_window: None,
        })
        .unwrap()
        .unwrap();
        assert_eq!(c.bucket_secs, 3600);
        assert_eq!(c.bars.len(), 48);
        assert_eq!(c.bars[26].open, 30);
        assert_eq!(c.selection, None);
        // Two days: ticks every twelve hours, the date under each midnight.
        let ticks: Vec<(&str, Option<&str>)> = c
            .x_ticks
            .iter()
            .map(|t| (t.label.as_str(), t.sub.as_deref()))
            .collect();
        assert_eq!(
            ticks,
            [
                ("00:00", Some("Nov 24")),
                ("12:00", None),
                ("00:00", Some("Nov 25")),
                ("12:00", None),
                ("00:00", Some("Nov 26"))
            ]
        );
        assert!(matches!(
            chart(&ChartInput {
                open: &open,
                resolved: &[],
                range: Some((to, from)),
                max_window: None,
            }),
            Err(ChartError::Reversed { .. })
        ));
        assert!(matches!(
            chart(&ChartInput {
                open: &open,
                resolved: &[],
                range: Some((from, from + TimeDelta::days(7 * 80))),
                max_window: None,
            }),
            Err(ChartError::TooWide { .. })
        ));
        // Nothing to draw and no range: no chart.
        let none = chart(&ChartInput {
            open: &[],
            resolved: &[],
            range: None,
            max_window: None,
        });
        assert!(matches!(none, Ok(None)));
    }
}
