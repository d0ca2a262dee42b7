//! An HTTP API as a source: a side's request is sent page after page, each page's items
//! mapped to typed columns, and the rows given to the evaluator like a database's — in key
//! order when it asks for an order (`sort.rs`), filtered in process where a database would
//! filter in its query.
//!
//! A failed page never shortens the rows: a request refused with 429 or 5xx, or that timed
//! out or lost its connection, is sent again after the wait the API asks for (`Retry-After`)
//! or a growing backoff, and a page that still fails fails the read — and so the run.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use reqwest::Url;
use rust_decimal::Decimal;
use serde_json::Value as Json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::stream::Feed;
use super::unordered::Rows;
use super::{ReadRequest, Row, SourceError};
use crate::config::HttpSource;
use crate::domain::{
    CursorFrom, Field, FieldFrom, FieldKind, HttpRequest, Paging, Read, SourceName, Value,
};

/// The longest wait a `Retry-After` may ask for within a run.
const LONGEST_WAIT: Duration = Duration::from_secs(300);

/// A connected API: its client (guarded, with the source's timeout) and its pace.
pub(super) struct Api {
    cfg: HttpSource,
    client: reqwest::Client,
    /// When the next request may leave (`rate:`), shared by every read of the source.
    next_slot: Mutex<Instant>,
}

impl Api {
    pub(super) fn open(cfg: &HttpSource) -> Result<Self, SourceError> {
        let client = crate::net::guarded_client(
            &cfg.base_url,
            cfg.timeout.as_std(),
            !cfg.allow_private_network,
        )
        .map_err(|e| SourceError::Connect {
            source_name: cfg.name.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            cfg: cfg.clone(),
            client,
            next_slot: Mutex::new(Instant::now()),
        })
    }

    fn name(&self) -> &SourceName {
        &self.cfg.name
    }

    /// Waits for this request's slot under `rate:`.
    async fn pace(&self) {
        let Some(rate) = self.cfg.rate else { return };
        let period = Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::MAX);
        let at = {
            let mut next = self.next_slot.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + period;
            at
        };
        tokio::time::sleep_until(at).await;
    }

    fn failed_path(&self, path: &str, message: String) -> SourceError {
        SourceError::Api {
            source_name: self.name().clone(),
            request: format!("GET {}{path}", self.cfg.base_url),
            message,
        }
    }

    fn failed(&self, url: &Url, message: String) -> SourceError {
        SourceError::Api {
            source_name: self.name().clone(),
            request: format!("GET {url}"),
            message,
        }
    }

    /// One page: its JSON body and the URL of the next page its `Link` header gives; `None`
    /// when the API answers 404 and `absent_ok` (a lookup of a key it does not hold).
    async fn page(
        &self,
        url: &Url,
        absent_ok: bool,
    ) -> Result<Option<(Json, Option<Url>)>, SourceError> {
        // Names are checked by the client's resolver; an address written as such never goes
        // through it.
        if !self.cfg.allow_private_network
            && let Err(refused) = crate::net::guard::check_url(url)
        {
            return Err(self.failed(
                url,
                format!("{refused}; set `allow_private_network: true` on the source to allow it"),
            ));
        }
        let mut attempt = 0;
        loop {
            self.pace().await;
            let mut request = self.client.get(url.clone());
            for (name, value) in &self.cfg.headers {
                request = request.header(name, secrecy::ExposeSecret::expose_secret(value));
            }
            let retry = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let next = next_link(&response, url);
                    let body = response.bytes().await.map_err(|e| {
                        self.failed(
                            url,
                            format!("the response broke off: {}", crate::net::error_chain(&e)),
                        )
                    })?;
                    let json = serde_json::from_slice(&body).map_err(|e| {
                        let start =
                            String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
                        self.failed(
                            url,
                            format!("the response is not JSON ({e}); it starts: {start}"),
                        )
                    })?;
                    let next = next.transpose().map_err(|why| self.failed(url, why))?;
                    return Ok(Some((json, next)));
                }
                Ok(response) => {
                    let status = response.status();
                    let asked = crate::net::retry_after(response.headers());
                    if status == reqwest::StatusCode::NOT_FOUND && absent_ok {
                        return Ok(None);
                    }
                    if !(status.as_u16() == 429 || status.is_server_error()) {
                        let text = response.text().await.unwrap_or_default();
                        let excerpt: String = text.chars().take(300).collect();
                        return Err(
                            self.failed(url, format!("the API answered {status}: {excerpt}"))
                        );
                    }
                    (format!("the API answered {status}"), asked)
                }
                Err(e) if e.is_timeout() || e.is_connect() || e.is_request() || e.is_body() => {
                    let why = if e.is_timeout() {
                        format!("no answer within {}", self.cfg.timeout)
                    } else {
                        crate::net::error_chain(&e)
                    };
                    (why, None)
                }
                Err(e) => return Err(self.failed(url, crate::net::error_chain(&e))),
            };
            let (why, asked) = retry;
            if attempt >= self.cfg.retries {
                return Err(self.failed(
                    url,
                    format!("{why}, {} times; the page was not read", attempt + 1),
                ));
            }
            let wait = match asked {
                Some(Ok(wait)) if wait > LONGEST_WAIT => {
                    return Err(self.failed(
                        url,
                        format!(
                            "{why} and asks to wait {}s (Retry-After), longer than a run waits ({}s)",
                            wait.as_secs(),
                            LONGEST_WAIT.as_secs()
                        ),
                    ));
                }
                Some(Ok(wait)) => wait,
                Some(Err(())) | None => backoff(attempt),
            };
            tracing::debug!(source = %self.name(), %url, "{why}; trying again in {wait:?}");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// 0.25 s, doubling per attempt, at most 30 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(7))).min(Duration::from_secs(30))
}

