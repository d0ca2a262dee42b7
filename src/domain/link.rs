//! Addresses a person follows from a notice: the console's public address, a runbook.

use std::fmt;

/// An absolute `http://` or `https://` address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct WebUrl(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebUrlError {
    #[error(
        "`{0}` is not an absolute web address; write it with http:// or https://, e.g. https://wiki.example.com/runbooks/ledger"
    )]
    NotHttp(String),
    #[error("`{0}` has no host after the scheme")]
    NoHost(String),
    #[error(
        "`{0}` has a space, a control character or one of \" < > \\ ^ ` {{ | }}; percent-encode it (a space is %20)"
    )]
    Unsafe(String),
    #[error(
        "`{0}` has a query or a fragment; give the console's base address (its paths are added to it)"
    )]
    NotABase(String),
}

impl WebUrl {
    pub fn parse(raw: &str) -> Result<Self, WebUrlError> {
        let raw = raw.trim();
        let rest = raw
            .strip_prefix("https://")
            .or_else(|| raw.strip_prefix("http://"))
            .ok_or_else(|| WebUrlError::NotHttp(raw.to_owned()))?;
        // What a URL must percent-encode: unencoded, it could also break out of an HTML
        // attribute in a notice.
        if raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"<>\\^`{|}".contains(c))
        {
            return Err(WebUrlError::Unsafe(raw.to_owned()));
        }
        if rest.split(['/', '?', '#']).next().is_none_or(str::is_empty) {
            return Err(WebUrlError::NoHost(raw.to_owned()));
        }
        Ok(Self(raw.to_owned()))
    }

    /// A base address that paths are appended to: no query or fragment, no trailing `/`.
    pub fn parse_base(raw: &str) -> Result<Self, WebUrlError> {
        let url = Self::parse(raw)?;
        if url.0.contains(['?', '#']) {
            return Err(WebUrlError::NotABase(url.0));
        }
        Ok(Self(url.0.trim_end_matches('/').to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `path` (starting with `/`) under this base, with `query` pairs encoded.
    pub fn join(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut out = format!("{}{path}", self.0);
        if !query.is_empty() {
            let encoded: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query)
                .finish();
            out.push('?');
            out.push_str(&encoded);
        }
        out
    }
}

impl fmt::Display for WebUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_addresses_are_absolute_http_with_a_host() {
        assert!(WebUrl::parse("https://wiki.example.com/runbooks/ledger#gap").is_ok());
        for bad in [
            "wiki/ledger",
            "ftp://x",
            "https://",
            "https:///x",
            "https://a b",
        ] {
            assert!(WebUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_base_takes_paths_and_encoded_queries() {
        let base = WebUrl::parse_base("https://trueup.example.com/ops/").unwrap();
        assert_eq!(
            base.join(
                "/ui/replay",
                &[
                    ("invariant", "order-events"),
                    ("from", "2026-01-01T00:00:00+00:00")
                ]
            ),
            "https://trueup.example.com/ops/ui/replay?invariant=order-events&from=2026-01-01T00%3A00%3A00%2B00%3A00"
        );
        assert!(matches!(
            WebUrl::parse_base("https://x.example?y=1"),
            Err(WebUrlError::NotABase(_))
        ));
    }
}
