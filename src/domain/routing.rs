//! Where an alert's notices go and when they are held: label matchers (Alertmanager's
//! syntax), the route tree of `notifications.route` with its grouping, and silences.
//!
//! An alert's labels are its invariant's `labels` plus `invariant`, `severity` and `owner`
//! (the names trueup sets; an invariant cannot declare them itself). A label an alert does not
//! have matches as the empty string, as in Alertmanager.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};

use super::Invariant;

/// The label names trueup sets on every alert.
pub const RESERVED_LABELS: [&str; 3] = ["invariant", "severity", "owner"];

/// The labels of an invariant's alert, which routes and silences match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlertLabels(pub BTreeMap<String, String>);

impl AlertLabels {
    pub fn of(invariant: &Invariant) -> Self {
        let mut labels = invariant.labels.clone();
        labels.insert("invariant".into(), invariant.name.to_string());
        labels.insert("severity".into(), invariant.severity.as_str().into());
        if let Some(owner) = &invariant.owner {
            labels.insert("owner".into(), owner.clone());
        }
        Self(labels)
    }

    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`, the whole value
    Regex,
    /// `!~`
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One condition on an alert's labels: `team=payments`, `severity=~"critical|high"`,
/// `owner!=""`.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// The value anchored at both ends, for `=~` and `!~`.
    regex: Option<regex::Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}
impl Eq for Matcher {}

/// Why a matcher was refused; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    #[error(
        "`{0}` is not a matcher; write label=value, label!=value, label=~regex or label!~regex (e.g. invariant=orders-billed, severity=~\"critical|high\")"
    )]
    Shape(String),
    #[error("`{0}` is not a label name; use letters, digits and `_`, not starting with a digit")]
    Name(String),
    #[error("`{value}` is not a regular expression: {message}")]
    Regex { value: String, message: String },
}

/// Prometheus's rule for label names.
pub fn is_label_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
}

impl Matcher {
    pub fn parse(text: &str) -> Result<Self, MatcherError> {
        let text = text.trim();
        let shape = || MatcherError::Shape(text.to_owned());
        // The first operator character ends the name; `!` and `~` extend it.
        let at = text.find(['=', '!']).ok_or_else(shape)?;
        let (name, rest) = (text[..at].trim(), &text[at..]);
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            (MatchOp::Regex, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (MatchOp::Equal, v)
        } else {
            return Err(shape());
        };
        if !is_label_name(name) {
            return Err(if name.is_empty() {
                shape()
            } else {
                MatcherError::Name(name.to_owned())
            });
        }
        let value = value.trim();
        let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\\\"", "\"").replace("\\\\", "\\"),
            None => value.to_owned(),
        };
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => {
                Some(regex::Regex::new(&format!("^(?:{value})$")).map_err(|e| {
                    MatcherError::Regex {
                        value: value.clone(),
                        message: e.to_string().lines().last().unwrap_or("").trim().to_owned(),
                    }
                })?)
            }
            _ => None,
        };
        Ok(Self {
            name: name.to_owned(),
            op,
            value,
            regex,
        })
    }

    pub fn matches(&self, labels: &AlertLabels) -> bool {
        let v = labels.get(&self.name);
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => v == self.value,
            (MatchOp::NotEqual, _) => v != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(v),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(v),
            // Built only by `parse`, which compiles the regex of these two.
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let escaped = self.value.replace('\\', "\\\\").replace('"', "\\\"");
        write!(f, "{}{}\"{escaped}\"", self.name, self.op.as_str())
    }
}

impl serde::Serialize for Matcher {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Whether every matcher matches `labels`.
pub fn all_match(matchers: &[Matcher], labels: &AlertLabels) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

/// Which alerts of one route share a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// Those with the same values of these labels (`[]`: all of the route's alerts).
    Labels(Vec<String>),
    /// Each alert on its own (`['...']`).
    Each,
    /// Each notice on its own, at once: trueup without `notifications.route`.
    EachNotice,
}

/// One node of the route tree, its unset settings taken from its parent when built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub matchers: Vec<Matcher>,
    pub channels: Vec<String>,
    pub group_by: GroupBy,
    /// How long a new group waits for more alerts before its first notice.
    pub group_wait: TimeDelta,
    /// How long a group waits after a notice before the next (with whatever changed).
    pub group_interval: TimeDelta,
    /// After matching, go on to the next sibling route too.
    pub continue_: bool,
    pub routes: Vec<Route>,
}

impl Route {
    /// The tree without `notifications.route`: every notice to every channel at once, each
    /// invariant on its own — what trueup did before routes.
    pub fn every_channel(channels: Vec<String>) -> Self {
        Self {
            matchers: Vec::new(),
            channels,
            group_by: GroupBy::EachNotice,
            group_wait: TimeDelta::zero(),
            group_interval: TimeDelta::zero(),
            continue_: false,
            routes: Vec::new(),
        }
    }

    /// Where an alert with `labels` goes: one delivery per channel of each route it ends in,
    /// as Alertmanager walks its tree (depth first; the first matching child, or every
    /// matching child up to one without `continue`; the node itself when no child matches).
    pub fn deliveries(&self, labels: &AlertLabels) -> Vec<Delivery> {
        let mut out = Vec::new();
        self.walk(labels, "0", &mut out);
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|d| seen.insert((d.channel.clone(), d.group_key.clone())));
        out
    }

    fn walk(&self, labels: &AlertLabels, path: &str, out: &mut Vec<Delivery>) {
        let mut matched = false;
        for (i, child) in self.routes.iter().enumerate() {
            if all_match(&child.matchers, labels) {
                matched = true;
                child.walk(labels, &format!("{path}.{i}"), out);
                if !child.continue_ {
                    break;
                }
            }
        }
        if !matched {
            out.extend(self.own_deliveries(labels, path, &self.channels));
        }
    }

    /// This route's deliveries of `labels` to `channels`.
    pub fn own_deliveries(
        &self,
        labels: &AlertLabels,
        path: &str,
        channels: &[String],
    ) -> Vec<Delivery> {
        let group_labels: BTreeMap<String, String> = match &self.group_by {
            GroupBy::Each | GroupBy::EachNotice => labels.0.clone(),
            GroupBy::Labels(names) => names
                .iter()
                .map(|n| (n.clone(), labels.get(n).to_owned()))
                .collect(),
        };
        let grouping = match &self.group_by {
            GroupBy::Each | GroupBy::EachNotice => {
                format!("invariant={}", labels.get("invariant"))
            }
            GroupBy::Labels(_) => group_labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(","),
        };
        channels
            .iter()
            .map(|channel| Delivery {
                channel: channel.clone(),
                group_key: format!("{channel}/{path}/{{{grouping}}}"),
                group_labels: group_labels.clone(),
                group_wait: self.group_wait,
                group_interval: self.group_interval,
                alone: self.group_by == GroupBy::EachNotice,
            })
            .collect()
    }
}

/// One notice's way out: a channel, and the group it waits in there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub channel: String,
    /// The channel, the route and the grouped labels' values: notices with the same key go
    /// out together.
    pub group_key: String,
    pub group_labels: BTreeMap<String, String>,
    pub group_wait: TimeDelta,
    pub group_interval: TimeDelta,
    /// The notice goes out on its own, whatever else waits (the group key is made its own).
    pub alone: bool,
}

impl Delivery {
    /// When a notice queued at `now` goes out: after the group's wait, and not sooner than
    /// `group_interval` after the group's last notice.
    pub fn due_at(&self, now: DateTime<Utc>, last_sent: Option<DateTime<Utc>>) -> DateTime<Utc> {
        let waited = now + self.group_wait;
        match last_sent {
            Some(last) => waited.max(last + self.group_interval),
            None => waited,
        }
    }
}

/// A silence as recorded: while active, the notices of the alerts it matches are held.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Silence {
    pub id: i64,
    pub matchers: Vec<Matcher>,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// When someone ended it early, and who.
    pub expired_at: Option<DateTime<Utc>>,
    pub expired_by: Option<String>,
}

impl Silence {
    /// When it stops holding notices.
    pub fn ended_at(&self) -> DateTime<Utc> {
        self.expired_at
            .map_or(self.ends_at, |e| e.min(self.ends_at))
    }

    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        now < self.ended_at()
    }

    pub fn matches(&self, labels: &AlertLabels) -> bool {
        all_match(&self.matchers, labels)
    }

    /// The names of the `invariants` whose alerts it matches.
    pub fn matching<I: std::borrow::Borrow<Invariant>>(&self, invariants: &[I]) -> Vec<String> {
        invariants
            .iter()
            .map(std::borrow::Borrow::borrow)
            .filter(|i| self.matches(&AlertLabels::of(i)))
            .map(|i| i.name.to_string())
            .collect()
    }
}

/// A silence someone asks for, checked: what it matches, for how long, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSilence {
    pub matchers: Vec<Matcher>,
    pub ends_at: DateTime<Utc>,
    pub reason: String,
}

/// Why a silence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SilenceError {
    #[error("matcher {index}: {source}")]
    Matcher { index: usize, source: MatcherError },
    #[error("a silence needs at least one matcher, e.g. invariant=orders-billed or team=payments")]
    NoMatchers,
    #[error(
        "these matchers match every alert (each matches an empty label); name at least one label value, e.g. invariant=orders-billed"
    )]
    MatchesEverything,
    #[error("a silence needs a reason (what is going on, e.g. \"ledger maintenance until 03:00\")")]
    NoReason,
    #[error("a silence must last between 1 minute and 30 days, not {0}")]
    Length(String),
}

/// The longest silence: a silence is for planned work, not for switching alerts off.
const LONGEST: TimeDelta = TimeDelta::days(30);

impl NewSilence {
    /// A silence of `matchers` for `length` from `now`, because of `reason`.
    pub fn parse(
        matchers: &[String],
        length: TimeDelta,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Self, SilenceError> {
        if matchers.is_empty() {
            return Err(SilenceError::NoMatchers);
        }
        let matchers = matchers
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Matcher::parse(m).map_err(|source| SilenceError::Matcher {
                    index: i + 1,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // As Alertmanager: a silence whose matchers all match the empty label would hold
        // every alert trueup will ever raise.
        if matchers.iter().all(|m| m.matches(&AlertLabels::default())) {
            return Err(SilenceError::MatchesEverything);
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(SilenceError::NoReason);
        }
        if length < TimeDelta::minutes(1) || length > LONGEST {
            let shown = length
                .to_std()
                .map(|d| humantime::format_duration(d).to_string())
                .unwrap_or_else(|_| "a negative length".into());
            return Err(SilenceError::Length(shown));
        }
        Ok(Self {
            matchers,
            ends_at: now + length,
            reason: reason.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> AlertLabels {
        AlertLabels(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn m(text: &str) -> Matcher {
        Matcher::parse(text).unwrap()
    }

    #[test]
    fn matchers_read_alertmanagers_four_operators_quoted_or_not() {
        let l = labels(&[("team", "payments"), ("severity", "high")]);
        assert!(m("team=payments").matches(&l));
        assert!(m("team = \"payments\"").matches(&l));
        assert!(!m("team!=payments").matches(&l));
        assert!(m("severity=~\"critical|high\"").matches(&l));
        assert!(
            !m("severity=~crit").matches(&l),
            "a regex matches the whole value"
        );
        assert!(m("severity!~low|medium").matches(&l));
        assert!(m("owner=\"\"").matches(&l), "a missing label is empty");
        assert_eq!(m("team=~pay.*").to_string(), "team=~\"pay.*\"");
    }

    #[test]
    fn a_malformed_matcher_says_what_is_wrong_and_how_to_write_one() {
        assert!(matches!(
            Matcher::parse("team"),
            Err(MatcherError::Shape(_))
        ));
        assert!(matches!(Matcher::parse("=x"), Err(MatcherError::Shape(_))));
        assert!(matches!(
            Matcher::parse("1team=x"),
            Err(MatcherError::Name(n)) if n == "1team"
        ));
        let e = Matcher::parse("team=~(pay").unwrap_err();
        assert!(e.to_string().contains("not a regular expression"), "{e}");
    }

    fn route(matchers: &[&str], channels: &[&str], cont: bool, routes: Vec<Route>) -> Route {
        Route {
            matchers: matchers.iter().map(|t| m(t)).collect(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            group_by: GroupBy::Labels(vec!["owner".into()]),
            group_wait: TimeDelta::seconds(30),
            group_interval: TimeDelta::minutes(5),
            continue_: cont,
            routes,
        }
    }

    fn channels_of(r: &Route, l: &AlertLabels) -> Vec<String> {
        r.deliveries(l).into_iter().map(|d| d.channel).collect()
    }

    #[test]
    fn the_first_matching_route_wins_unless_it_continues_and_the_root_takes_the_rest() {
        let tree = route(
            &[],
            &["default"],
            false,
            vec![
                route(&["severity=critical"], &["pager"], true, vec![]),
                route(&["owner=payments"], &["payments"], false, vec![]),
                route(&["owner=~pay.*"], &["never"], false, vec![]),
            ],
        );
        let critical_payments = labels(&[("severity", "critical"), ("owner", "payments")]);
        assert_eq!(
            channels_of(&tree, &critical_payments),
            ["pager", "payments"]
        );
        let low_payments = labels(&[("severity", "low"), ("owner", "payments")]);
        assert_eq!(channels_of(&tree, &low_payments), ["payments"]);
        let other = labels(&[("severity", "low"), ("owner", "search")]);
        assert_eq!(channels_of(&tree, &other), ["default"]);
    }

    #[test]
    fn alerts_share_a_group_when_their_grouped_labels_agree_on_the_same_route() {
        let tree = route(&[], &["mail"], false, vec![]);
        let a = labels(&[("invariant", "a"), ("owner", "payments")]);
        let b = labels(&[("invariant", "b"), ("owner", "payments")]);
        let c = labels(&[("invariant", "c"), ("owner", "search")]);
        let key = |l| tree.deliveries(l)[0].group_key.clone();
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        let each = Route::every_channel(vec!["mail".into()]);
        assert_ne!(
            each.deliveries(&a)[0].group_key,
            each.deliveries(&b)[0].group_key
        );
    }

    #[test]
    fn a_notice_waits_for_its_group_and_not_sooner_than_the_interval_after_the_last() {
        let tree = route(&[], &["mail"], false, vec![]);
        let d = &tree.deliveries(&labels(&[("owner", "x")]))[0];
        let now = DateTime::parse_from_rfc3339("2026-12-04T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(d.due_at(now, None), now + TimeDelta::seconds(30));
        let last = now - TimeDelta::minutes(1);
        assert_eq!(d.due_at(now, Some(last)), last + TimeDelta::minutes(5));
        let long_ago = now - TimeDelta::hours(1);
        assert_eq!(d.due_at(now, Some(long_ago)), now + TimeDelta::seconds(30));
    }

    #[test]
    fn a_silence_needs_a_real_matcher_a_reason_and_a_sane_length() {
        let now = Utc::now();
        let ok = NewSilence::parse(&["invariant=a".into()], TimeDelta::hours(1), "maint", now);
        assert_eq!(ok.unwrap().ends_at, now + TimeDelta::hours(1));
        let err = |m: &[&str], len, reason| {
            let m: Vec<String> = m.iter().map(|s| (*s).to_owned()).collect();
            NewSilence::parse(&m, len, reason, now).unwrap_err()
        };
        assert_eq!(err(&[], TimeDelta::hours(1), "x"), SilenceError::NoMatchers);
        assert_eq!(
            err(&["team=~.*"], TimeDelta::hours(1), "x"),
            SilenceError::MatchesEverything
        );
        assert_eq!(
            err(&["team=a"], TimeDelta::hours(1), "  "),
            SilenceError::NoReason
        );
        assert!(matches!(
            err(&["team=a"], TimeDelta::days(31), "x"),
            SilenceError::Length(_)
        ));
        assert!(matches!(
            err(&["team=a", "bad"], TimeDelta::hours(1), "x"),
            SilenceError::Matcher { index: 2, .. }
        ));
    }

    #[test]
    fn a_silence_expired_early_ends_then() {
        let now = Utc::now();
        let mut s = Silence {
            id: 1,
            matchers: vec![m("invariant=a")],
            reason: "x".into(),
            created_by: "cli:me".into(),
            created_at: now,
            ends_at: now + TimeDelta::hours(2),
            expired_at: None,
            expired_by: None,
        };
        assert!(s.is_active(now + TimeDelta::hours(1)));
        s.expired_at = Some(now + TimeDelta::minutes(10));
        assert!(!s.is_active(now + TimeDelta::minutes(11)));
        assert!(s.matches(&labels(&[("invariant", "a")])));
        assert!(!s.matches(&labels(&[("invariant", "b")])));
    }
}