/// The `rel="next"` target of a response's `Link` headers (RFC 8288), resolved against the
/// page's URL; `Err` when it is not under the base URL the page came from.
fn next_link(response: &reqwest::Response, page: &Url) -> Option<Result<Url, String>> {
    let values: Vec<&str> = response
        .headers()
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let target = link_with_rel(&values.join(", "), "next")?;
    Some(
        page.join(&target)
            .map_err(|e| format!("its Link rel=\"next\" `{target}` is not a URL: {e}")),
    )
}

/// The target of the first link in a `Link` header value whose `rel` holds `rel`.
fn link_with_rel(header: &str, rel: &str) -> Option<String> {
    let mut rest = header;
    loop {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        // The link's parameters run to the next `<` (a `<` cannot appear unquoted in them).
        let after = &rest[close + 1..];
        let end = after.find('<').unwrap_or(after.len());
        let params = &after[..end];
        let has_rel = params.split(';').any(|p| {
            let Some((name, value)) = p.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_end_matches(',')
                    .trim_end()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case(rel))
        });
        if has_rel {
            return Some(target.to_owned());
        }
        rest = &after[end..];
    }
}

/// Reads `req` from `api` into `feed`, then says it is complete; a failure goes to `feed`.
pub(super) async fn read(api: Arc<Api>, req: ReadRequest, mut feed: Feed) {
    let result = read_all(&api, &req, &mut feed).await;
    feed.end(result).await;
}

