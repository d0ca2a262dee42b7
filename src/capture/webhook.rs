//! `POST /ingest/<log>`: a webhook signed the way payment providers sign theirs. The header
//! (`Trueup-Signature` unless the feed names another) is `t=<unix seconds>,v1=<hex>`, where the
//! hex is HMAC-SHA256 with the shared secret over `<t>.<body>`. Several `v1=` may be given
//! (a sender rolling its secret); one must match. A signature older or newer than the
//! tolerance is refused as expired, so a captured request cannot be replayed later.

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

use super::CaptureMetrics;
use crate::config::{EventLogConfig, WebhookFeed};
use crate::domain::{CapturedEvent, EventIdentity, Intake, Refusal};
use crate::store::{Store, StoreError};

type HmacSha256 = Hmac<Sha256>;

/// At most this many `v1=` signatures in one header (a sender rolling its secret sends two).
const MAX_SIGNATURES: usize = 8;

/// A piece of a header as an error quotes it: short, control characters escaped.
fn clip(text: &str) -> String {
    let short: String = text.chars().take(40).collect();
    let quoted = format!("{short:?}");
    quoted[1..quoted.len() - 1].to_owned()
}

/// The feed label of webhook deliveries in metrics and in the log.
pub const WEBHOOK_FEED: &str = "webhook";

/// The header value that signs `body` at `t` with `secret`: what a sender computes.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    format!(
        "t={t},v1={}",
        hex::encode(mac(secret, t, body).finalize().into_bytes())
    )
}

fn mac(secret: &[u8], t: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Checks a signature header against the body: the signature first (a forged request is
/// refused as such whatever its time), then the time.
pub fn verify(
    feed: &WebhookFeed,
    header: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let header = header.ok_or_else(|| Refusal::NoSignature {
        header: feed.signature_header.clone(),
    })?;
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(|| {
            Refusal::MalformedSignature(format!("`{}` is not key=value", clip(part.trim())))
        })?;
        match k {
            "t" => {
                let secs: i64 = v.parse().map_err(|_| {
                    Refusal::MalformedSignature(format!(
                        "t=`{}` is not a number of seconds",
                        clip(v)
                    ))
                })?;
                if t.replace(secs).is_some() {
                    return Err(Refusal::MalformedSignature("t= is given twice".into()));
                }
            }
            "v1" => {
                // More than a rolling secret needs would only make a forger's request costly
                // for us.
                if signatures.len() == MAX_SIGNATURES {
                    return Err(Refusal::MalformedSignature(format!(
                        "more than {MAX_SIGNATURES} v1= signatures"
                    )));
                }
                let bytes = hex::decode(v)
                    .map_err(|_| Refusal::MalformedSignature("v1= is not hexadecimal".into()))?;
                signatures.push(bytes);
            }
            // Other schemes (v0, a future v2) are not ours to check.
            _ => {}
        }
    }
    let t = t.ok_or_else(|| Refusal::MalformedSignature("no t=".into()))?;
    if signatures.is_empty() {
        return Err(Refusal::MalformedSignature("no v1=".into()));
    }
    // The body is hashed once, whatever the number of signatures; each is compared in
    // constant time (`CtOutput`'s equality).
    let expected = mac(feed.secret.expose_secret().as_bytes(), t, body).finalize();
    let matches = signatures.iter().any(|s| {
        // An HMAC-SHA256 is 32 bytes; another length cannot match.
        s.len() == 32
            && hmac::digest::CtOutput::<HmacSha256>::new(
                hmac::digest::generic_array::GenericArray::clone_from_slice(s),
            ) == expected
    });
    if !matches {
        return Err(Refusal::BadSignature);
    }
    let tolerance = feed.tolerance.as_std();
    let signed_at = Utc
        .timestamp_opt(t, 0)
        .single()
        .ok_or_else(|| Refusal::MalformedSignature(format!("t={t} is not a time")))?;
    let off = (now - signed_at)
        .abs()
        .to_std()
        .unwrap_or(std::time::Duration::MAX);
    if off > tolerance {
        return Err(Refusal::Expired {
            signed_at,
            tolerance: feed.tolerance.to_string(),
        });
    }
    Ok(())
}

/// A webhook delivery that was not stored.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "no event log `{0}` takes webhooks; `event_logs:` in trueup.yaml names the logs and their `webhook:` feed"
    )]
    NoSuchLog(String),
    #[error("{0}")]
    Refused(Refusal),
    #[error("the event could not be stored; send it again: {0}")]
    Store(#[from] StoreError),
}

