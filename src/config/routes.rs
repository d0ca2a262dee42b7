//! `notifications.route`: the route tree as written → [`Route`], each child's unset settings
//! taken from its parent (Alertmanager's inheritance), every mistake located.

use std::path::Path;

use chrono::TimeDelta;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::diagnostic::Diagnostic;
use crate::domain::{GroupBy, HumanDuration, Matcher, Route};

/// Alertmanager's defaults: a new group waits 30 s for company, then 5 min between notices.
const GROUP_WAIT: TimeDelta = TimeDelta::seconds(30);
const GROUP_INTERVAL: TimeDelta = TimeDelta::minutes(5);
/// Deeper trees are a mistake, not a design; the limit keeps the walk cheap.
const MAX_DEPTH: usize = 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    #[serde(default)]
    matchers: Vec<Spanned<String>>,
    channels: Option<Spanned<Vec<Spanned<String>>>>,
    group_by: Option<Spanned<Vec<Spanned<String>>>>,
    group_wait: Option<Spanned<String>>,
    group_interval: Option<Spanned<String>>,
    #[serde(rename = "continue")]
    continue_: Option<Spanned<bool>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
}

/// What a child takes from its parent.
struct Inherited {
    channels: Vec<String>,
    group_by: GroupBy,
    group_wait: TimeDelta,
    group_interval: TimeDelta,
}

/// The root route: it matches every alert, so it has no matchers and nothing to continue to.
/// Without `channels` it sends to every configured channel.
pub(super) fn parse_route(
    raw: &Spanned<RawRoute>,
    channels: &[String],
    path: &Path,
    errors: &mut Vec<Diagnostic>,
) -> Option<Route> {
    let before = errors.len();
    if let Some(m) = raw.value.matchers.first() {
        errors.push(Diagnostic::at(
            path,
            m.referenced,
            "notifications.route: the root route matches every alert and takes no `matchers`; put them on a route under `routes:`".to_owned(),
        ));
    }
    if let Some(c) = &raw.value.continue_ {
        errors.push(Diagnostic::at(
            path,
            c.referenced,
            "notifications.route: the root route has no siblings to continue to; `continue` belongs on a route under `routes:`".to_owned(),
        ));
    }
    let defaults = Inherited {
        channels: channels.to_vec(),
        group_by: GroupBy::Labels(Vec::new()),
        group_wait: GROUP_WAIT,
        group_interval: GROUP_INTERVAL,
    };
    let route = node(
        raw,
        &defaults,
        "notifications.route",
        0,
        channels,
        path,
        errors,
    );
    (errors.len() == before).then_some(route)
}

fn node(
    raw: &Spanned<RawRoute>,
    parent: &Inherited,
    at: &str,
    depth: usize,
    known: &[String],
    path: &Path,
    errors: &mut Vec<Diagnostic>,
) -> Route {
    let r = &raw.value;
    let mut error = |loc, message: String| {
        errors.push(Diagnostic::at(path, loc, format!("{at}: {message}")));
    };
    let mut matchers = Vec::new();
    for m in &r.matchers {
        match Matcher::parse(&m.value) {
            Ok(parsed) => matchers.push(parsed),
            Err(e) => error(m.referenced, format!("matchers: {e}")),
        }
    }
    let channels = match &r.channels {
        None => parent.channels.clone(),
        Some(list) => {
            for c in &list.value {
                if !known.contains(&c.value) {
                    error(
                        c.referenced,
                        format!(
                            "channels: unknown channel `{}` (configured: {}); channels are declared under `notifications.channels`",
                            c.value,
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
            }
            list.value.iter().map(|c| c.value.clone()).collect()
        }
    };
    let group_by = match &r.group_by {
        None => parent.group_by.clone(),
        Some(list) if list.value.iter().any(|l| l.value == "...") => {
            if list.value.len() > 1 {
                error(
                    list.referenced,
                    "group_by: `...` (each alert on its own) stands alone; remove the other labels"
                        .to_owned(),
                );
            }
            GroupBy::Each
        }
        Some(list) => {
            for l in &list.value {
                if !crate::domain::is_label_name(&l.value) {
                    error(
                        l.referenced,
                        format!(
                            "group_by: `{}` is not a label name; name labels such as owner, severity, invariant or one of your invariants' labels, or `...` for each alert on its own",
                            l.value
                        ),
                    );
                }
            }
            GroupBy::Labels(list.value.iter().map(|l| l.value.clone()).collect())
        }
    };
    let mut duration = |raw: &Option<Spanned<String>>, field: &str, inherited: TimeDelta| match raw
    {
        None => inherited,
        Some(d) => match HumanDuration::parse(&d.value) {
            Ok(v) if v.as_chrono() <= TimeDelta::hours(24) => v.as_chrono(),
            Ok(_) => {
                error(d.referenced, format!("{field}: at most 24h"));
                inherited
            }
            Err(e) => {
                error(d.referenced, format!("{field}: {e}"));
                inherited
            }
        },
    };
    let group_wait = duration(&r.group_wait, "group_wait", parent.group_wait);
    let group_interval = duration(&r.group_interval, "group_interval", parent.group_interval);
    let inherited = Inherited {
        channels: channels.clone(),
        group_by: group_by.clone(),
        group_wait,
        group_interval,
    };
    let mut routes = Vec::new();
    if depth >= MAX_DEPTH && !r.routes.is_empty() {
        errors.push(Diagnostic::at(
            path,
            raw.referenced,
            format!("{at}: routes nest at most {MAX_DEPTH} deep"),
        ));
    } else {
        for (i, child) in r.routes.iter().enumerate() {
            routes.push(node(
                child,
                &inherited,
                &format!("{at}.routes[{i}]"),
                depth + 1,
                known,
                path,
                errors,
            ));
        }
    }
    Route {
        matchers,
        channels,
        group_by,
        group_wait,
        group_interval,
        continue_: r.continue_.as_ref().is_some_and(|c| c.value),
        routes,
    }
}