async fn read_all(
    api: &Api,
    req: &ReadRequest,
    feed: &mut Feed,
) -> Result<(), Option<SourceError>> {
    let Read::Http(request) = &req.query else {
        return Err(Some(SourceError::WrongClass {
            source_name: api.name().clone(),
            is: "an HTTP API",
            why: "the side gives it a SQL query; write `request:` for an HTTP source".into(),
        }));
    };
    let columns: Vec<String> = request
        .columns
        .iter()
        .map(|f| f.column.to_string())
        .collect();
    let mut rows = Rows::start(api.name(), columns, req, feed).await?;
    let lookup = request
        .lookup
        .as_ref()
        .filter(|_| !req.filter.is_empty())
        .and_then(|l| Some((l, l.path_for(&req.filter)?)));
    if let Some((lookup, path)) = lookup {
        // One key, fetched alone: the re-check before an action reads one item, not the API.
        let url = Url::parse(&api.cfg.base_url)
            .and_then(|b| b.join(&path))
            .map_err(|e| api.failed_path(&path, format!("not a URL: {e}")))?;
        if !url.as_str().starts_with(&api.cfg.base_url) {
            // A key value of `..` would climb out of the API.
            return Err(Some(api.failed(
                &url,
                format!(
                    "the lookup leaves the source's base_url {}",
                    api.cfg.base_url
                ),
            )));
        }
        let items = match api.page(&url, true).await? {
            None => Vec::new(),
            Some((body, _)) => match lookup.item.find(&body) {
                Some(Json::Array(items)) => items.clone(),
                Some(Json::Null) => Vec::new(),
                Some(item) => vec![item.clone()],
                None => {
                    return Err(Some(api.failed(
                        &url,
                        format!(
                            "the response has no `{}`{}; set the lookup's `item:` to where the item is",
                            lookup.item,
                            keys_of(&body)
                        ),
                    )));
                }
            },
        };
        for (i, item) in items.iter().enumerate() {
            let row = to_row(&request.columns, item)
                .map_err(|why| api.failed(&url, format!("item {}: {why}", i + 1)))?;
            rows.take(row).await?;
        }
    } else {
        // The window's edges, for parameters that take them: from the read's start (its
        // time column at or after an instant) to now. A read without a start (the re-check of
        // one key of a windowed reconcile) asks for everything since 1970.
        let since = req
            .changed_since
            .as_ref()
            .map_or(DateTime::UNIX_EPOCH, |c| c.since);
        let window = Some((since, Utc::now()));
        let mut pages = Pages::new(api, request, window)?;
        while let Some(items) = pages.next().await? {
            for (i, item) in items.into_iter().enumerate() {
                let row = to_row(&request.columns, &item).map_err(|why| {
                    api.failed(&pages.current, format!("item {} of the page: {why}", i + 1))
                })?;
                rows.take(row).await?;
            }
        }
    }
    rows.finish().await
}

/// The pages of one request, in order.
struct Pages<'a> {
    api: &'a Api,
    request: &'a HttpRequest,
    /// The page being read (for errors).
    current: Url,
    next: Option<Url>,
    /// Pages read, and items seen (offset paging counts from it).
    pages: u64,
    /// Items received so far (where offset paging goes on from).
    items_seen: u64,
    /// Every page's URL and cursor so far: paging that comes back to one would never end.
    urls: std::collections::HashSet<String>,
    cursors: std::collections::HashSet<String>,
    /// The previous page's items, hashed: an API that ignores the paging parameter answers
    /// the same page again and again.
    last_items: Option<u64>,
    /// Empty pages in a row (each with a new cursor, or paging would have ended).
    empty_pages: u32,
}

/// Empty pages in a row, each with a new cursor, before a read gives up: paging on past them
/// would never end.
const MAX_EMPTY_PAGES: u32 = 100;

