//! `POST /ingest/{name}`: what is stored, what is refused with which status, what is counted.

use serde_json::json;

use super::{config, sample, signed};
use crate::helpers::TestServer;

async fn post(
    base: &str,
    log: &str,
    body: &[u8],
    signature: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/ingest/{log}"))
        .header("content-type", "application/json")
        .header("x-provider-attempt", "1")
        // Credentials a provider sends beside its signature: never kept with the event.
        .header("x-api-key", "key-0123456789")
        .header("x-auth-token", "tok-0123456789")
        .header("authorization", "Bearer secret-0123456789")
        .body(body.to_vec());
    if let Some(s) = signature {
        req = req.header("Trueup-Signature", s);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn a_signed_webhook_is_stored_once_and_forged_expired_oversized_or_malformed_ones_are_refused_and_counted()
 {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(
        dir.path(),
        "event_logs:\n  orders:\n    event_id: id\n    event_time: at\n    max_event_bytes: 2048\n    from:\n      - webhook: {secret: \"${ORDERS_SECRET}\"}\n",
    ))
    .await;
    let base = server.base.clone();
    let body = br#"{"id":"evt_1","at":"2026-12-05T10:00:00Z","amount":5}"#;

    let (status, answer) = post(&base, "orders", body, Some(&signed(body, 0))).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        answer,
        json!({"log": "orders", "event_id": "evt_1", "outcome": "stored", "deliveries": 1})
    );
    // The provider sends it again (a retry), signed anew: a duplicate, counted.
    let (status, answer) = post(&base, "orders", body, Some(&signed(body, 1))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "duplicate");
    assert_eq!(answer["deliveries"], 2);

    let forged_body = br#"{"id":"evt_forged","at":"2026-12-05T10:00:00Z"}"#;
    let forged = trueup::capture::sign(
        b"not-the-secret-at-all",
        chrono::Utc::now().timestamp(),
        forged_body,
    );
    // What is sent (case, body, signature) and what must come back (status, reason, words).
    type Refused<'a> = (&'a str, Vec<u8>, Option<String>, u16, &'a str, &'a str);
    let refusals: Vec<Refused> = vec![
        (
            "forged",
            forged_body.to_vec(),
            Some(forged),
            401,
            "signature",
            "does not match",
        ),
        (
            "unsigned",
            forged_body.to_vec(),
            None,
            401,
            "signature",
            "Trueup-Signature is missing",
        ),
        (
            "garbled header",
            forged_body.to_vec(),
            Some("v1=00".into()),
            401,
            "signature",
            "no t=",
        ),
        (
            "expired",
            br#"{"id":"evt_old","at":"2026-12-05T10:00:00Z"}"#.to_vec(),
            Some(signed(
                br#"{"id":"evt_old","at":"2026-12-05T10:00:00Z"}"#,
                600,
            )),
            401,
            "expired",
            "more than the tolerance of 5m",
        ),
        (
            "oversized",
            format!(r#"{{"id":"evt_big","pad":"{}"}}"#, "x".repeat(3000)).into_bytes(),
            None,
            413,
            "too_large",
            "over this log's max_event_bytes of 2048",
        ),
        (
            "no id",
            br#"{"at":"2026-12-05T10:00:00Z"}"#.to_vec(),
            None,
            400,
            "malformed",
            "no id at `id`",
        ),
        (
            "not json",
            b"id=evt_2".to_vec(),
            None,
            400,
            "malformed",
            "not JSON",
        ),
        (
            "no time",
            br#"{"id":"evt_3"}"#.to_vec(),
            None,
            400,
            "malformed",
            "the event time at `at` is missing",
        ),
    ];
    for (case, body, signature, want, reason, says) in &refusals {
        // Unless the case is about the signature, it is a true one.
        let signature = match (signature, *reason) {
            (None, "signature") => None,
            (None, _) => Some(signed(body, 0)),
            (s, _) => s.clone(),
        };
        let (status, answer) = post(&base, "orders", body, signature.as_deref()).await;
        assert_eq!(status, *want, "{case}: {answer}");
        assert_eq!(answer["reason"], *reason, "{case}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{case}: {message}");
    }
    let (status, answer) = post(&base, "payments", body, Some(&signed(body, 0))).await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("no event log `payments` takes webhooks"),
        "{answer}"
    );

    // One event, delivered twice; nothing of what was refused.
    let counts = server.store.log_counts("orders").await.unwrap();
    assert_eq!((counts.events, counts.duplicates), (1, 1));
    for refused in ["evt_forged", "evt_old", "evt_big", "evt_2", "evt_3"] {
        assert!(
            server
                .store
                .logged_event("orders", refused)
                .await
                .unwrap()
                .is_none(),
            "{refused}"
        );
    }
    let event = server
        .store
        .logged_event("orders", "evt_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.payload, body);
    assert_eq!(event.source, "webhook");
    assert_eq!(
        event.event_at.unwrap().to_rfc3339(),
        "2026-12-05T10:00:00+00:00"
    );
    // Request headers are kept, but never the signature or a credential.
    assert_eq!(event.headers["x-provider-attempt"], "1");
    for secret in [
        "trueup-signature",
        "x-api-key",
        "x-auth-token",
        "authorization",
    ] {
        assert!(
            event.headers.get(secret).is_none(),
            "{secret}: {}",
            event.headers
        );
    }
    assert!(
        !event.headers.to_string().contains("0123456789"),
        "{}",
        event.headers
    );

    let (status, metrics) = crate::serve::get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let series = |name: &str, labels: &str| sample(&metrics, &format!("{name}{{{labels}}} "));
    let w = r#"feed="webhook",log="orders""#;
    assert_eq!(series("trueup_log_events_ingested_total", w), 1);
    assert_eq!(series("trueup_log_duplicate_deliveries_total", w), 1);
    for (reason, n) in [
        ("signature", 3),
        ("expired", 1),
        ("too_large", 1),
        ("malformed", 3),
    ] {
        assert_eq!(
            series(
                "trueup_log_events_rejected_total",
                &format!(r#"{w},reason="{reason}""#)
            ),
            n,
            "{reason}"
        );
    }
    server.stop().await;
}
