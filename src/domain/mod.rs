//! Pure domain types: parsed once from raw input, no I/O.

mod actor;
mod alert;
mod compensation;
mod duration;
mod event_log;
pub mod evidence;
mod histogram;
mod incident;
mod invariant;
mod link;
mod name;
mod next_step;
mod plan;
mod request;
mod role;
mod routing;
mod run;
mod schedule;
mod slo;
mod template;
mod value;
mod violation;

pub use actor::Actor;
pub use alert::{Alert, AlertPolicy, AlertState, Notice, Observation, step as alert_step};
/// The type of [`Value::Text`]'s text, for code outside the crate that builds values.
pub use compact_str::CompactString;
pub use compensation::{
    ActionSpec, Compensation, HttpCompensation, NatsCompensation, ParamStyle, RedisCompensation,
    SqlCompensation, is_subject_token,
};
pub use duration::HumanDuration;
pub use event_log::{
    CapturedEvent, EventIdentity, EventOutcome, EventShape, Intake, MAX_EVENT_ID_BYTES, Refusal,
    record_id_of_key,
};
pub use histogram::{Bucket, StackedBucket, histogram, stacked_histogram};
pub use incident::{IncidentState, Phase};
pub use invariant::{
    CheckSpec, Expect, Incremental, Invariant, InvariantSpec, QuerySide, ReconcileMode,
    ReconcileSpec, ReplaySpec, Severity, TransitionsSpec,
};
pub use link::{WebUrl, WebUrlError};
pub use name::{
    ColumnName, IncidentName, InvariantName, LogName, NameError, SourceName, TargetName,
};
pub use next_step::NextStep;
pub use plan::{ActionStatus, PlanId, PlanKind, PlanState};
pub use request::{
    CursorFrom, Field, FieldFrom, FieldKind, HttpRequest, JsonPath, Lookup, MessageMeta, Paging,
    Param, Read, StreamRead, WindowEdge,
};
pub use role::Role;
pub use routing::{
    AlertLabels, Delivery, GroupBy, MatchOp, Matcher, MatcherError, NewSilence, RESERVED_LABELS,
    Route, Silence, SilenceError, is_label_name,
};
pub use run::{
    CompareMethod, Compared, Coverage, LedgerChange, Marks, RunId, RunStats, RunStatus, Split,
    Watermark,
};
pub use schedule::{Schedule, ScheduleError};
pub use slo::{Objective, SloMeasure, SloObservation, Target as SloTarget, measure as measure_slo};
pub use template::{
    JsonTemplate, Placeholder, RenderError, Scope, Segment, Template, TemplateError,
    ViolationContext, json_text, push_path_segment,
};
pub use value::{
    CAPPED, Digested, EVIDENCE_VALUE_CAP, Value, ValueClass, bytes_prefix as value_bytes_prefix,
    is_capped, json_size, text_prefix as value_text_prefix,
};
pub(crate) use value::{float_as_decimal, inexact_json_number, repeated_json_member};
pub use violation::{Fingerprint, Violation, ViolationKind, ViolationStatus};
