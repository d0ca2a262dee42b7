//! The API's contract as Rust types: each endpoint names the types of its query string, its
//! body and its answers, and the OpenAPI document is generated from those types (schemars),
//! beside the router built from the same list — what is served and what is documented are
//! the same types, so they cannot drift apart.
//!
//! Statuses every endpoint of a kind can answer are added here once: 401 and 403 where a
//! role is needed, 400 for a path, query string or body that cannot be read (415 for a body
//! that is not JSON, 422 for JSON of the wrong shape, 413 for one too large), 404 where the
//! path names something, 409 where the request changes something, 500 where the store is
//! read. Every refusal has the same JSON body, [`ErrorBody`].

use axum::http::{Method, StatusCode};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use crate::domain::Role;

/// Makes the schema of one Rust type (a `$ref` into the document's components).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

fn inline_schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

/// What a refusal says: `error` is a stable code (`bad_request`, `not_found`, `conflict`,
/// ...), `message` what was wrong and what to do; a refusal about a list of things (an
/// incident's blockers) adds it as a field of its own.
#[derive(serde::Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// A list answer.
#[derive(serde::Serialize, JsonSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}

/// One page of a keyset-paged list: `next_after`, when not null, is the `after` of the next
/// page (null: this is the last one).
#[derive(serde::Serialize, JsonSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<i64>,
}

/// An incident's closure report as JSON: its schema is the published one,
/// `docs/incident-report.schema.json` (which the report tests validate real reports against).
pub struct IncidentReport;

const REPORT_SCHEMA: &str = include_str!("../../docs/incident-report.schema.json");

impl JsonSchema for IncidentReport {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IncidentReport".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let Ok(Value::Object(mut root)) = serde_json::from_str::<Value>(REPORT_SCHEMA) else {
            // A test parses it; an object schema with no constraints is the fallback.
            return schemars::json_schema!({"type": "object"});
        };
        root.remove("$schema");
        root.remove("$id");
        // Its definitions become the document's, under names of their own.
        if let Some(Value::Object(defs)) = root.remove("$defs") {
            for (name, mut def) in defs {
                rewrite_report_refs(&mut def);
                if let Ok(schema) = Schema::try_from(def) {
                    generator
                        .definitions_mut()
                        .insert(format!("IncidentReport_{name}"), schema.to_value());
                }
            }
        }
        let mut root = Value::Object(root);
        rewrite_report_refs(&mut root);
        Schema::try_from(root).unwrap_or_else(|_| schemars::json_schema!({"type": "object"}))
    }
}

fn rewrite_report_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
            {
                *r = format!("#/components/schemas/IncidentReport_{name}");
            }
            map.values_mut().for_each(rewrite_report_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_report_refs),
        _ => {}
    }
}

/// What one answer of an endpoint carries.
#[derive(Clone, Copy)]
enum Content {
    Json(SchemaFn),
    /// Text of a media type (`text/plain`, `text/markdown`, ...).
    Text(&'static str),
}

#[derive(Clone, Copy)]
struct Answer {
    status: StatusCode,
    description: &'static str,
    content: Content,
}

/// What an endpoint takes and answers.
#[derive(Default, Clone)]
pub struct Contract {
    /// A struct whose fields are the query string's parameters.
    query: Option<SchemaFn>,
    /// The JSON body, and whether it may be left out.
    body: Option<(SchemaFn, bool)>,
    answers: Vec<Answer>,
}

impl Contract {
    pub fn query<T: JsonSchema>(mut self) -> Self {
        self.query = Some(inline_schema_of::<T>);
        self
    }

    /// A JSON body the request must have.
    pub fn body<T: JsonSchema>(mut self) -> Self {
        self.body = Some((schema_of::<T>, true));
        self
    }

    /// A JSON body the request may leave out (its fields' defaults apply).
    pub fn optional_body<T: JsonSchema>(mut self) -> Self {
        self.body = Some((schema_of::<T>, false));
        self
    }

    /// A JSON answer.
    pub fn answers<T: JsonSchema>(mut self, status: StatusCode, description: &'static str) -> Self {
        self.answers.push(Answer {
            status,
            description,
            content: Content::Json(schema_of::<T>),
        });
        self
    }

    /// A text answer of `media_type`.
    pub fn answers_text(
        mut self,
        status: StatusCode,
        media_type: &'static str,
        description: &'static str,
    ) -> Self {
        self.answers.push(Answer {
            status,
            description,
            content: Content::Text(media_type),
        });
        self
    }

