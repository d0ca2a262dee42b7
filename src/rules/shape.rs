//! The shape pass: reads the file as a located tree and reports every key that the format does
//! not know, with a suggestion. Serde stops at the first unknown field; this does not. The
//! format is described once, by the types of `raw.rs`: the keys allowed here are their fields
//! as serde names them; this file only says which keys hold nested maps to look into.

use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::raw;
use crate::diagnostic::Diagnostic;

enum Node {
    Map(Vec<(String, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    /// The text of a string scalar (other scalars carry nothing).
    Scalar(Option<String>),
}

struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(Key(k)) = m.next_key::<Key>()? {
                    out.push((k, m.next_value::<Spanned<Node>>()?));
                }
                Ok(Node::Map(out))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(n) = s.next_element::<Spanned<Node>>()? {
                    out.push(n);
                }
                Ok(Node::Seq(out))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar(None))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Scalar(Some(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar(None))
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Copy)]
enum Shape {
    File,
    Invariant,
    Check,
    Reconcile,
    Incremental,
    ChangeColumns,
    Side,
    Transitions,
    Alert,
    Compensate,
    Replay,
    Slo,
    Action,
    SqlAction,
    HttpAction,
    NatsAction,
    RedisAction,
    Request,
    Page,
    Cursor,
    Offset,
    PageNumber,
    /// `columns:` of a request: keyed by the user's column names.
    Columns,
    Field,
    Lookup,
    Stream,
    /// A map whose keys are the user's (the `allowed` state map).
    Free,
}

impl Shape {
    /// The keys a map of this shape may hold: the fields of the type the typed pass reads it
    /// into (`raw.rs`), as serde names them, so the two passes cannot disagree.
    fn fields(self) -> &'static [&'static str] {
        use serde_aux::serde_introspection::serde_introspect;
        match self {
            Shape::File => serde_introspect::<raw::RawFile>(),
            Shape::Invariant => serde_introspect::<raw::RawInvariant>(),
            Shape::Check => serde_introspect::<raw::RawCheck>(),
            Shape::Reconcile => serde_introspect::<raw::RawReconcile>(),
            Shape::Incremental => serde_introspect::<raw::RawIncremental>(),
            Shape::ChangeColumns => serde_introspect::<raw::RawChangeColumns>(),
            Shape::Side => serde_introspect::<raw::RawSide>(),
            Shape::Transitions => serde_introspect::<raw::RawTransitions>(),
            Shape::Alert => serde_introspect::<raw::RawAlert>(),
            // `compensate:` is keyed by violation kind.
            Shape::Compensate => serde_introspect::<crate::domain::ViolationKind>(),
            Shape::Replay => serde_introspect::<raw::RawReplay>(),
            Shape::Slo => serde_introspect::<raw::RawSlo>(),
            Shape::Action => serde_introspect::<raw::RawAction>(),
            Shape::SqlAction => serde_introspect::<raw::RawSql>(),
            Shape::HttpAction => serde_introspect::<raw::RawHttp>(),
            Shape::NatsAction => serde_introspect::<raw::RawNats>(),
            Shape::RedisAction => serde_introspect::<raw::RawRedis>(),
            Shape::Request => serde_introspect::<raw::RawRequest>(),
            Shape::Page => serde_introspect::<raw::RawPage>(),
            Shape::Cursor => serde_introspect::<raw::RawCursor>(),
            Shape::Offset => serde_introspect::<raw::RawOffset>(),
            Shape::PageNumber => serde_introspect::<raw::RawNumber>(),
            Shape::Field => serde_introspect::<raw::RawTypedField>(),
            Shape::Lookup => serde_introspect::<raw::RawLookup>(),
            Shape::Stream => serde_introspect::<raw::RawStream>(),
            Shape::Columns | Shape::Free => &[],
        }
    }

    /// The shape of the map or list under `key`, where it is one the walk looks into.
    fn child(self, key: &str) -> Option<Shape> {
        Some(match (self, key) {
            (Shape::File, "invariants") => Shape::Invariant,
            (Shape::Invariant, "alert") => Shape::Alert,
            (Shape::Invariant, "check") => Shape::Check,
            (Shape::Invariant, "reconcile") => Shape::Reconcile,
            (Shape::Invariant, "transitions") => Shape::Transitions,
            (Shape::Invariant, "compensate") => Shape::Compensate,
            (Shape::Invariant, "replay") => Shape::Replay,
            (Shape::Invariant, "slo") => Shape::Slo,
            (Shape::Invariant, "labels") => Shape::Free,
            (Shape::Reconcile, "left" | "right") => Shape::Side,
            (Shape::Reconcile, "incremental") => Shape::Incremental,
            (Shape::Incremental, "column") => Shape::ChangeColumns,
            (Shape::Transitions, "allowed") => Shape::Free,
            (Shape::Compensate, _) => Shape::Action,
            (Shape::Action | Shape::Replay, "sql") => Shape::SqlAction,
            (Shape::Action | Shape::Replay, "http") => Shape::HttpAction,
            (Shape::Replay, "processed") => Shape::Side,
            (Shape::Action | Shape::Replay, "nats") => Shape::NatsAction,
            (Shape::Action | Shape::Replay, "redis") => Shape::RedisAction,
            (Shape::HttpAction | Shape::NatsAction, "headers" | "body") => Shape::Free,
            (Shape::RedisAction, "fields") => Shape::Free,
            (Shape::Side | Shape::Check | Shape::Transitions, "request") => Shape::Request,
            (Shape::Request, "params") => Shape::Free,
            (Shape::Request, "page") => Shape::Page,
            (Shape::Request, "columns") => Shape::Columns,
            (Shape::Request, "lookup") => Shape::Lookup,
            (Shape::Side | Shape::Check | Shape::Transitions, "stream") => Shape::Stream,
            (Shape::Stream, "columns") => Shape::Columns,
            (Shape::Stream, "lookup") => Shape::Lookup,
            (Shape::Page, "cursor") => Shape::Cursor,
            (Shape::Page, "offset") => Shape::Offset,
            (Shape::Page, "number") => Shape::PageNumber,
            (Shape::Columns, _) => Shape::Field,
            _ => return None,
        })
    }
}

