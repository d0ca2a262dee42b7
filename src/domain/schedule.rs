use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

/// When an invariant is evaluated. Accepts standard 5-field crontab (`*/5 * * * *`, weekdays
/// 0–7 with 0 and 7 = Sunday), the 6/7-field form with seconds (and years) that the `cron`
/// crate reads (weekdays 1–7 with 1 = Sunday), and the `@hourly`-style shortcuts.
/// Fire times are computed in UTC.
#[derive(Clone)]
pub struct Schedule {
    written: String,
    cron: cron::Schedule,
    /// Where the fields are read; UTC when `None`.
    timezone: Option<chrono_tz::Tz>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "`{written}` is not a cron schedule: {reason}; write 5 fields like `*/15 * * * *` (minute hour day-of-month month day-of-week)"
    )]
    Invalid { written: String, reason: String },
    #[error(
        "`{written}` has {fields} fields; a schedule has 5 (crontab), 6 (with seconds) or 7 (with seconds and years)"
    )]
    FieldCount { written: String, fields: usize },
    #[error("`{written}` never fires again; pick a schedule with upcoming times")]
    NeverFires { written: String },
    #[error(
        "`{written}` is not a time zone; use an IANA name such as `Europe/Paris` or `America/New_York`"
    )]
    UnknownTimezone { written: String },
}

impl Schedule {
    pub fn parse(raw: &str) -> Result<Self, ScheduleError> {
        let written = raw.trim().to_owned();
        let fields: Vec<&str> = written.split_whitespace().collect();
        let for_cron = if written.starts_with('@') {
            written.clone()
        } else {
            match fields.len() {
                5 => {
                    let dow = crontab_weekdays_to_cron(fields[4]).map_err(|reason| {
                        ScheduleError::Invalid {
                            written: written.clone(),
                            reason,
                        }
                    })?;
                    format!(
                        "0 {} {} {} {} {}",
                        fields[0], fields[1], fields[2], fields[3], dow
                    )
                }
                6 | 7 => written.clone(),
                n => {
                    return Err(ScheduleError::FieldCount { written, fields: n });
                }
            }
        };
        let cron = cron::Schedule::from_str(&for_cron).map_err(|e| ScheduleError::Invalid {
            written: written.clone(),
            reason: e.to_string(),
        })?;
        if cron.upcoming(Utc).next().is_none() {
            return Err(ScheduleError::NeverFires { written });
        }
        Ok(Self {
            written,
            cron,
            timezone: None,
        })
    }

    /// Reads the schedule's fields in `timezone` (an IANA name) instead of UTC.
    pub fn in_timezone(mut self, timezone: &str) -> Result<Self, ScheduleError> {
        let tz: chrono_tz::Tz =
            timezone
                .trim()
                .parse()
                .map_err(|_| ScheduleError::UnknownTimezone {
                    written: timezone.to_owned(),
                })?;
        self.timezone = Some(tz);
        Ok(self)
    }

    /// The first fire time strictly after `after`.
    ///
    /// In a time zone with daylight saving time, a local time that does not exist (the hour
    /// skipped in spring) does not fire that day, and a local time that happens twice (the
    /// hour repeated in autumn) fires once, at its first occurrence.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.timezone {
            None => self.cron.after(&after).next(),
            Some(tz) => self
                .cron
                .after(&after.with_timezone(&tz))
                .next()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    pub fn as_written(&self) -> &str {
        &self.written
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.timezone {
            Some(tz) => write!(f, "Schedule({:?} in {tz})", self.written),
            None => write!(f, "Schedule({:?})", self.written),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.written == other.written && self.timezone == other.timezone
    }
}

/// Crontab numbers weekdays 0–7 (0 and 7 are Sunday); the `cron` crate numbers them 1–7
/// (1 is Sunday). Names (`MON-FRI`) mean the same in both and pass through.
fn crontab_weekdays_to_cron(field: &str) -> Result<String, String> {
    let shift = |n: &str| -> Result<u8, String> {
        let v: u8 = n
            .parse()
            .map_err(|_| format!("day-of-week `{n}` is not a number 0-7 or a name"))?;
        if v > 7 {
            return Err(format!("day-of-week `{v}` is out of range 0-7"));
        }
        Ok(if v == 7 { 1 } else { v + 1 })
    };
    let mut out = Vec::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        let is_numeric = |s: &str| s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty();
        let translated = match range.split_once('-') {
            Some((a, b)) if is_numeric(a) && is_numeric(b) => {
                let (a, b) = (shift(a)?, shift(b)?);
                if b < a {
                    // `5-7` (Friday to Sunday) becomes `6-7,1` rather than a wrapping range.
                    if step.is_some() {
                        return Err(format!(
                            "day-of-week range `{part}` wraps past Saturday with a step; list the days instead"
                        ));
                    }
                    out.push(format!("{a}-7"));
                    out.push(format!("{b}"));
                    continue;
                }
                format!("{a}-{b}")
            }
            None if is_numeric(range) => shift(range)?.to_string(),
            _ => range.to_owned(),
        };
        match step {
            Some(s) => out.push(format!("{translated}/{s}")),
            None => out.push(translated),
        }
    }
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    #[test]
    fn five_field_crontab_fires_on_the_minute() {
        let s = Schedule::parse("*/15 * * * *").unwrap();
        let next = s.next_after(at(2026, 1, 5, 10, 7)).unwrap();
        assert_eq!((next.hour(), next.minute(), next.second()), (10, 15, 0));
    }

