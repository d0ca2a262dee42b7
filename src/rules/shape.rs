//! The shape pass: reads the file as a located tree and reports every key that the format does
//! not know, with a suggestion. Serde stops at the first unknown field; this does not.

use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

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
    Side,
    Transitions,
    Alert,
    Compensate,
    Replay,
    Action,
    SqlAction,
    HttpAction,
    /// A map whose keys are the user's (the `allowed` state map).
    Free,
}

impl Shape {
    fn fields(self) -> &'static [(&'static str, Option<Shape>)] {
        match self {
            Shape::File => &[("invariants", Some(Shape::Invariant))],
            Shape::Invariant => &[
                ("name", None),
                ("description", None),
                ("owner", None),
                ("severity", None),
                ("schedule", None),
                ("timezone", None),
                ("grace", None),
                ("time_column", None),
                ("sample_limit", None),
                ("violation_budget", None),
                ("alert", Some(Shape::Alert)),
                ("check", Some(Shape::Check)),
                ("reconcile", Some(Shape::Reconcile)),
                ("transitions", Some(Shape::Transitions)),
                ("compensate", Some(Shape::Compensate)),
                ("replay", Some(Shape::Replay)),
            ],
            Shape::Check => &[("source", None), ("query", None), ("key", None)],
            Shape::Reconcile => &[
                ("left", Some(Shape::Side)),
                ("right", Some(Shape::Side)),
                ("key", None),
                ("expect", None),
                ("compare", None),
            ],
            Shape::Side => &[("source", None), ("query", None)],
            Shape::Transitions => &[
                ("source", None),
                ("query", None),
                ("key", None),
                ("state", None),
                ("at", None),
                ("initial", None),
                ("allowed", Some(Shape::Free)),
            ],
            Shape::Alert => &[
                ("for", None),
                ("keep_firing_for", None),
                ("repeat_interval", None),
                ("notify", None),
            ],
            Shape::Compensate => &[
                ("missing", Some(Shape::Action)),
                ("extra", Some(Shape::Action)),
                ("duplicate", Some(Shape::Action)),
                ("mismatch", Some(Shape::Action)),
                ("check", Some(Shape::Action)),
                ("transition", Some(Shape::Action)),
            ],
            Shape::Action => &[
                ("sql", Some(Shape::SqlAction)),
                ("http", Some(Shape::HttpAction)),
                ("manual", None),
            ],
            Shape::Replay => &[
                ("sql", Some(Shape::SqlAction)),
                ("http", Some(Shape::HttpAction)),
                ("idempotency_key", None),
                ("partition", None),
                ("max_window", None),
                ("attempts", None),
                ("processed", Some(Shape::Side)),
            ],
            Shape::SqlAction => &[("target", None), ("statement", None)],
            Shape::HttpAction => &[
                ("target", None),
                ("method", None),
                ("path", None),
                ("headers", Some(Shape::Free)),
                ("body", Some(Shape::Free)),
            ],
            Shape::Free => &[],
        }
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
                match fields.iter().find(|(f, _)| f == key) {
                    Some((_, Some(child))) => {
                        walk(value, *child, &join(path, key), invariant, file, out)
                    }
                    Some((_, None)) => {}
                    None => {
                        let field = join(path, key);
                        let hint = super::suggest(key, fields.iter().map(|(f, _)| *f))
                            .map(|s| format!("; did you mean `{s}`?"))
                            .unwrap_or_else(|| {
                                let names: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
                                format!("; known fields here: {}", names.join(", "))
                            });
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
