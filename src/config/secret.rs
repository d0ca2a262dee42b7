//! Secrets in the configuration: `${VAR}` references expanded, literal passwords refused, and
//! [`SecretUrl`], which never shows a password or a variable's value.

use std::fmt;

/// A database URL whose password never appears in Debug or Display output.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    url: String,
    /// What each `${VAR}` in the URL as written expanded to, and the variable's name: shown
    /// as the reference wherever it ends up in the URL, a password or not.
    expanded: Vec<(String, String)>,
}

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            expanded: Vec::new(),
        }
    }

    /// The real URL, for connecting. Never log it.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The same URL changed by `f` (a relative path resolved, say), hiding what it hid.
    pub fn map(self, f: impl FnOnce(&str) -> String) -> Self {
        Self {
            url: f(&self.url),
            expanded: self.expanded,
        }
    }

    /// The URL with its secrets replaced: each value an environment variable gave it by the
    /// `${VAR}` reference, then the userinfo password and the value of every query parameter
    /// whose name says it holds a secret by `***`.
    pub fn redacted(&self) -> String {
        // Without `scheme://` there is no telling where a password would be: show none of it.
        if !self.url.contains("://") && !self.url.starts_with("sqlite:") {
            return "(a URL that does not start with scheme://, not shown)".to_owned();
        }
        let mut out = self.url.clone();
        let mut expanded: Vec<&(String, String)> = self
            .expanded
            .iter()
            .filter(|(v, _)| !v.is_empty())
            .collect();
        // The longest first, so that a value inside another is not half replaced.
        expanded.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        for (value, name) in expanded {
            out = out.replace(value.as_str(), &format!("${{{name}}}"));
        }
        // Right to left, so the earlier ranges stay where they are.
        for (start, end) in secret_ranges(&out).into_iter().rev() {
            out.replace_range(start..end, "***");
        }
        out
    }
}

/// Whether a URL query parameter of this name carries a credential (`sslkey=`, `passfile=`
/// and the like name files, not secrets).
pub(crate) fn names_a_secret(name: &str) -> bool {
    [
        "password",
        "passwd",
        "pwd",
        "pass",
        "sslpassword",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "auth_token",
        "api_key",
        "apikey",
        "key",
        "sig",
        "signature",
    ]
    .iter()
    .any(|s| name.eq_ignore_ascii_case(s))
}

/// Whether an HTTP header of this name carries a credential.
pub(crate) fn header_holds_a_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "cookie"
    ) || [
        "token",
        "secret",
        "api-key",
        "apikey",
        "password",
        "signature",
    ]
    .iter()
    .any(|w| name.contains(w))
}

/// Byte ranges of the values of query parameters that name a secret (`password=`,
/// `sslpassword=`, `token=`, ...), in order.
pub(super) fn query_secret_ranges(url: &str) -> Vec<(usize, usize)> {
    let Some(q) = url.find('?') else {
        return Vec::new();
    };
    let end = url[q..].find('#').map_or(url.len(), |i| q + i);
    let mut ranges = Vec::new();
    let mut at = q + 1;
    for pair in url[q + 1..end].split('&') {
        if let Some(eq) = pair.find('=') {
            let name = percent_encoding::percent_decode_str(&pair[..eq]).decode_utf8_lossy();
            if names_a_secret(&name) && eq + 1 < pair.len() {
                ranges.push((at + eq + 1, at + pair.len()));
            }
        }
        at += pair.len() + 1;
    }
    ranges
}

/// Every secret's byte range in a URL: the userinfo password, then secret query values.
fn secret_ranges(url: &str) -> Vec<(usize, usize)> {
    userinfo_password_range(url)
        .into_iter()
        .chain(query_secret_ranges(url))
        .collect()
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Byte range of the password in `scheme://user:password@host/...`, if there is one.
pub(super) fn userinfo_password_range(url: &str) -> Option<(usize, usize)> {
    let authority_start = url.find("://")? + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    Some((authority_start + colon + 1, authority_start + at))
}

/// Whether `value` is one whole `${VAR}` reference.
pub(super) fn is_env_reference(value: &str) -> bool {
    value.len() > 3
        && value.starts_with("${")
        && value.ends_with('}')
        && value[2..value.len() - 1]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces `${VAR}` references, and refuses a password written literally in the file, in the
/// userinfo or in a query parameter.
pub(super) fn expand_secret_url(
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SecretUrl, String> {
    if let Some((start, end)) = userinfo_password_range(raw)
        && !is_env_reference(&raw[start..end])
    {
        return Err(
            "the URL has a password written in the file; write it as a reference like `postgres://user:${DB_PASSWORD}@host/db` and set that environment variable".into(),
        );
    }
    for (start, end) in query_secret_ranges(raw) {
        if !is_env_reference(&raw[start..end]) {
            let name_start = raw[..start - 1].rfind(['?', '&']).map_or(0, |i| i + 1);
            let name = &raw[name_start..start - 1];
            return Err(format!(
                "the URL's query has `{name}=` written in the file; write it as a reference like `{name}=${{DB_PASSWORD}}` (or put the password in the URL as `user:${{DB_PASSWORD}}@`) and set that environment variable"
            ));
        }
    }
    let mut expanded = Vec::new();
    let url = expand_each(raw, env, &mut expanded)?;
    Ok(SecretUrl { url, expanded })
}

/// Replaces `${VAR}` references with their values from `env`.
pub(super) fn expand_env(
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    expand_each(raw, env, &mut Vec::new())
}

/// [`expand_env`], noting each value and its variable's name in `expanded`.
fn expand_each(
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
    expanded: &mut Vec<(String, String)>,
) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in `{raw}`"))?;
        let name = &after[..end];
        let value = env(name).ok_or_else(|| {
            format!("environment variable `{name}` is not set; export it before starting trueup")
        })?;
        out.push_str(&value);
        expanded.push((value, name.to_owned()));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
