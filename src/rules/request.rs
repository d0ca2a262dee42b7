//! `request:` — a side read from an HTTP API — into a [`HttpRequest`], every mistake located.

use serde_saphyr::Spanned;

use super::Ctx;

use super::raw::{RawField, RawLookup, RawPage, RawRequest, RawStream};
use crate::domain::{
    ColumnName, CursorFrom, Field, FieldFrom, FieldKind, HttpRequest, JsonPath, Lookup,
    MessageMeta, Paging, Param, Scope, StreamRead, Template,
};

/// What carries a side's values, and so where a column may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Carrier {
    /// A JSON item of an API: paths only.
    ApiItem,
    /// A NATS message: payload paths, headers, time, sequence and subject.
    NatsMessage,
    /// A Redis stream entry: its fields (as paths), time and id.
    RedisEntry,
    /// An event of one of trueup's logs: payload paths, headers, its id, time and sequence.
    LogEvent,
}

/// What a side's request may refer to.
#[derive(Debug, Clone, Copy)]
pub(super) struct SideScope<'a> {
    /// The invariant's key columns, when they could be read (a lookup's placeholders must
    /// name them).
    pub key: Option<&'a [ColumnName]>,
    /// Whether the reconcile has a `window` (whose edges params may take).
    pub window: bool,
}