/// What a stored (or recognised) webhook delivery did.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub identity: EventIdentity,
    pub intake: Intake,
}

/// Verifies, identifies and stores one webhook delivery, counting what it did; a refused
/// delivery stores nothing.
pub async fn receive_webhook(
    log: &EventLogConfig,
    signature: Option<&str>,
    headers: serde_json::Map<String, serde_json::Value>,
    body: &[u8],
    store: &dyn Store,
    metrics: &CaptureMetrics,
    now: DateTime<Utc>,
) -> Result<Received, WebhookError> {
    let Some(feed) = log.webhook() else {
        return Err(WebhookError::NoSuchLog(log.name.to_string()));
    };
    let refuse = |r: Refusal| {
        metrics.rejected(log.name.as_str(), WEBHOOK_FEED, r.reason());
        WebhookError::Refused(r)
    };
    if body.len() > log.shape.max_event_bytes {
        return Err(refuse(Refusal::TooLarge {
            bytes: body.len(),
            max: log.shape.max_event_bytes,
        }));
    }
    verify(feed, signature, body, now).map_err(refuse)?;
    let identity = log.shape.identify(body).map_err(refuse)?;
    let event = CapturedEvent {
        identity: identity.clone(),
        source: WEBHOOK_FEED.to_owned(),
        position: None,
        headers,
        payload: body.to_vec(),
    };
    let intake = store
        .ingest(&log.name, std::slice::from_ref(&event), now)
        .await?
        .pop()
        .expect("one outcome per event");
    metrics.intake(log.name.as_str(), WEBHOOK_FEED, intake);
    Ok(Received { identity, intake })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::HumanDuration;

    fn feed() -> WebhookFeed {
        WebhookFeed {
            secret: secrecy::SecretString::from("0123456789abcdef-secret"),
            signature_header: "Trueup-Signature".into(),
            tolerance: HumanDuration::parse("5m").unwrap(),
        }
    }

    fn at(t: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(t, 0).unwrap()
    }

    #[test]
    fn a_body_signed_with_the_secret_within_the_tolerance_is_accepted() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(b"0123456789abcdef-secret", 1_000_000, body);
        assert!(header.starts_with("t=1000000,v1="));
        assert_eq!(verify(&feed(), Some(&header), body, at(1_000_299)), Ok(()));
        // A second v1 (a rolled secret) and an unknown scheme do not get in the way.
        let both = format!("{header},v1={},v0=zz", hex::encode([0u8; 32]));
        assert_eq!(verify(&feed(), Some(&both), body, at(1_000_000)), Ok(()));
    }

    #[test]
    fn a_changed_body_another_secret_or_no_signature_is_refused_as_a_bad_signature() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(b"0123456789abcdef-secret", 1_000_000, body);
        let now = at(1_000_000);
        for (h, b) in [
            (Some(header.as_str()), &br#"{"id":"evt_2"}"#[..]),
            (
                Some(&*sign(b"another-secret-of-16b", 1_000_000, body)),
                body,
            ),
            (Some(&*header.replace("t=1000000", "t=1000001")), body),
        ] {
            let err = verify(&feed(), h, b, now).unwrap_err();
            assert_eq!(err, Refusal::BadSignature);
            assert_eq!(err.reason(), "signature");
        }
        let err = verify(&feed(), None, body, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the signature header Trueup-Signature is missing"
        );
        for bad in [
            "v1=abc",
            "t=1,v1=zz",
            "t=x,v1=00",
            "garbage",
            "t=1,t=2,v1=00",
        ] {
            let err = verify(&feed(), Some(bad), body, now).unwrap_err();
            assert!(
                matches!(err, Refusal::MalformedSignature(_)),
                "{bad}: {err}"
            );
            assert_eq!(err.reason(), "signature");
        }
    }

    #[test]
    fn a_true_signature_outside_the_tolerance_is_refused_as_expired_either_way() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(b"0123456789abcdef-secret", 1_000_000, body);
        for now in [at(1_000_301), at(999_699)] {
            let err = verify(&feed(), Some(&header), body, now).unwrap_err();
            assert_eq!(err.reason(), "expired", "{err}");
            assert!(err.to_string().contains("tolerance of 5m"), "{err}");
        }
    }
}
