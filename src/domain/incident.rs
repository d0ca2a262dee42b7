//! Incidents: names and the phases of a response.

use std::fmt;

use super::NameError;

/// The name of an incident, as people type it in commands (`2026-11-25-billing-outage`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct IncidentName(String);

impl IncidentName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let allowed =
            "lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit";
        if raw.is_empty() {
            return Err(NameError::Empty {
                what: "incident name",
            });
        }
        if raw.chars().count() > 128 {
            return Err(NameError::TooLong {
                what: "incident name",
                name: raw.to_owned(),
                max: 128,
            });
        }
        if let Some((_, bad)) = raw.char_indices().find(|&(i, c)| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || (i > 0 && "-_.".contains(c)))
        }) {
            return Err(NameError::BadCharacter {
                what: "incident name",
                name: raw.to_owned(),
                bad,
                allowed,
            });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IncidentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The phases of an incident response, in their usual order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The damage stops growing.
    Contain,
    /// The failed system works again.
    Restore,
    /// What was lost or wrong is repaired (plans, replays).
    Reconcile,
    /// Invariants re-checked and holding.
    Verify,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Contain,
        Phase::Restore,
        Phase::Reconcile,
        Phase::Verify,
    ];
    pub const NAMES: &'static str = "contain, restore, reconcile or verify";

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == raw)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Contain => "contain",
            Phase::Restore => "restore",
            Phase::Reconcile => "reconcile",
            Phase::Verify => "verify",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incident_names_and_phases_parse_with_reasons() {
        assert!(IncidentName::parse("2026-11-25-billing-outage").is_ok());
        let err = IncidentName::parse("Billing outage").unwrap_err();
        assert!(
            err.to_string().contains("` `") || err.to_string().contains("`B`"),
            "{err}"
        );
        assert!(IncidentName::parse("").is_err());
        assert_eq!(Phase::parse("reconcile"), Some(Phase::Reconcile));
        assert_eq!(Phase::parse("fix"), None);
    }
}
