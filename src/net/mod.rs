//! Outbound HTTP: the one way trueup builds a client for a system it calls, whether it reads
//! from it (an HTTP source) or writes to it (an HTTP target). Requests stay under the base URL
//! they were configured with and, unless the configuration allows it, off internal networks
//! (`guard`).

pub mod guard;
mod servers;

pub use servers::{Reconnecting, nats_broken, nats_connect, redis_broken, redis_connect};

use std::sync::Arc;
use std::time::Duration;

/// A client whose requests time out after `timeout`, follow at most 3 redirects and only
/// under `base_url`, and — where `guarded` — reach public addresses only (names are checked
/// after resolution, so a name re-pointed inside is refused too).
pub fn guarded_client(
    base_url: &str,
    timeout: Duration,
    guarded: bool,
) -> Result<reqwest::Client, reqwest::Error> {
    let base = base_url.to_owned();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        match guard::check_redirect(attempt.url(), attempt.previous().len(), &base, guarded) {
            Ok(()) => attempt.follow(),
            Err(why) => attempt.error(why),
        }
    });
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .redirect(redirects)
        .user_agent(concat!("trueup/", env!("CARGO_PKG_VERSION")));
    if guarded {
        builder = builder.dns_resolver(Arc::new(guard::GuardedResolver));
    }
    builder.build()
}

/// An error with every cause it wraps, outermost first: a connect error's most useful part
/// (the guard's refusal, the resolver's failure) is usually the innermost.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Many errors repeat their cause in their own text.
        let text = s.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        source = s.source();
    }
    msg
}

/// `Retry-After` as seconds or an HTTP date; `Err` when present but unreadable.
pub fn retry_after(
    headers: &reqwest::header::HeaderMap,
) -> Option<Result<std::time::Duration, ()>> {
    let raw = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Ok(std::time::Duration::from_secs(secs)));
    }
    Some(
        chrono::DateTime::parse_from_rfc2822(raw)
            .map(|at| {
                (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default()
            })
            .map_err(|_| ()),
    )
}
