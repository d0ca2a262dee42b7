//! `trueup trace` finds a key's violations whatever their kind: a transition's fingerprint
//! carries its states and time, which the key alone does not give.

use crate::helpers::{
    combined_output as text, demo_with, output_off_runtime as output, trueup_cli,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_violation_and_an_integer_key_are_found_by_the_key_as_typed() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_with(dir.path(), None, "").await;
    let path = config.file.clone().unwrap();
    let checked = output({
        let mut c = trueup_cli(&path, "tester");
        c.args(["check", "-i", "payment-lifecycle"]);
        c
    })
    .await;
    assert_eq!(checked.status.code(), Some(1), "{}", text(&checked));
    let store = trueup::store::open(&config.store).await.unwrap();
    let found = store
        .violations(&trueup::store::ViolationFilter {
            invariants: vec!["payment-lifecycle".into()],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    store.close().await;
    let violation = found.first().expect("the demo plants a bad transition");
    assert_eq!(violation.kind, "transition");
    let key = violation.key[0].to_string();
    assert!(violation.key[0].is_i64(), "{key}");
    let traced = output({
        let mut c = trueup_cli(&path, "tester");
        c.args(["trace", &key, "-f", "json"]);
        c
    })
    .await;
    assert!(traced.status.success(), "{}", text(&traced));
    let traced: serde_json::Value = serde_json::from_slice(&traced.stdout).unwrap();
    let opened: Vec<&serde_json::Value> = traced["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "violation_opened" && s["invariant"] == "payment-lifecycle")
        .collect();
    assert!(!opened.is_empty(), "{traced:#}");
    assert!(
        opened[0]["summary"]
            .as_str()
            .unwrap()
            .starts_with("`payment-lifecycle` found a state change not allowed (run "),
        "{traced:#}"
    );
}