impl<'a> Pages<'a> {
    fn new(
        api: &'a Api,
        request: &'a HttpRequest,
        window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> Result<Self, SourceError> {
        let mut url = Url::parse(&api.cfg.base_url)
            .and_then(|b| b.join(&request.path))
            .map_err(|e| SourceError::Api {
                source_name: api.name().clone(),
                request: format!("GET {}{}", api.cfg.base_url, request.path),
                message: format!("not a URL: {e}"),
            })?;
        {
            let mut query = url.query_pairs_mut();
            for (k, v) in &request.params {
                let Some(value) = v.render(window) else {
                    return Err(SourceError::Api {
                        source_name: api.name().clone(),
                        request: format!("GET {}{}", api.cfg.base_url, request.path),
                        message: format!(
                            "params.{k} `{v}` takes the run's window, and this read has none"
                        ),
                    });
                };
                query.append_pair(k, &value);
            }
            match &request.paging {
                Paging::Offset {
                    param,
                    size,
                    size_param,
                } => {
                    query.append_pair(param, "0");
                    if let Some(sp) = size_param {
                        query.append_pair(sp, &size.to_string());
                    }
                }
                Paging::Number { param, first } => {
                    query.append_pair(param, &first.to_string());
                }
                _ => {}
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        Ok(Self {
            api,
            request,
            current: url.clone(),
            next: Some(url),
            pages: 0,
            items_seen: 0,
            urls: std::collections::HashSet::new(),
            cursors: std::collections::HashSet::new(),
            last_items: None,
            empty_pages: 0,
        })
    }

    /// The next page's items; `None` after the last page.
    async fn next(&mut self) -> Result<Option<Vec<Json>>, SourceError> {
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        if !url.as_str().starts_with(&self.api.cfg.base_url) {
            return Err(self.api.failed(
                &url,
                format!(
                    "the next page is outside the source's base_url {}",
                    self.api.cfg.base_url
                ),
            ));
        }
        if !self.urls.insert(url.to_string()) {
            return Err(self.api.failed(
                &url,
                "paging came back to a page it had read; it would never end".into(),
            ));
        }
        self.current = url.clone();
        let (mut body, link) = self.api.page(&url, false).await?.ok_or_else(|| {
            self.api
                .failed(&url, "the API answered 404 Not Found".into())
        })?;
        self.pages += 1;
        let items = match self.request.items.find_mut(&mut body).map(std::mem::take) {
            Some(Json::Array(items)) => items,
            Some(other) => {
                return Err(self.api.failed(
                    &url,
                    format!(
                        "`{}` holds {}, not a list of items",
                        self.request.items,
                        kind_of(&other)
                    ),
                ));
            }
            None => {
                return Err(self.api.failed(
                    &url,
                    format!(
                        "the response has no `{}`{}; set `items:` to where the list is",
                        self.request.items,
                        keys_of(&body)
                    ),
                ));
            }
        };
        self.items_seen += items.len() as u64;
        if !items.is_empty() {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            serde_json::to_string(&items)
                .unwrap_or_default()
                .hash(&mut h);
            let digest = h.finish();
            if self.last_items == Some(digest) {
                return Err(self.api.failed(
                    &url,
                    "the API answered the same items as for the page before; does it read the paging parameter? Paging would never end".into(),
                ));
            }
            self.last_items = Some(digest);
        }
        let with = |param: &str, value: &str| {
            let mut next = url.clone();
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != param)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            next.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair(param, value);
            next
        };
        self.next = match &self.request.paging {
            Paging::None => None,
            Paging::Link => match link {
                Some(next) if next == url => {
                    return Err(self.api.failed(
                        &url,
                        "its Link rel=\"next\" is the page itself; paging would never end".into(),
                    ));
                }
                next => next,
            },
            Paging::Cursor {
                param,
                from,
                has_more,
            } => {
                let more = match has_more {
                    Some(path) => match path.find(&body) {
                        Some(Json::Bool(b)) => *b,
                        other => {
                            return Err(self.api.failed(
                                &url,
                                format!(
                                    "`{path}` (has_more) should be true or false, and is {}",
                                    other.map_or("absent".to_owned(), kind_of)
                                ),
                            ));
                        }
                    },
                    // Without `has_more`, a cursor in the response says there is more (an
                    // API may send an empty page with a cursor: filtered lists do); the last
                    // item's, that the page was not empty.
                    None => match from {
                        CursorFrom::LastItem(_) => !items.is_empty(),
                        CursorFrom::Response(_) => true,
                    },
                };
                let cursor = match from {
                    CursorFrom::LastItem(path) => items
                        .last()
                        .and_then(|i| path.find(i))
                        .and_then(scalar_text),
                    CursorFrom::Response(path) => path.find(&body).and_then(scalar_text),
                }
                // An empty cursor is none.
                .filter(|c| !c.is_empty());
                self.empty_pages = if items.is_empty() {
                    self.empty_pages + 1
                } else {
                    0
                };
                match cursor {
                    // An empty page giving back a cursor already asked with (a tail cursor
                    // on its last page) has nothing after it.
                    Some(c)
                        if items.is_empty() && has_more.is_none() && self.cursors.contains(&c) =>
                    {
                        None
                    }
                    Some(_) if more && self.empty_pages >= MAX_EMPTY_PAGES => {
                        return Err(self.api.failed(
                            &url,
                            format!(
                                "{MAX_EMPTY_PAGES} empty pages in a row, each with a new cursor; paging would never end"
                            ),
                        ));
                    }
                    Some(c) if more => {
                        if !self.cursors.insert(c.clone()) {
                            return Err(self.api.failed(
                                &url,
                                format!(
                                    "the API gave the cursor `{c}` a second time; paging would never end"
                                ),
                            ));
                        }
                        Some(with(param, &c))
                    }
                    // No cursor where there should be one: the rest of the list cannot be asked
                    // for, and ending here would read it as absent.
                    None if more
                        && (has_more.is_some() || matches!(from, CursorFrom::LastItem(_))) =>
                    {
                        let place = match from {
                            CursorFrom::LastItem(p) => format!("`{p}` of the page's last item"),
                            CursorFrom::Response(p) => format!("`{p}` of the response"),
                        };
                        return Err(self.api.failed(
                            &url,
                            format!("more items follow, and there is no cursor at {place} (absent, empty, or not text or a number); check `page.cursor`"),
                        ));
                    }
                    _ => None,
                }
            }
            // Past what was received, until a page is empty: an API that caps its pages below
            // `size` is still read to the end.
            Paging::Offset { param, .. } => {
                (!items.is_empty()).then(|| with(param, &self.items_seen.to_string()))
            }
            Paging::Number { param, first } => match first.checked_add(self.pages) {
                Some(n) if !items.is_empty() => Some(with(param, &n.to_string())),
                Some(_) => None,
                None => {
                    return Err(self.api.failed(&url, "the page number overflows".into()));
                }
            },
        };
        Ok(Some(items))
    }
}

fn scalar_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn kind_of(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) => format!("the number {n}"),
        Json::String(s) => format!("the text {:?}", s.chars().take(60).collect::<String>()),
        Json::Array(_) => "a list".into(),
        Json::Object(_) => "an object".into(),
    }
}