    /// A refusal particular to this endpoint (the common ones are added for every endpoint
    /// of its kind).
    pub fn refuses(mut self, status: StatusCode, description: &'static str) -> Self {
        self.answers.push(Answer {
            status,
            description,
            content: Content::Json(schema_of::<ErrorBody>),
        });
        self
    }
}

/// One endpoint as the document describes it.
pub struct Operation<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub role: Option<Role>,
    pub summary: &'a str,
    pub mutating: bool,
    pub contract: &'a Contract,
}

/// The OpenAPI 3.1 document of `operations`.
pub fn document<'a>(operations: impl IntoIterator<Item = Operation<'a>>) -> Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
        })
        .with_transform(no_bool_schemas());
    let mut generator = settings.into_generator();
    let mut paths = serde_json::Map::new();
    for op in operations {
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method.as_str().to_lowercase()] = operation(&op, &mut generator);
    }
    let mut schemas = serde_json::Map::new();
    for (name, schema) in generator.take_definitions(true) {
        schemas.insert(name, schema);
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "trueup",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "trueup's API: invariants, runs, violations, compensation plans, incidents and the audit log. Every refusal answers the same JSON body (ErrorBody).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "paths": paths,
    });
    bound_integers(&mut doc);
    doc
}

fn operation(op: &Operation<'_>, generator: &mut SchemaGenerator) -> Value {
    let mut parameters = Vec::new();
    let mut responses = serde_json::Map::new();
    let mut answer = |status: StatusCode, description: &str, content: Option<Value>| {
        let r = responses
            .entry(status.as_u16().to_string())
            .or_insert_with(|| json!({ "description": description }));
        // One status may answer several media types (a report as JSON, Markdown or HTML).
        if let Some(Value::Object(c)) = content {
            let media = r.as_object_mut().and_then(|r| {
                r.entry("content")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
            });
            if let Some(media) = media {
                for (k, v) in c {
                    media.entry(k).or_insert(v);
                }
            }
        }
    };
    let error = |generator: &mut SchemaGenerator| json!({"application/json": {"schema": embed(schema_of::<ErrorBody>(generator))}});
    for a in &op.contract.answers {
        let content = match a.content {
            Content::Json(f) => json!({"application/json": {"schema": embed(f(generator))}}),
            Content::Text(media) => json!({ media: {"schema": {"type": "string"}} }),
        };
        answer(a.status, a.description, Some(content));
    }
    let api = op.path.starts_with("/api/");
    if op.path.contains("{name}") {
        parameters.push(json!({
            "name": "name", "in": "path", "required": true,
            "schema": {"type": "string", "minLength": 1},
        }));
        answer(
            StatusCode::NOT_FOUND,
            "Nothing of that name",
            Some(error(generator)),
        );
    }
    if op.path.contains("{id}") {
        parameters.push(json!({
            "name": "id", "in": "path", "required": true,
            "schema": {"type": "integer", "format": "int64"},
        }));
        answer(
            StatusCode::NOT_FOUND,
            "No such plan",
            Some(error(generator)),
        );
        answer(
            StatusCode::BAD_REQUEST,
            "The id is not an integer",
            Some(error(generator)),
        );
    }
    if let Some(query) = op.contract.query {
        let schema = embed(query(generator));
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                parameters.push(json!({
                    "name": name,
                    "in": "query",
                    "required": required.contains(&name.as_str()),
                    "schema": not_null(property.clone()),
                }));
            }
        }
        answer(
            StatusCode::BAD_REQUEST,
            "The query string is not one this endpoint takes",
            Some(error(generator)),
        );
    }
    let mut body = None;
    if let Some((schema, required)) = op.contract.body {
        body = Some(json!({
            "required": required,
            "content": {"application/json": {"schema": embed(schema(generator))}},
        }));
        answer(
            StatusCode::BAD_REQUEST,
            "The body is not JSON, or a required body is missing",
            Some(error(generator)),
        );
        answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The body is too large",
            Some(error(generator)),
        );
        answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "The body is not sent as application/json",
            Some(error(generator)),
        );
        answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The JSON is not of the body's shape",
            Some(error(generator)),
        );
    }
    let mut security = json!([]);
    if let Some(role) = op.role {
        security = json!([{"bearer": []}]);
        answer(
            StatusCode::UNAUTHORIZED,
            "No bearer token, or an unknown one",
            Some(error(generator)),
        );
        answer(
            StatusCode::FORBIDDEN,
            match role {
                Role::Viewer => "The token's role is below viewer",
                Role::Operator => "The token's role is below operator",
                Role::Approver => "The token's role is below approver",
                Role::Admin => "The token's role is below admin",
            },
            Some(error(generator)),
        );
    }
    if op.mutating {
        answer(
            StatusCode::CONFLICT,
            "Conflicts with the state of what it names, or with work in progress",
            Some(error(generator)),
        );
    }
    if api {
        answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "trueup could not complete the request (the server log has the cause)",
            Some(error(generator)),
        );
    }
    let mut out = json!({
        "summary": op.summary,
        "operationId": operation_id(op.method, op.path),
        "parameters": parameters,
        "responses": responses,
        "security": security,
    });
    if let Some(role) = op.role {
        out["x-trueup-role"] = json!(role);
    }
    if let Some(b) = body {
        out["requestBody"] = b;
    }
    out
}

