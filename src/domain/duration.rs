use std::fmt;
use std::time::Duration;

/// A duration written the way people write them in config files: `30s`, `15m`, `1h30m`, `2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{raw}` is not a duration ({reason}); write a number and a unit, e.g. `30s`, `15m`, `1h30m`, `2d`"
)]
pub struct DurationError {
    raw: String,
    reason: String,
}

impl HumanDuration {
    pub fn parse(raw: &str) -> Result<Self, DurationError> {
        let trimmed = raw.trim();
        if trimmed.chars().all(|c| c.is_ascii_digit()) && !trimmed.is_empty() {
            return Err(DurationError {
                raw: raw.to_owned(),
                reason: "a unit is missing".into(),
            });
        }
        humantime::parse_duration(trimmed)
            .map(Self)
            .map_err(|e| DurationError {
                raw: raw.to_owned(),
                reason: e.to_string(),
            })
    }

    pub fn from_std(d: Duration) -> Self {
        Self(d)
    }

    pub fn as_std(self) -> Duration {
        self.0
    }

    pub fn as_chrono(self) -> chrono::TimeDelta {
        chrono::TimeDelta::from_std(self.0).unwrap_or(chrono::TimeDelta::MAX)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_forms_parse() {
        assert_eq!(HumanDuration::parse("15m").unwrap().as_std().as_secs(), 900);
        assert_eq!(
            HumanDuration::parse("1h30m").unwrap().as_std().as_secs(),
            5400
        );
        assert_eq!(
            HumanDuration::parse("2d").unwrap().as_std().as_secs(),
            172_800
        );
    }

    #[test]
    fn a_bare_number_is_refused_because_the_unit_is_ambiguous() {
        let err = HumanDuration::parse("15").unwrap_err().to_string();
        assert!(err.contains("unit is missing"), "{err}");
    }

    #[test]
    fn garbage_is_refused_with_an_example() {
        let err = HumanDuration::parse("soon").unwrap_err().to_string();
        assert!(err.contains("e.g. `30s`"), "{err}");
    }
}