fn keys_of(body: &Json) -> String {
    match body {
        Json::Object(map) => {
            let keys: Vec<&str> = map.keys().map(String::as_str).take(12).collect();
            format!(" (its fields: {})", keys.join(", "))
        }
        other => format!(" (it is {})", kind_of(other)),
    }
}

/// An item's columns.
fn to_row(fields: &[Field], item: &Json) -> Result<Row, String> {
    fields
        .iter()
        .map(|f| {
            let FieldFrom::Json(path) = &f.from else {
                return Err(format!(
                    "column `{}` comes from the {}, which an API item has not",
                    f.column, f.from
                ));
            };
            let raw = path.find(item).unwrap_or(&JSON_NULL);
            value(f.kind, raw)
                .map_err(|why| format!("column `{}` (`{path}`): {} {why}", f.column, kind_of(raw)))
        })
        .collect()
}

/// What an absent JSON field reads as, borrowed where a column's raw value is looked up.
pub(super) static JSON_NULL: Json = Json::Null;

/// A message's or event's column from its raw JSON value, or why it cannot be one (naming
/// the column, where it comes from and what it held).
pub(super) fn field_value(f: &crate::domain::Field, raw: &Json) -> Result<Value, String> {
    value(f.kind, raw)
        .map_err(|why| format!("column `{}` ({}): {} {why}", f.column, f.from, kind_of(raw)))
}