/// `true` (any JSON value, e.g. a `serde_json::Value` field) written as `{}`: the same
/// schema, and one that every client generator reads (some refuse boolean schemas).
fn no_bool_schemas() -> schemars::transform::ReplaceBoolSchemas {
    let mut t = schemars::transform::ReplaceBoolSchemas::default();
    t.skip_additional_properties = true;
    t
}

fn embed(mut schema: Schema) -> Value {
    use schemars::transform::Transform;
    no_bool_schemas().transform(&mut schema);
    schema.to_value()
}

/// `GET /api/v1/plans/{id}/actions` → `get_plans_id_actions`: stable, unique per endpoint.
fn operation_id(method: &Method, path: &str) -> String {
    let words: Vec<&str> = path
        .trim_start_matches("/api/v1")
        .split(['/', '{', '}', '.', '-'])
        .filter(|w| !w.is_empty())
        .collect();
    format!("{}_{}", method.as_str().to_lowercase(), words.join("_"))
}

/// A query parameter that is absent is `None`: its schema need not admit `null`.
fn not_null(mut schema: Value) -> Value {
    if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types[0].clone();
            schema["type"] = only;
        }
    }
    if let Some(any) = schema.get_mut("anyOf").and_then(Value::as_array_mut) {
        any.retain(|s| s.get("type").and_then(Value::as_str) != Some("null"));
        if any.len() == 1 {
            return not_null(any[0].clone());
        }
    }
    schema
}

/// Gives every integer of a sized format its bounds: a client (or a fuzzer) then knows that
/// 2^63 is not an `int64`, and the server's refusal of it is not a surprise.
fn bound_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let bounds = match map.get("format").and_then(Value::as_str) {
                Some("int64") => Some((json!(i64::MIN), json!(i64::MAX))),
                Some("int32") => Some((json!(i32::MIN), json!(i32::MAX))),
                Some("uint64") => Some((json!(0), json!(u64::MAX))),
                Some("uint32") => Some((json!(0), json!(u32::MAX))),
                Some("uint16") => Some((json!(0), json!(u16::MAX))),
                Some("uint8") => Some((json!(0), json!(u8::MAX))),
                _ => None,
            };
            if let Some((min, max)) = bounds {
                map.entry("minimum").or_insert(min);
                map.entry("maximum").or_insert(max);
            }
            for v in map.values_mut() {
                bound_integers(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_schema_is_the_published_one_with_its_definitions_in_the_document() {
        let doc = document(std::iter::empty());
        let mut generator = schemars::generate::SchemaSettings::draft2020_12()
            .with(|s| s.definitions_path = "/components/schemas".into())
            .into_generator();
        let root = IncidentReport::json_schema(&mut generator).to_value();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(root.get("$defs").is_none() && root.get("$id").is_none());
        let text = root.to_string();
        assert!(!text.contains("#/$defs/"), "{text}");
        assert!(text.contains("#/components/schemas/IncidentReport_invariant"));
        let definitions = generator.take_definitions(true);
        assert!(definitions.contains_key("IncidentReport_timeline_entry"));
    }

    #[test]
    fn operation_ids_name_the_method_and_the_path() {
        assert_eq!(
            operation_id(&Method::GET, "/api/v1/plans/{id}/actions"),
            "get_plans_id_actions"
        );
        assert_eq!(
            operation_id(&Method::GET, "/api/v1/openapi.json"),
            "get_openapi_json"
        );
        assert_eq!(operation_id(&Method::GET, "/healthz"), "get_healthz");
    }

    #[test]
    fn an_absent_query_parameter_is_not_documented_as_null() {
        assert_eq!(
            not_null(json!({"type": ["integer", "null"], "format": "uint32"})),
            json!({"type": "integer", "format": "uint32"})
        );
        assert_eq!(
            not_null(json!({"anyOf": [{"$ref": "#/x"}, {"type": "null"}]})),
            json!({"$ref": "#/x"})
        );
    }

    #[test]
    fn sized_integers_get_their_bounds() {
        let mut v = json!({"a": {"type": "integer", "format": "uint32", "maximum": 1000}});
        bound_integers(&mut v);
        assert_eq!(
            v,
            json!({"a": {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 1000}})
        );
    }
}