    #[test]
    fn crontab_sunday_is_zero_and_seven() {
        // 2026-01-05 is a Monday.
        for written in ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN"] {
            let next = Schedule::parse(written)
                .unwrap()
                .next_after(at(2026, 1, 5, 0, 0))
                .unwrap();
            assert_eq!(next.weekday(), Weekday::Sun, "{written}");
        }
    }

    #[test]
    fn crontab_weekday_ranges_keep_their_meaning() {
        let s = Schedule::parse("0 9 * * 1-5").unwrap();
        let next = s.next_after(at(2026, 1, 3, 0, 0)).unwrap(); // a Saturday
        assert_eq!(next.weekday(), Weekday::Mon);
        let weekend = Schedule::parse("0 9 * * 5-7").unwrap();
        let days: Vec<Weekday> = (0..3)
            .scan(at(2026, 1, 5, 0, 0), |t, _| {
                *t = weekend.next_after(*t).unwrap();
                Some(t.weekday())
            })
            .collect();
        assert_eq!(days, vec![Weekday::Fri, Weekday::Sat, Weekday::Sun]);
    }

    #[test]
    fn six_fields_mean_seconds_first() {
        let s = Schedule::parse("*/10 * * * * *").unwrap();
        let next = s.next_after(at(2026, 1, 5, 10, 0)).unwrap();
        assert_eq!(next.second(), 10);
    }

    #[test]
    fn bad_schedules_say_what_a_good_one_looks_like() {
        let err = Schedule::parse("every 5 minutes").unwrap_err().to_string();
        assert!(err.contains("fields"), "{err}");
        let err = Schedule::parse("61 * * * *").unwrap_err().to_string();
        assert!(err.contains("`*/15 * * * *`"), "{err}");
    }

    #[test]
    fn a_time_zone_moves_the_fire_times_and_follows_daylight_saving() {
        let s = Schedule::parse("0 9 * * *")
            .unwrap()
            .in_timezone("Europe/Paris")
            .unwrap();
        // Winter: 09:00 in Paris is 08:00 UTC; summer: 07:00 UTC.
        assert_eq!(
            s.next_after(at(2026, 1, 5, 0, 0)).unwrap(),
            at(2026, 1, 5, 8, 0)
        );
        assert_eq!(
            s.next_after(at(2026, 7, 5, 0, 0)).unwrap(),
            at(2026, 7, 5, 7, 0)
        );
        assert!(
            Schedule::parse("0 9 * * *")
                .unwrap()
                .in_timezone("Mars/Olympus")
                .is_err()
        );
    }

    #[test]
    fn daylight_saving_skips_missing_times_and_fires_repeated_times_once() {
        let s = Schedule::parse("30 2 * * *")
            .unwrap()
            .in_timezone("Europe/Paris")
            .unwrap();
        // 2026-03-29 02:30 does not exist in Paris: the next fire is the 30th.
        let next = s.next_after(at(2026, 3, 28, 12, 0)).unwrap();
        assert_eq!(next, at(2026, 3, 30, 0, 30));
        // 2026-10-25 02:30 happens twice: it fires once.
        let first = s.next_after(at(2026, 10, 24, 12, 0)).unwrap();
        assert_eq!(first, at(2026, 10, 25, 0, 30));
        let second = s.next_after(first).unwrap();
        assert_eq!(second, at(2026, 10, 26, 1, 30));
    }

    #[test]
    fn a_schedule_in_the_past_is_refused() {
        let err = Schedule::parse("0 0 0 1 1 * 2001").unwrap_err();
        assert!(matches!(err, ScheduleError::NeverFires { .. }));
    }
}