impl Ctx<'_> {
    pub(super) fn request(
        &mut self,
        field: &str,
        raw: &Spanned<RawRequest>,
        scope: SideScope<'_>,
    ) -> Option<HttpRequest> {
        let r = &raw.value;
        let mut ok = true;
        let path = match &r.path {
            None => {
                self.error(
                    raw.referenced,
                    format!("{field}.request needs `path:`, the address under the source's base_url (like `charges`)"),
                );
                None
            }
            Some(p) => {
                let path = p.value.trim().trim_start_matches('/').to_owned();
                if path.contains('?') || path.contains('#') || path.split('/').any(|s| s == "..") {
                    self.error(
                        p.referenced,
                        format!(
                            "{field}.request.path `{}` must be a plain path: give query parameters under `params:`, and no `..`",
                            p.value
                        ),
                    );
                    None
                } else if path.contains("{{") {
                    self.error(
                        p.referenced,
                        format!(
                            "{field}.request.path `{}` has a placeholder, which a read has no value for (placeholders belong to a lookup of one key)",
                            p.value
                        ),
                    );
                    None
                } else {
                    Some(path)
                }
            }
        };
        let mut params = Vec::new();
        for (k, v) in &r.params {
            let here = format!("{field}.request.params.{k}");
            match Param::parse(&v.value.0) {
                Ok(p) if p.uses_window() && !scope.window => {
                    self.error(
                        v.referenced,
                        format!(
                            "{here} `{}` takes the run's window, and this side has none; give the reconcile a `window:` (like `window: 7d`, with a `time_column`)",
                            v.value.0
                        ),
                    );
                    ok = false;
                }
                Ok(p) => params.push((k.clone(), p)),
                Err(e) => {
                    self.error(v.referenced, format!("{here}: {e}"));
                    ok = false;
                }
            }
        }
        let mut json_path =
            |this: &mut Self, what: &str, s: &Spanned<String>| -> Option<JsonPath> {
                JsonPath::parse(&s.value)
                    .map_err(|e| this.error(s.referenced, format!("{field}.request.{what} {e}")))
                    .ok()
            };
        let items = match &r.items {
            Some(s) => json_path(self, "items", s),
            None => Some(JsonPath::default()),
        };
        let paging = match &r.page {
            None => Some(Paging::None),
            Some(p) => self.paging(field, p, &mut json_path),
        };
        let columns = self.fields(
            &format!("{field}.request"),
            r.columns.as_ref(),
            raw.referenced,
            Carrier::ApiItem,
        );
        let lookup = match &r.lookup {
            None => Some(None),
            Some(l) => self.lookup(field, l, scope.key).map(Some),
        };
        let (path, items, paging, columns, lookup) = (path?, items?, paging?, columns?, lookup?);
        ok.then_some(HttpRequest {
            path,
            params,
            items,
            paging,
            columns,
            lookup,
        })
    }

    /// `columns:` of a request (`message: false`: from the JSON item only) or of a stream
    /// side (also a message's headers and metadata), `here` naming the block.
    pub(super) fn fields(
        &mut self,
        here: &str,
        raw: Option<&Spanned<super::raw::RawColumns>>,
        block: serde_saphyr::Location,
        carrier: Carrier,
    ) -> Option<Vec<Field>> {
        let c = match raw {
            None => {
                self.error(
                    block,
                    format!(
                        "{here} needs `columns:`, each column and where it is (like `id: {{path: id, type: int}}`)"
                    ),
                );
                return None;
            }
            Some(c) if c.value.is_empty() => {
                self.error(c.referenced, format!("{here}.columns is empty"));
                return None;
            }
            Some(c) => c,
        };
        let mut ok = true;
        let mut columns = Vec::new();
        for (name, f) in &c.value {
            let at = f.referenced;
            let here = format!("{here}.columns.{name}");
            let Ok(column) =
                ColumnName::parse(name).map_err(|e| self.error(at, format!("{here}: {e}")))
            else {
                ok = false;
                continue;
            };
            let (path, header, meta, kind) = match &f.value {
                RawField::Path(p) => (Some(p.as_str()), None, None, None),
                RawField::Typed(t) => (
                    t.path.as_deref(),
                    t.header.as_deref(),
                    t.meta.as_deref(),
                    t.kind.as_deref(),
                ),
            };
            let kind = match kind {
                None => Some(FieldKind::Auto),
                Some(k) => FieldKind::parse(k).or_else(|| {
                    self.error(
                        at,
                        format!("{here}.type `{k}` is unknown; use {}", FieldKind::NAMES),
                    );
                    None
                }),
            };
            let from = match (path, header, meta) {
                (_, Some(_), _) | (_, _, Some(_)) if carrier == Carrier::ApiItem => {
                    self.error(
                        at,
                        format!("{here}: an API item has no headers or metadata; give `path:`, where the value is in the item"),
                    );
                    None
                }
                (_, Some(_), _) if carrier == Carrier::RedisEntry => {
                    self.error(
                        at,
                        format!("{here}: a Redis stream entry has no headers; give `path:` (a field of the entry) or `meta:`"),
                    );
                    None
                }
                (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                    self.error(
                        at,
                        format!("{here} takes one of `path:`, `header:` or `meta:`"),
                    );
                    None
                }
                (_, Some(h), _) => Some(FieldFrom::Header(h.to_owned())),
                (_, _, Some(m)) => match (MessageMeta::parse(m), carrier) {
                    (Some(MessageMeta::Subject | MessageMeta::Sequence), Carrier::RedisEntry) => {
                        self.error(
                            at,
                            format!("{here}.meta `{m}` is a NATS message's; a Redis entry has time and id"),
                        );
                        None
                    }
                    (Some(MessageMeta::Subject), Carrier::LogEvent) => {
                        self.error(
                            at,
                            format!("{here}.meta `subject` is a NATS message's; a logged event has id, time and sequence (its subject, when it came from NATS, is the header `Nats-Subject`)"),
                        );
                        None
                    }
                    (Some(MessageMeta::Id), Carrier::NatsMessage) => {
                        self.error(
                            at,
                            format!("{here}.meta `id` is a Redis entry's; a NATS message has time, sequence and subject"),
                        );
                        None
                    }
                    (Some(meta), _) => Some(FieldFrom::Meta(meta)),
                    (None, _) => {
                        self.error(
                            at,
                            format!("{here}.meta `{m}` is unknown; use {}", MessageMeta::NAMES),
                        );
                        None
                    }
                },
                (path, None, None) => JsonPath::parse(path.unwrap_or(name))
                    .map(FieldFrom::Json)
                    .map_err(|e| self.error(at, format!("{here}.path {e}")))
                    .ok(),
            };
            match (from, kind) {
                (Some(from), Some(kind)) => columns.push(Field { column, from, kind }),
                _ => ok = false,
            }
        }
        ok.then_some(columns)
    }

    /// `stream:` — the messages of a JetStream stream, or (`redis`) a Redis stream's entries.
    pub(super) fn stream(
        &mut self,
        field: &str,
        raw: &Spanned<RawStream>,
        redis: bool,
        key: Option<&[ColumnName]>,
    ) -> Option<StreamRead> {
        let st = &raw.value;
        let here = format!("{field}.stream");
        if redis {
            return self.redis_stream(&here, raw);
        }
        if let Some(k) = &st.key {
            self.error(
                k.referenced,
                format!("{here}.key is a Redis stream's; a NATS stream has `name:` and `subject:`"),
            );
            return None;
        }
        // Stream names: no spaces, dots, wildcards or path separators (the server's rule).
        let name = match &st.name {
            None => {
                self.error(
                    raw.referenced,
                    format!("{here} needs `name:`, the JetStream stream (like ORDERS)"),
                );
                None
            }
            Some(n) => {
                let v = n.value.trim();
                if v.is_empty() || v.chars().any(|c| c.is_whitespace() || ".*>/\\".contains(c)) {
                    self.error(
                        n.referenced,
                        format!("{here}.name `{}` is not a stream name (no spaces, `.`, `*`, `>`, `/` or `\\`)", n.value),
                    );
                    None
                } else {
                    Some(v.to_owned())
                }
            }
        };
        let subject = match &st.subject {
            None => Some(None),
            Some(s) => {
                let v = s.value.trim();
                let tokens_ok = !v.is_empty()
                    && v.split('.').enumerate().all(|(i, t)| {
                        !t.is_empty()
                            && !t.contains(char::is_whitespace)
                            && (t == "*" || t == ">" || !t.contains(['*', '>']))
                            && (t != ">" || i == v.split('.').count() - 1)
                    });
                if tokens_ok {
                    Some(Some(v.to_owned()))
                } else {
                    self.error(
                        s.referenced,
                        format!("{here}.subject `{}` is not a subject filter (tokens joined by `.`, `*` for one token, `>` for the rest at the end)", s.value),
                    );
                    None
                }
            }
        };
        let columns = self.fields(
            &here,
            st.columns.as_ref(),
            raw.referenced,
            Carrier::NatsMessage,
        );
        let lookup = match &st.lookup {
            None => Some(None),
            Some(l) => self.stream_lookup(&here, l, key).map(Some),
        };
        Some(StreamRead {
            stream: name?,
            subject: subject?,
            columns: columns?,
            lookup: lookup?,
        })
    }

    /// `stream:` on an event log (`source: log:NAME`): only its columns.
    pub(super) fn log_stream(
        &mut self,
        field: &str,
        raw: &Spanned<RawStream>,
        source: &crate::domain::SourceName,
    ) -> Option<StreamRead> {
        let st = &raw.value;
        let here = format!("{field}.stream");
        let given = [
            ("name", st.name.as_ref()),
            ("subject", st.subject.as_ref()),
            ("key", st.key.as_ref()),
        ];
        if let Some((what, at)) = given
            .iter()
            .find_map(|(w, v)| Some((w, v.as_ref()?.referenced)))
        {
            self.error(
                at,
                format!("{here}.{what}: an event log is named by its source (`{source}`); give only `columns:`"),
            );
            return None;
        }
        if let Some(l) = &st.lookup {
            self.error(
                l.referenced,
                format!("{here}.lookup: an event log is read by trueup from its own store; leave `lookup` out"),
            );
            return None;
        }
        let columns = self.fields(
            &here,
            st.columns.as_ref(),
            raw.referenced,
            Carrier::LogEvent,
        )?;
        Some(StreamRead {
            stream: source.log()?.to_owned(),
            subject: None,
            columns,
            lookup: None,
        })
    }

    /// `stream.lookup: {subject}` — one key's last message on its own subject.
    fn stream_lookup(
        &mut self,
        here: &str,
        raw: &Spanned<RawLookup>,
        key: Option<&[ColumnName]>,
    ) -> Option<Template> {
        let here = format!("{here}.lookup");
        if let Some(p) = raw.value.path.as_ref().or(raw.value.item.as_ref()) {
            self.error(
                p.referenced,
                format!("{here}: `path` and `item` are an API lookup's; a NATS stream's takes `subject:`"),
            );
            return None;
        }
        let Some(s) = &raw.value.subject else {
            self.error(
                raw.referenced,
                format!("{here} needs `subject:`, one key's subject with its key columns as placeholders (like `orders.{{{{key.order_id}}}}`)"),
            );
            return None;
        };
        let template = Template::parse(s.value.trim())
            .map_err(|e| self.error(s.referenced, format!("{here}.subject: {e}")))
            .ok()?;
        let mut ok = template.placeholders().next().is_some();
        if !ok {
            self.error(
                s.referenced,
                format!("{here}.subject `{}` has no `{{{{key.<column>}}}}`: every key would read the same message", s.value),
            );
        }
        for placeholder in template.placeholders() {
            let known = key.is_none_or(|k| k.iter().any(|c| c.as_str() == placeholder.field));
            if placeholder.scope != Scope::Key || !known {
                self.error(
                    s.referenced,
                    format!("{here}.subject: {placeholder} is not a key column; a lookup reads one key, so its subject takes `{{{{key.<column>}}}}` only"),
                );
                ok = false;
            }
        }
        ok.then_some(template)
    }

    fn redis_stream(&mut self, here: &str, raw: &Spanned<RawStream>) -> Option<StreamRead> {
        let st = &raw.value;
        if let Some(n) = st.name.as_ref().or(st.subject.as_ref()) {
            self.error(
                n.referenced,
                format!("{here}: a Redis stream is named by its `key:`; `name` and `subject` are a NATS stream's"),
            );
            return None;
        }
        let key = match &st.key {
            Some(k) if !k.value.trim().is_empty() => Some(k.value.trim().to_owned()),
            _ => {
                self.error(
                    raw.referenced,
                    format!(
                        "{here} needs `key:`, the Redis key of the stream (like orders:events)"
                    ),
                );
                None
            }
        };
        if let Some(l) = &st.lookup {
            self.error(
                l.referenced,
                format!("{here}.lookup: a Redis stream has no index by key; leave `lookup` out (the re-check before an action reads the stream and keeps the key's entries)"),
            );
            return None;
        }
        let columns = self.fields(
            here,
            st.columns.as_ref(),
            raw.referenced,
            Carrier::RedisEntry,
        );
        Some(StreamRead {
            stream: key?,
            subject: None,
            columns: columns?,
            lookup: None,
        })
    }

    fn lookup(
        &mut self,
        field: &str,
        raw: &Spanned<RawLookup>,
        key: Option<&[ColumnName]>,
    ) -> Option<Lookup> {
        let here = format!("{field}.request.lookup");
        if let Some(s) = &raw.value.subject {
            self.error(
                s.referenced,
                format!(
                    "{here}.subject is a NATS stream's lookup; an API's takes `path:` (and `item:`)"
                ),
            );
            return None;
        }
        let Some(p) = &raw.value.path else {
            self.error(
                raw.referenced,
                format!("{here} needs `path:`, one key's address with its key columns as placeholders (like `charges/{{{{key.charge_id}}}}`)"),
            );
            return None;
        };
        let template = match Template::parse(p.value.trim()) {
            Ok(t) => t,
            Err(e) => {
                self.error(p.referenced, format!("{here}.path: {e}"));
                return None;
            }
        };
        let mut ok = true;
        for placeholder in template.placeholders() {
            let known = key.is_none_or(|k| k.iter().any(|c| c.as_str() == placeholder.field));
            if placeholder.scope != Scope::Key || !known {
                let columns = key.map_or(String::new(), |k| {
                    let names: Vec<&str> = k.iter().map(ColumnName::as_str).collect();
                    format!(" (the key is: {})", names.join(", "))
                });
                self.error(
                    p.referenced,
                    format!("{here}.path: {placeholder} is not a key column; a lookup fetches one key, so its path takes `{{{{key.<column>}}}}` only{columns}"),
                );
                ok = false;
            }
        }
        if template.placeholders().next().is_none() {
            self.error(
                p.referenced,
                format!("{here}.path `{}` has no `{{{{key.<column>}}}}`: every key would fetch the same item", p.value),
            );
            ok = false;
        }
        let item = match &raw.value.item {
            Some(i) => JsonPath::parse(&i.value)
                .map_err(|e| self.error(i.referenced, format!("{here}.item {e}")))
                .ok(),
            None => Some(JsonPath::default()),
        };
        ok.then_some(Lookup {
            path: template,
            item: item?,
        })
    }

    fn paging(
        &mut self,
        field: &str,
        raw: &Spanned<RawPage>,
        json_path: &mut impl FnMut(&mut Self, &str, &Spanned<String>) -> Option<JsonPath>,
    ) -> Option<Paging> {
        let p = &raw.value;
        let given = [
            p.cursor.is_some(),
            p.link.is_some(),
            p.offset.is_some(),
            p.number.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            self.error(
                raw.referenced,
                format!(
                    "{field}.request.page takes one style: `cursor`, `link`, `offset` or `number`"
                ),
            );
            return None;
        }
        let param = |this: &mut Self, style: &str, at, v: &Option<Spanned<String>>| match v {
            Some(s) if !s.value.trim().is_empty() => Some(s.value.trim().to_owned()),
            _ => {
                this.error(
                    at,
                    format!("{field}.request.page.{style} needs `param:`, the query parameter that asks for the next page"),
                );
                None
            }
        };
        if let Some(c) = &p.cursor {
            let param = param(self, "cursor", c.referenced, &c.value.param);
            let from = match (&c.value.from_item, &c.value.from_response) {
                (Some(i), None) => {
                    json_path(self, "page.cursor.from_item", i).map(CursorFrom::LastItem)
                }
                (None, Some(r)) => {
                    json_path(self, "page.cursor.from_response", r).map(CursorFrom::Response)
                }
                _ => {
                    self.error(
                        c.referenced,
                        format!(
                            "{field}.request.page.cursor takes the cursor from one place: `from_item:` (a field of the page's last item, like `id`) or `from_response:` (like `meta.next_cursor`)"
                        ),
                    );
                    None
                }
            };
            let has_more = match &c.value.has_more {
                Some(h) => Some(json_path(self, "page.cursor.has_more", h)?),
                None => None,
            };
            return Some(Paging::Cursor {
                param: param?,
                from: from?,
                has_more,
            });
        }
        if let Some(l) = &p.link {
            if l.value.trim() != "next" {
                self.error(
                    l.referenced,
                    format!("{field}.request.page.link `{}`: the only link followed is `next` (`Link: <…>; rel=\"next\"`)", l.value),
                );
                return None;
            }
            return Some(Paging::Link);
        }
        if let Some(o) = &p.offset {
            let param = param(self, "offset", o.referenced, &o.value.param);
            let size = match &o.value.size {
                Some(s) if s.value > 0 => Some(s.value),
                _ => {
                    self.error(
                        o.referenced,
                        format!("{field}.request.page.offset needs `size:` above 0, the items a page holds (a shorter page is the last)"),
                    );
                    None
                }
            };
            return Some(Paging::Offset {
                param: param?,
                size: size?,
                size_param: o
                    .value
                    .size_param
                    .as_ref()
                    .map(|s| s.value.trim().to_owned()),
            });
        }
        let n = p.number.as_ref()?;
        Some(Paging::Number {
            param: param(self, "number", n.referenced, &n.value.param)?,
            first: n.value.first.as_ref().map_or(1, |f| f.value),
        })
    }
}
