//! NATS targets: each action is one message published to a subject of the target's JetStream
//! stream, carrying the action's idempotency key as `Nats-Msg-Id`. The server keeps the ids
//! it saw within the stream's duplicate window and acknowledges a repeat as a duplicate
//! without storing it again: a retried or resumed action lands once, and trueup records it
//! as applied so that later plans know it after the window has passed.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamErrorKind, PublishErrorKind};

use super::{Executed, TargetError};
use crate::config::NatsTarget;

pub(super) struct NatsConn {
    cfg: NatsTarget,
    /// Connected on first use, once the stream is known to take acknowledged publishes;
    /// connected again after the connection broke.
    stream: crate::net::Reconnecting<Stream>,
}

#[derive(Clone)]
struct Stream {
    context: async_nats::jetstream::Context,
    duplicate_window: Duration,
}

impl NatsConn {
    pub(super) fn open(cfg: &NatsTarget) -> Self {
        Self {
            cfg: cfg.clone(),
            stream: crate::net::Reconnecting::default(),
        }
    }

    fn failed(&self, message: String) -> TargetError {
        TargetError::Server {
            target: self.cfg.name.to_string(),
            message,
        }
    }

    async fn connect(&self) -> Result<Stream, TargetError> {
        let timeout = self.cfg.timeout.as_std();
        let client = crate::net::nats_connect(self.cfg.url.expose(), timeout)
            .await
            .map_err(|m| {
                TargetError::Unreachable(format!(
                    "target `{}`: cannot connect to {}: {m}",
                    self.cfg.name, self.cfg.url
                ))
            })?;
        let mut context = async_nats::jetstream::new(client);
        // The ack wait is the target's timeout (the client's own default is 5 s).
        context.set_timeout(timeout);
        let name = &self.cfg.stream;
        let stream = context.get_stream(name).await.map_err(|e| {
            self.failed(match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    format!(
                        "stream `{name}` does not exist; create it (e.g. `nats stream add {name}`) with subjects covering what the actions publish"
                    )
                }
                GetStreamErrorKind::Request => format!(
                    "JetStream did not answer for stream `{name}` ({}); is JetStream enabled on the server?",
                    crate::net::error_chain(&e)
                ),
                _ => format!(
                    "cannot read stream `{name}`: {}",
                    crate::net::error_chain(&e)
                ),
            })
        })?;
        let config = &stream.cached_info().config;
        if config.no_ack {
            return Err(self.failed(format!(
                "stream `{name}` does not acknowledge publishes (no_ack), so trueup cannot know a message was stored; turn acks on for it"
            )));
        }
        Ok(Stream {
            duplicate_window: config.duplicate_window,
            context,
        })
    }

    pub(super) async fn execute(
        &self,
        subject: &str,
        headers: &BTreeMap<String, String>,
        body: &serde_json::Value,
        idempotency_key: &str,
    ) -> Executed {
        let stream = match self.stream.get(|| self.connect()).await {
            Ok(s) => s,
            Err(e) => return Executed::Failed(e),
        };
        let mut message_headers = async_nats::HeaderMap::new();
        for (name, value) in headers {
            message_headers.insert(name.as_str(), value.as_str());
        }
        message_headers.insert(async_nats::header::NATS_MESSAGE_ID, idempotency_key);
        // A subject no longer (or never) in this stream is refused by the server, rather than
        // stored in whichever other stream captures it.
        message_headers.insert(
            async_nats::header::NATS_EXPECTED_STREAM,
            self.cfg.stream.as_str(),
        );
        let payload = match serde_json::to_vec(body) {
            Ok(p) => p,
            Err(e) => return Executed::Failed(self.failed(format!("cannot encode the body: {e}"))),
        };
        let published = async {
            stream
                .context
                .publish_with_headers(subject.to_owned(), message_headers, payload.into())
                .await?
                .await
        };
        let lost_ack = || {
            format!(
                "publish to `{subject}`: no ack within {}; the message may be stored: a retry with the same Nats-Msg-Id within the stream's duplicate window ({}) is dropped as a duplicate",
                self.cfg.timeout,
                humantime::format_duration(stream.duplicate_window)
            )
        };
        // The context waits for the ack as long; this bounds sending the message too.
        let why = match tokio::time::timeout(
            self.cfg.timeout.as_std() + Duration::from_secs(1),
            published,
        )
        .await
        {
            Ok(Ok(ack)) if ack.duplicate => {
                return Executed::Delivered(format!(
                    "stream `{}` already held this Nats-Msg-Id (an earlier attempt stored it at sequence {}); recorded as applied",
                    ack.stream, ack.sequence
                ));
            }
            Ok(Ok(ack)) => {
                return Executed::Applied(serde_json::json!({
                    "stream": ack.stream,
                    "sequence": ack.sequence,
                    "duplicate_window_secs": stream.duplicate_window.as_secs(),
                }));
            }
            Ok(Err(e)) => match e.kind() {
                PublishErrorKind::StreamNotFound => format!(
                    "publish to `{subject}`: no stream takes this subject; add it to stream `{}`'s subjects",
                    self.cfg.stream
                ),
                PublishErrorKind::TimedOut => lost_ack(),
                _ => {
                    let chain = crate::net::error_chain(&e);
                    if chain.contains("expected stream does not match") {
                        format!(
                            "publish to `{subject}`: the subject belongs to another stream, not `{}`; publish to one of `{}`'s subjects, or name the other stream in the target",
                            self.cfg.stream, self.cfg.stream
                        )
                    } else {
                        format!("publish to `{subject}`: {chain}")
                    }
                }
            },
            Err(_) => lost_ack(),
        };
        if crate::net::nats_broken(&stream.context.client()) {
            self.stream.forget().await;
        }
        Executed::Failed(self.failed(why))
    }

    pub(super) async fn close(&self) {
        if let Some(stream) = self.stream.current().await {
            let _ =
                tokio::time::timeout(self.cfg.timeout.as_std(), stream.context.client().drain())
                    .await;
        }
    }
}