/// Every unknown key in `text`, located. A file that is not valid YAML yields nothing here:
/// the typed pass reports the syntax error.
pub fn unknown_fields(text: &str, file: &Path) -> Vec<Diagnostic> {
    let Ok(root) = crate::yaml::from_str::<Spanned<Node>>(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(&root, Shape::File, "", None, file, &mut out);
    out
}

fn walk(
    node: &Spanned<Node>,
    shape: Shape,
    path: &str,
    invariant: Option<&str>,
    file: &Path,
    out: &mut Vec<Diagnostic>,
) {
    match &node.value {
        Node::Seq(items) => {
            for item in items {
                walk(item, shape, path, invariant, file, out);
            }
        }
        Node::Map(entries) if matches!(shape, Shape::Columns) => {
            // Keys are the user's column names; each value is a path or a typed field.
            for (key, value) in entries {
                walk(value, Shape::Field, &join(path, key), invariant, file, out);
            }
        }
        Node::Map(entries) if !matches!(shape, Shape::Free) => {
            let name = if matches!(shape, Shape::Invariant) {
                entries
                    .iter()
                    .find(|(k, _)| k == "name")
                    .and_then(|(_, v)| match &v.value {
                        Node::Scalar(Some(s)) => Some(s.as_str()),
                        _ => None,
                    })
            } else {
                None
            };
            let invariant = name.or(invariant);
            let fields = shape.fields();
            for (key, value) in entries {
                if fields.contains(&key.as_str()) {
                    if let Some(child) = shape.child(key) {
                        walk(value, child, &join(path, key), invariant, file, out);
                    }
                } else {
                    let field = join(path, key);
                    let hint = super::suggest(key, fields.iter().copied())
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_else(|| format!("; known fields here: {}", fields.join(", ")));
                    out.push(
                        Diagnostic::at(
                            file,
                            value.referenced,
                            format!("unknown field `{field}`{hint}"),
                        )
                        .in_invariant(invariant),
                    );
                }
            }
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() || path == "invariants" {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPES: [Shape; 25] = [
        Shape::File,
        Shape::Invariant,
        Shape::Check,
        Shape::Reconcile,
        Shape::Incremental,
        Shape::ChangeColumns,
        Shape::Side,
        Shape::Transitions,
        Shape::Alert,
        Shape::Compensate,
        Shape::Replay,
        Shape::Slo,
        Shape::Action,
        Shape::SqlAction,
        Shape::HttpAction,
        Shape::Request,
        Shape::Page,
        Shape::Cursor,
        Shape::Offset,
        Shape::PageNumber,
        Shape::Columns,
        Shape::Field,
        Shape::Lookup,
        Shape::Stream,
        Shape::Free,
    ];

    #[test]
    fn every_nested_shape_hangs_under_a_field_the_typed_pass_reads() {
        let candidates = [
            "invariants",
            "alert",
            "check",
            "reconcile",
            "transitions",
            "compensate",
            "replay",
            "slo",
            "labels",
            "left",
            "right",
            "allowed",
            "sql",
            "http",
            "processed",
            "incremental",
            "column",
            "headers",
            "body",
            "missing",
            "request",
            "params",
            "page",
            "cursor",
            "offset",
            "number",
            "columns",
            "lookup",
            "stream",
        ];
        for shape in SHAPES {
            for key in candidates {
                if shape.child(key).is_some()
                    && !matches!(shape, Shape::Compensate | Shape::Columns)
                {
                    assert!(
                        shape.fields().contains(&key),
                        "`{key}` leads to a nested shape but is no field of {:?}",
                        shape.fields()
                    );
                }
            }
        }
    }

    #[test]
    fn the_keys_allowed_are_the_typed_pass_fields_renamed_as_serde_reads_them() {
        // `for` is the Rust field `for_`, renamed.
        assert!(Shape::Alert.fields().contains(&"for"));
        assert!(!Shape::Alert.fields().contains(&"for_"));
        assert_eq!(
            Shape::Compensate.fields(),
            [
                "missing",
                "extra",
                "duplicate",
                "mismatch",
                "check",
                "transition"
            ]
        );
        assert!(Shape::Invariant.fields().contains(&"violation_budget"));
    }

    #[test]
    fn an_unknown_key_at_every_depth_is_reported_with_its_path() {
        let text = "invariants:\n  - name: a\n    colour: red\n    reconcile:\n      left: {source: s, query: q, sorce: x}\n      right: {source: s, query: q}\n      key: id\n    compensate:\n      missing:\n        sql: {target: t, statement: s, params: x}\n";
        let found: Vec<String> = unknown_fields(text, Path::new("x.yaml"))
            .into_iter()
            .map(|d| d.message)
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("unknown field `colour`"), "{found:?}");
        assert!(
            found[1].starts_with("unknown field `reconcile.left.sorce`; did you mean `source`?"),
            "{found:?}"
        );
        assert!(
            found[2].starts_with("unknown field `compensate.missing.sql.params`"),
            "{found:?}"
        );
    }
}