/// A JSON value read as `kind`.
pub(super) fn value(kind: FieldKind, raw: &Json) -> Result<Value, &'static str> {
    use FieldKind as K;
    // The decimal a JSON number stands for: an integer exactly, one with a fraction or past
    // 64 bits (which serde_json reads as a double) as that double's (`float_as_decimal`, as
    // a float compares).
    let number = |n: &serde_json::Number| -> Result<Decimal, &'static str> {
        match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Ok(i.into()),
            (None, Some(u)) => Ok(u.into()),
            (None, None) => n
                .as_f64()
                .and_then(crate::domain::float_as_decimal)
                .ok_or("is not a decimal trueup can hold (28 digits)"),
        }
    };
    Ok(match (kind, raw) {
        (_, Json::Null) => Value::Null,
        (K::Json, v) => Value::Json(Box::new(v.clone())),
        (K::Auto, Json::Bool(b)) | (K::Bool, Json::Bool(b)) => Value::Bool(*b),
        (K::Auto, Json::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Decimal(number(n)?),
        },
        (K::Auto, Json::String(s)) | (K::Text, Json::String(s)) => Value::Text(s.as_str().into()),
        (K::Auto, v) => Value::Json(Box::new(v.clone())),
        (K::Int, Json::Number(n)) => Value::Int(
            n.as_i64()
                .ok_or("is not a whole number that fits 64 bits")?,
        ),
        (K::Int, Json::String(s)) => {
            Value::Int(s.trim().parse().map_err(|_| "is not a whole number")?)
        }
        (K::Decimal, Json::Number(n)) => Value::Decimal(number(n)?),
        (K::Decimal, Json::String(s)) => Value::Decimal(
            s.trim()
                .parse::<Decimal>()
                .or_else(|_| Decimal::from_scientific(s.trim()))
                .map_err(|_| "is not a decimal number")?,
        ),
        (K::Float, Json::Number(n)) => Value::Float(n.as_f64().ok_or("is not a number")?),
        (K::Float, Json::String(s)) => Value::Float(
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or("is not a finite number")?,
        ),
        (K::Text, Json::Number(n)) => Value::Text(compact_str::format_compact!("{n}")),
        (K::Timestamp, Json::String(s)) => Value::Timestamp(
            DateTime::parse_from_rfc3339(s.trim())
                .map_err(|_| "is not an RFC 3339 timestamp (like 2026-12-04T10:00:00Z)")?
                .with_timezone(&Utc),
        ),
        (K::Timestamp, Json::Number(n)) => {
            let secs = n.as_f64().ok_or("is not a number of seconds")?;
            let micros = (secs * 1e6).round();
            if !micros.is_finite() || micros.abs() > 9.0e15 {
                return Err("is not a number of seconds since 1970 trueup can hold");
            }
            Value::Timestamp(
                DateTime::from_timestamp_micros(micros as i64)
                    .ok_or("is out of range for a timestamp")?,
            )
        }
        (K::Date, Json::String(s)) => Value::Date(
            NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .map_err(|_| "is not a date (like 2026-12-04)")?,
        ),
        (K::Int | K::Decimal | K::Float, _) => return Err("is not a number"),
        (K::Text, _) => return Err("is not text"),
        (K::Bool, _) => return Err("is not true or false"),
        (K::Timestamp, _) => return Err("is not a timestamp"),
        (K::Date, _) => return Err("is not a date"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_next_link_is_found_among_several_links_and_rels() {
        let h = r#"<https://api.test/v1/x?page=1>; rel="prev first", <https://api.test/v1/x?page=3&a=b,c>; rel="next""#;
        assert_eq!(
            link_with_rel(h, "next").as_deref(),
            Some("https://api.test/v1/x?page=3&a=b,c")
        );
        assert_eq!(
            link_with_rel(h, "first").as_deref(),
            Some("https://api.test/v1/x?page=1")
        );
        assert_eq!(link_with_rel(h, "last"), None);
        assert_eq!(
            link_with_rel("</x?p=2>;rel=next", "next").as_deref(),
            Some("/x?p=2")
        );
        assert_eq!(link_with_rel("", "next"), None);
    }

    #[test]
    fn json_values_become_typed_columns_or_a_reason_why_not() {
        assert_eq!(value(FieldKind::Auto, &json!(7)), Ok(Value::Int(7)));
        assert_eq!(
            value(FieldKind::Auto, &json!(12.5)),
            Ok(Value::Decimal("12.5".parse().unwrap()))
        );
        assert!(
            matches!(value(FieldKind::Decimal, &json!("12.50")), Ok(Value::Decimal(d)) if d.to_string() == "12.50")
        );
        // A number past 64 bits or with a fraction is serde_json's double, as a float compares:
        // a whole one exactly (2^55), else its shortest decimal.
        let decimal = |j: serde_json::Value| match value(FieldKind::Decimal, &j) {
            Ok(Value::Decimal(d)) => d.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            decimal(json!(36_028_797_018_963_968.0)),
            "36028797018963968"
        );
        assert_eq!(
            decimal(json!(18_446_744_073_709_551_615_u64)),
            "18446744073709551615"
        );
        assert_eq!(decimal(json!(0.1)), "0.1");
        assert_eq!(value(FieldKind::Int, &json!("42")), Ok(Value::Int(42)));
        assert_eq!(
            value(FieldKind::Text, &json!(42)),
            Ok(Value::Text("42".into()))
        );
        assert_eq!(value(FieldKind::Int, &json!(null)), Ok(Value::Null));
        assert_eq!(
            value(FieldKind::Timestamp, &json!("2026-12-04T10:00:00+01:00")),
            Ok(Value::Timestamp("2026-12-04T09:00:00Z".parse().unwrap()))
        );
        assert_eq!(
            value(FieldKind::Timestamp, &json!(1_764_842_400.5)),
            Ok(Value::Timestamp("2025-12-04T10:00:00.5Z".parse().unwrap()))
        );
        assert!(value(FieldKind::Int, &json!("x1")).is_err());
        assert!(value(FieldKind::Int, &json!(1.5)).is_err());
        assert!(value(FieldKind::Bool, &json!("yes")).is_err());
        assert!(value(FieldKind::Date, &json!("04/12/2026")).is_err());
    }

    #[test]
    fn an_item_names_the_column_and_path_that_cannot_be_read() {
        let fields = vec![Field {
            column: crate::domain::ColumnName::parse("amount").unwrap(),
            from: FieldFrom::Json(crate::domain::JsonPath::parse("money.amount").unwrap()),
            kind: FieldKind::Decimal,
        }];
        let err = to_row(&fields, &json!({"money": {"amount": "lots"}})).unwrap_err();
        assert_eq!(
            err,
            "column `amount` (`money.amount`): the text \"lots\" is not a decimal number"
        );
        assert_eq!(to_row(&fields, &json!({})).unwrap(), vec![Value::Null]);
    }

    #[test]
    fn waits_follow_retry_after_in_seconds_or_as_a_date_and_back_off_otherwise() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(crate::net::retry_after(&h), None);
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(
            crate::net::retry_after(&h),
            Some(Ok(Duration::from_secs(3)))
        );
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(crate::net::retry_after(&h), Some(Ok(Duration::ZERO)));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(crate::net::retry_after(&h), Some(Err(())));
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(20), Duration::from_secs(30));
    }
}
