use super::*;

fn sources() -> Known {
    Known {
        sources: ["shop", "ledger"]
            .into_iter()
            .map(|s| {
                (
                    SourceName::parse(s).unwrap(),
                    crate::config::SourceClass::Sql(crate::config::SourceKind::Sqlite),
                )
            })
            .collect(),
        channels: ["oncall".to_owned()].into(),
        single_connection: Default::default(),
        retained_logs: Default::default(),
        targets: [
            (
                "ledger-writer",
                TargetInfo::Sql(crate::config::SourceKind::Postgres),
            ),
            ("billing", TargetInfo::Http),
            ("bus", TargetInfo::Nats),
            ("cache", TargetInfo::Redis),
        ]
        .into_iter()
        .map(|(n, i)| (TargetName::parse(n).unwrap(), i))
        .collect(),
    }
}

fn parse(text: &str) -> (Vec<Invariant>, Vec<Diagnostic>) {
    parse_file(text, Path::new("invariants/x.yaml"), &sources())
}

const GOOD: &str = r#"
invariants:
  - name: payments-ledger
    severity: critical
    schedule: "*/5 * * * *"
    grace: 15m
    time_column: captured_at
    reconcile:
      left:
        source: shop
        query: SELECT id AS payment_id, amount, captured_at FROM payments;
      right: { source: ledger, query: "SELECT payment_id, amount, booked_at AS captured_at FROM entries" }
      key: payment_id
      compare: [amount]
  - name: no-negative-amounts
    check:
      source: shop
      query: SELECT id FROM payments WHERE amount < 0
      key: [id]
  - name: payment-states
    transitions:
      source: shop
      query: SELECT payment_id, state, at FROM payment_events
      key: payment_id
      initial: [pending]
      allowed:
        pending: [authorized, canceled]
        authorized: [captured, canceled]
"#;

#[test]
fn a_well_formed_file_gives_all_three_kinds() {
    let (invs, errs) = parse(GOOD);
    assert!(errs.is_empty(), "{}", Diagnostics(errs));
    assert_eq!(invs.len(), 3);
    let InvariantSpec::Reconcile(r) = &invs[0].spec else {
        panic!("expected reconcile")
    };
    assert_eq!(
        r.left.query,
        crate::domain::Read::Sql(
            "SELECT id AS payment_id, amount, captured_at FROM payments".into()
        )
    );
    assert_eq!(r.key[0].as_str(), "payment_id");
    assert_eq!(invs[0].severity, Severity::Critical);
    assert_eq!(invs[0].grace.unwrap().as_std().as_secs(), 900);
    assert_eq!(invs[1].kind_name(), "check");
    let InvariantSpec::Transitions(t) = &invs[2].spec else {
        panic!("expected transitions")
    };
    assert!(t.is_known_state("captured"));
    assert_eq!(invs[2].defined_at.1, 20);
}

#[test]
fn three_different_mistakes_are_all_reported_with_their_lines() {
    let text = r#"invariants:
  - name: payments-ledger
    schedule: "every five minutes"
    grace: 15 minutes please
    time_column: created_at
    check:
      source: shopp
      query: SELECT 1 AS id
      key: id
"#;
    let (invs, mut errs) = parse(text);
    assert!(invs.is_empty());
    errs.sort_by_key(|e| e.line);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 3, "{shown:#?}");
    assert!(shown[0].starts_with("invariants/x.yaml:3:"), "{}", shown[0]);
    assert!(shown[0].contains("schedule"), "{}", shown[0]);
    assert!(shown[1].starts_with("invariants/x.yaml:4:"), "{}", shown[1]);
    assert!(shown[2].starts_with("invariants/x.yaml:7:"), "{}", shown[2]);
    assert!(shown[2].contains("did you mean `shop`?"), "{}", shown[2]);
    assert!(
        shown
            .iter()
            .all(|s| s.contains("invariant `payments-ledger`"))
    );
}

#[test]
fn unknown_fields_are_reported_with_semantic_errors_and_a_suggestion() {
    let text = r#"invariants:
  - name: a
    schedul: "*/5 * * * *"
    severity: urgent
    check:
      source: shop
      querry: SELECT 1
      query: SELECT 1 AS id
      key: id
"#;
    let (_, errs) = parse(text);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|s| s.contains(":3:") && s.contains("did you mean `schedule`?")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.contains(":7:") && s.contains("unknown field `check.querry`")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.contains(":4:") && s.contains("critical, high, medium or low")),
        "{shown:#?}"
    );
}

#[test]
fn an_invariant_needs_exactly_one_kind_block() {
    let (_, errs) = parse("invariants:\n  - name: a\n");
    assert!(errs[0].message.contains("add one `check:`"), "{:?}", errs);
}

#[test]
fn grace_without_a_time_column_is_explained() {
    let text = "invariants:\n  - name: a\n    grace: 5m\n    check: {source: shop, query: SELECT 1 AS id, key: id}\n";
    let (_, errs) = parse(text);
    assert!(errs[0].message.contains("time_column"), "{:?}", errs);
}

#[test]
fn yaml_syntax_errors_carry_a_location() {
    let (_, errs) = parse("invariants:\n  - name: a\n   bad: [\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].line >= 2, "{:?}", errs);
}

#[test]
fn yaml_the_reader_refuses_is_explained_in_our_words_with_its_line() {
    let many = format!(
        "invariants:\n  - name: a\n    tags: [{}]\n",
        vec!["x"; 250_001].join(", ")
    );
    let deep = format!("invariants: {}{}\n", "[".repeat(80), "]".repeat(80));
    // Just inside the limit, a deep value is read (and refused for its type), not a crash.
    let (_, errs) = parse(&format!(
        "invariants:\n  - name: a\n    description: {}{}\n",
        "[".repeat(20),
        "]".repeat(20)
    ));
    assert!(errs.iter().any(|e| e.line == 3), "{errs:?}");
    for (text, line, says) in [
        (
            "invariants:\n  - name: a\n    check: {source: shop, query: SELECT 1 AS id, key: id}\n    name: b\n".to_owned(),
            4,
            "`name` is given twice in the same mapping; keep one",
        ),
        (
            "invariants: []\n---\ninvariants: []\n".to_owned(),
            3,
            "a second YAML document (after a `---`) starts here",
        ),
        (many, 0, "split it into several files"),
        // The typed pass stops at the first `[` where a mapping belongs; the point is that the
        // file is refused rather than crashing the reader (the shape pass walks it all).
        (deep, 1, "expected mapping start"),
    ] {
        let (_, errs) = parse(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        let shown = errs[0].to_string();
        assert!(shown.contains(says), "{shown}");
        if line > 0 {
            assert_eq!(errs[0].line, line, "{shown}");
        }
        for internal in ["DuplicateKeyPolicy", "from_str", "budget breached", "{ "] {
            assert!(!shown.contains(internal), "{shown}");
        }
    }
}

#[test]
fn yaml_nested_beyond_the_limit_is_refused_in_our_words() {
    let deep = format!("{}{}\n", "[".repeat(80), "]".repeat(80));
    let err = crate::yaml::from_str::<serde_json::Value>(&deep).unwrap_err();
    let shown = Diagnostic::from_yaml(Path::new("x.yaml"), &err).to_string();
    assert!(
        shown.starts_with("x.yaml:1:") && shown.contains("nested more than 24 levels deep"),
        "{shown}"
    );
}

#[test]
fn duplicate_names_across_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let one =
        "invariants:\n  - name: same\n    check: {source: shop, query: SELECT 1 AS id, key: id}\n";
    std::fs::write(dir.path().join("a.yaml"), one).unwrap();
    std::fs::write(dir.path().join("b.yml"), one).unwrap();
    let err = load(dir.path(), &sources()).unwrap_err().to_string();
    assert!(err.contains("already used at"), "{err}");
}

#[test]
fn every_shipped_invariant_file_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("invariants");
    let mut known = sources();
    known.sources.insert(
        // The demo's payment provider API (`demo::PROVIDER_SOURCE`, a layer above).
        SourceName::parse("provider").unwrap(),
        crate::config::SourceClass::Http,
    );
    let invs = load(&dir, &known).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(invs.len(), 6);
}

#[test]
fn alert_settings_and_channels_are_read_and_checked() {
    let text = r#"invariants:
  - name: a
    alert:
      for: 10m
      keep_firing_for: 5m
      notify: [oncall]
    check: {source: shop, query: SELECT 1 AS id, key: id}
  - name: b
    alert:
      for: soon
      notify: [pager]
    check: {source: shop, query: SELECT 1 AS id, key: id}
"#;
    let (invs, errs) = parse(text);
    assert_eq!(invs.len(), 1);
    assert_eq!(invs[0].alert.for_, chrono::TimeDelta::minutes(10));
    assert_eq!(invs[0].alert.keep_firing_for, chrono::TimeDelta::minutes(5));
    assert_eq!(invs[0].notify, Some(vec!["oncall".to_owned()]));
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 2, "{shown:#?}");
    assert!(shown[0].contains("alert.for"), "{shown:#?}");
    assert!(shown[1].contains("unknown channel `pager`"), "{shown:#?}");
}

#[test]
fn a_schedule_may_name_its_time_zone() {
    let text = "invariants:\n  - name: a\n    schedule: \"0 9 * * 1-5\"\n    timezone: Europe/Paris\n    check: {source: shop, query: SELECT 1 AS id, key: id}\n  - name: b\n    schedule: \"0 9 * * *\"\n    timezone: Paris\n    check: {source: shop, query: SELECT 1 AS id, key: id}\n";
    let (invs, errs) = parse(text);
    assert_eq!(invs.len(), 1);
    assert!(format!("{:?}", invs[0].schedule).contains("Europe/Paris"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].to_string().contains(":8:") && errs[0].message.contains("IANA"),
        "{}",
        errs[0]
    );
}

const COMPENSATED: &str = r#"invariants:
  - name: payments-ledger
    severity: critical
    reconcile:
      left: {source: shop, query: "SELECT id AS payment_id, amount FROM payments"}
      right: {source: ledger, query: "SELECT payment_id, amount FROM entries"}
      key: payment_id
    compensate:
      missing:
        sql:
          target: ledger-writer
          statement: INSERT INTO entries (payment_id, amount) VALUES ({{key.payment_id}}, {{left.amount}})
      mismatch:
        http:
          target: billing
          method: patch
          path: /entries/{{key.payment_id}}
          headers: {X-Reason: "trueup {{violation.kind}}"}
          body: {amount: "{{left.amount}}"}
      extra:
        manual: Void ledger entry {{key.payment_id}} ({{right.amount}}) in the finance console
"#;

#[test]
fn compensations_are_read_per_violation_kind() {
    let (invs, errs) = parse(COMPENSATED);
    assert!(errs.is_empty(), "{errs:#?}");
    let c = &invs[0].compensate;
    assert_eq!(c.len(), 3);
    let Some(crate::domain::Compensation::Sql(sql)) = c.get(&crate::domain::ViolationKind::Missing)
    else {
        panic!("{c:?}")
    };
    assert_eq!(
        sql.statement(),
        "INSERT INTO entries (payment_id, amount) VALUES ($1, $2)"
    );
    let Some(crate::domain::Compensation::Http(http)) =
        c.get(&crate::domain::ViolationKind::Mismatch)
    else {
        panic!("{c:?}")
    };
    assert_eq!(http.method, "PATCH");
}

#[test]
fn compensation_mistakes_are_each_reported_where_they_are() {
    let text = r#"invariants:
  - name: a
    reconcile:
      left: {source: shop, query: SELECT 1 AS id}
      right: {source: ledger, query: SELECT 1 AS id}
      key: id
    compensate:
      missing:
        sql:
          target: ledger-writer
          statement: DELETE FROM {{left.table}} WHERE id = {{key.id}}
      extra:
        sql:
          target: ledger-writr
          statement: DELETE FROM t WHERE id = {{key.id}}
      mismatch:
        manual: fix {{right.amount}} for {{key.nope}}
      duplicate:
        http: {target: ledger-writer, path: /x}
  - name: b
    check: {source: shop, query: SELECT 1 AS id, key: id}
    compensate:
      missing:
        manual: x {{right.id}}
      check:
        sql: {target: ledger-writer, statement: "UPDATE t SET a = 1 WHERE id = {{right.id}}"}
"#;
    let (invs, mut errs) = parse(text);
    assert!(invs.is_empty());
    errs.sort_by_key(|e| e.line);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let expect = [
        (":11:", "table or column name"),
        (":14:", "did you mean `ledger-writer`"),
        (":17:", "`nope` is not a key column"),
        (":19:", "is a SQL target"),
        (":24:", "a check invariant reports check"),
        (":26:", "{{right.id}}: a `check` violation has one row"),
    ];
    assert_eq!(errs.len(), expect.len(), "{shown:#?}");
    for ((at, what), got) in expect.iter().zip(&shown) {
        assert!(
            got.contains(at) && got.contains(what),
            "{at} {what}: {shown:#?}"
        );
    }
}

#[test]
fn a_replay_block_says_how_to_redeliver_a_lost_event() {
    let text = r#"invariants:
  - name: orders-events
    time_column: created_at
    reconcile:
      left: {source: shop, query: "SELECT id AS event_id, account, payload, created_at FROM events"}
      right: {source: ledger, query: "SELECT event_id, created_at FROM processed"}
      key: event_id
    replay:
      http:
        target: billing
        path: events
        body: "{{left.payload}}"
      idempotency_key: "{{key.event_id}}"
      partition: account
      max_window: 6h
      attempts: 5
      processed: {source: ledger, query: "SELECT event_id FROM inbox"}
"#;
    let (invs, errs) = parse(text);
    assert!(errs.is_empty(), "{errs:#?}");
    let replay = invs[0].replay.as_ref().unwrap();
    assert_eq!(replay.partition.as_ref().unwrap().as_str(), "account");
    assert_eq!(replay.attempts, 5);
    assert_eq!(replay.max_window.as_std().as_secs(), 6 * 3600);
    assert!(replay.processed.is_some() && replay.idempotency_key.is_some());
}

#[test]
fn a_replay_publishes_to_a_jetstream_subject_and_a_compensation_appends_to_a_redis_stream() {
    let text = r#"invariants:
  - name: orders-published
    time_column: created_at
    reconcile:
      left: {source: shop, query: "SELECT id AS event_id, account, amount, created_at FROM outbox"}
      right: {source: ledger, query: "SELECT event_id, created_at FROM published"}
      key: event_id
    replay:
      nats:
        target: bus
        subject: orders.{{left.account}}.{{key.event_id}}
        headers: {Event-Type: order.created}
        body: {id: "{{key.event_id}}", amount: "{{left.amount}}"}
      partition: account
    compensate:
      extra:
        redis:
          target: cache
          stream: orders:voided
          fields: {event_id: "{{key.event_id}}", why: "{{violation.kind}}", payload: {amount: "{{right.event_id}}"}}
"#;
    let (invs, errs) = parse(text);
    assert!(errs.is_empty(), "{errs:#?}");
    let replay = invs[0].replay.as_ref().unwrap();
    let crate::domain::Compensation::Nats(nats) = &replay.deliver else {
        panic!("{:?}", replay.deliver)
    };
    assert_eq!(nats.target.as_str(), "bus");
    assert_eq!(nats.headers[0].0, "Event-Type");
    let Some(crate::domain::Compensation::Redis(redis)) =
        invs[0].compensate.get(&crate::domain::ViolationKind::Extra)
    else {
        panic!("{:?}", invs[0].compensate)
    };
    assert_eq!(redis.stream, "orders:voided");
    let names: Vec<&str> = redis.fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["event_id", "payload", "why"]);
}

#[test]
fn stream_action_mistakes_are_each_reported_where_they_are() {
    let text = r#"invariants:
  - name: a
    time_column: at
    reconcile:
      left: {source: shop, query: "SELECT 1 AS id, 1 AS at"}
      right: {source: ledger, query: SELECT 1 AS id}
      key: id
    compensate:
      missing:
        nats: {target: billing, subject: x, body: {}}
      extra:
        nats: {target: bus, subject: "orders.>", body: {}}
      mismatch:
        nats: {target: bus, subject: "orders.id-{{key.id}}", body: {}}
      duplicate:
        nats: {target: bus, subject: "orders.x", headers: {Nats-Msg-Id: "{{key.id}}"}, body: {}}
  - name: c
    reconcile:
      left: {source: shop, query: SELECT 1 AS id}
      right: {source: ledger, query: SELECT 1 AS id}
      key: id
    compensate:
      missing:
        nats: {target: bus, subject: "$JS.API.STREAM.PURGE.ORDERS", body: {}}
      extra:
        nats: {target: bus, subject: "orders.{{key.id}}", headers: {nats-rollup: all}, body: {}}
      mismatch:
        nats: {target: bus, subject: "orders..x", body: {}}
  - name: b
    reconcile:
      left: {source: shop, query: SELECT 1 AS id}
      right: {source: ledger, query: SELECT 1 AS id}
      key: id
    compensate:
      missing:
        redis: {target: bus, stream: s, fields: {a: "1"}}
      extra:
        redis: {target: cache, stream: "s-{{key.id}}", fields: {a: "1"}}
      mismatch:
        redis: {target: cache, stream: s, fields: {}}
      duplicate:
        redis: {target: cache, stream: s, fields: {a: "{{key.nope}}"}, subject: x}
"#;
    let (invs, mut errs) = parse(text);
    assert!(invs.is_empty());
    errs.sort_by_key(|e| e.line);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let expect = [
        (
            ":10:",
            "`billing` is an HTTP target; a NATS action needs a target with `url: nats://…`",
        ),
        (":12:", "is not a subject to publish to"),
        (":14:", "make each placeholder a whole token"),
        (":24:", "is a system subject"),
        (
            ":26:",
            "`nats-rollup`: headers starting with Nats- are for trueup",
        ),
        (":28:", "is not a subject to publish to"),
        (
            ":16:",
            "`Nats-Msg-Id`: headers starting with Nats- are for trueup",
        ),
        (
            ":36:",
            "`bus` is a NATS target; a Redis action needs a target with `url: redis://…`",
        ),
        (":38:", "is not a stream key"),
        (":40:", "an entry needs at least one field"),
        (":42:", "unknown field `compensate.duplicate.redis.subject`"),
        (":42:", "`nope` is not a key column"),
    ];
    assert_eq!(errs.len(), expect.len(), "{shown:#?}");
    for (at, what) in expect {
        assert!(
            shown
                .iter()
                .any(|got| got.contains(at) && got.contains(what)),
            "{at} {what}: {shown:#?}"
        );
    }
}

#[test]
fn validate_notes_each_side_a_re_check_reads_in_full_and_says_how_to_make_it_one_request() {
    let mut known = sources();
    for (name, class) in [
        ("api", crate::config::SourceClass::Http),
        ("bus", crate::config::SourceClass::Nats),
        ("events", crate::config::SourceClass::Redis),
    ] {
        known
            .sources
            .insert(SourceName::parse(name).unwrap(), class);
    }
    let text = r#"invariants:
  - name: compensated
    reconcile:
      left: {source: api, request: {path: charges, columns: {id: {type: int}}}}
      right: {source: bus, stream: {name: ORDERS, columns: {id: {type: int}}}}
      key: id
    compensate:
      missing: {http: {target: billing, path: "charges/{{key.id}}"}}
      extra: {manual: "void {{key.id}}"}
  - name: looked-up
    reconcile:
      left: {source: api, request: {path: charges, columns: {id: {type: int}}, lookup: {path: "charges/{{key.id}}"}}}
      right: {source: events, stream: {key: orders, columns: {id: {type: int}}}}
      key: id
    compensate:
      extra: {http: {target: billing, path: "charges/{{key.id}}", method: DELETE}}
  - name: manual-only
    reconcile:
      left: {source: api, request: {path: charges, columns: {id: {type: int}}}}
      right: {source: shop, query: SELECT 1 AS id}
      key: id
    compensate:
      missing: {manual: "book {{key.id}}"}
  - name: not-compensated
    reconcile:
      left: {source: api, request: {path: charges, columns: {id: {type: int}}}}
      right: {source: shop, query: SELECT 1 AS id}
      key: id
"#;
    let (invs, errs) = parse_file(text, Path::new("invariants/x.yaml"), &known);
    assert!(errs.is_empty(), "{errs:#?}");
    let notes: Vec<String> = invs.iter().flat_map(|i| advice(i, &known)).collect();
    assert_eq!(notes.len(), 3, "{notes:#?}");
    assert!(notes[0].starts_with("invariant `compensated`: every action re-checks its key first, and the left side (source `api`) has no lookup, so each re-check reads all of it again; add `request.lookup"), "{}", notes[0]);
    assert!(
        notes[1].contains("the right side (source `bus`)")
            && notes[1].contains("add `stream.lookup: {subject:"),
        "{}",
        notes[1]
    );
    assert!(
        notes[2].starts_with("invariant `looked-up`")
            && notes[2].contains("the right side (source `events`)")
            && notes[2].contains("a Redis stream has no index by key"),
        "{}",
        notes[2]
    );
}

#[test]
fn replay_mistakes_are_reported_where_they_are() {
    let text = r#"invariants:
  - name: a
    reconcile:
      left: {source: shop, query: SELECT 1 AS id}
      right: {source: ledger, query: SELECT 1 AS id}
      key: id
    replay:
      http: {target: billing, path: x}
  - name: b
    time_column: at
    reconcile:
      left: {source: shop, query: SELECT 1 AS id}
      right: {source: ledger, query: SELECT 1 AS id}
      key: id
    replay:
      http: {target: billing, path: "x/{{right.id}}"}
      partiton: account
  - name: c
    check: {source: shop, query: SELECT 1 AS id, key: id}
    replay:
      http: {target: billing, path: x}
"#;
    let (invs, mut errs) = parse(text);
    errs.sort_by_key(|e| e.line);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(invs.is_empty(), "{invs:?}");
    let expect = [
        (":8:", "replay needs `time_column`"),
        (
            ":16:",
            "{{right.id}}: a `missing` violation has no right row",
        ),
        (":17:", "did you mean `partition`?"),
        (":21:", "replay applies to reconcile invariants"),
    ];
    assert_eq!(errs.len(), expect.len(), "{shown:#?}");
    for ((at, what), got) in expect.iter().zip(&shown) {
        assert!(
            got.contains(at) && got.contains(what),
            "{at} {what}: {shown:#?}"
        );
    }
}

const INCREMENTAL: &str = r#"
invariants:
  - name: payments-ledger
    reconcile:
      left: {source: shop, query: "SELECT id, amount, updated_at FROM payments"}
      right: {source: ledger, query: "SELECT id, amount, recorded_at FROM entries"}
      key: id
      incremental:
        column: {left: updated_at, right: recorded_at}
        lookback: 5m
        full_every: 6h
"#;

#[test]
fn an_incremental_reconcile_names_each_sides_change_column_a_lookback_and_how_often_to_read_everything()
 {
    let (invs, errs) = parse(INCREMENTAL);
    assert!(errs.is_empty(), "{errs:?}");
    let InvariantSpec::Reconcile(spec) = &invs[0].spec else {
        panic!()
    };
    let inc = spec.incremental.as_ref().unwrap();
    assert_eq!(inc.left.as_ref().unwrap().as_str(), "updated_at");
    assert_eq!(inc.right.as_ref().unwrap().as_str(), "recorded_at");
    assert_eq!(inc.lookback.as_std().as_secs(), 300);
    assert_eq!(inc.full_every.as_std().as_secs(), 6 * 3600);

    // One name for both sides; one side only; `full_every` a day unless said.
    let both = INCREMENTAL
        .replace("{left: updated_at, right: recorded_at}", "changed_at")
        .replace("        full_every: 6h\n", "");
    let (invs, errs) = parse(&both);
    assert!(errs.is_empty(), "{errs:?}");
    let InvariantSpec::Reconcile(spec) = &invs[0].spec else {
        panic!()
    };
    let inc = spec.incremental.as_ref().unwrap();
    assert_eq!(
        (inc.left.as_ref(), inc.right.as_ref()),
        (
            Some(&ColumnName::parse("changed_at").unwrap()),
            Some(&ColumnName::parse("changed_at").unwrap())
        )
    );
    assert_eq!(inc.full_every.as_std().as_secs(), 24 * 3600);
    let left_only = INCREMENTAL.replace(", right: recorded_at", "");
    let (invs, errs) = parse(&left_only);
    assert!(errs.is_empty(), "{errs:?}");
    let InvariantSpec::Reconcile(spec) = &invs[0].spec else {
        panic!()
    };
    assert_eq!(spec.incremental.as_ref().unwrap().right, None);
}

#[test]
fn incremental_mistakes_are_each_reported_where_they_are() {
    let cases = [
        (
            INCREMENTAL.replace("        lookback: 5m\n", ""),
            "reconcile.incremental.lookback is missing",
            9,
        ),
        (
            INCREMENTAL.replace(
                "        column: {left: updated_at, right: recorded_at}\n",
                "",
            ),
            "reconcile.incremental.column is missing",
            9,
        ),
        (
            INCREMENTAL.replace("{left: updated_at, right: recorded_at}", "{}"),
            "name the change column of the left side, the right side or both",
            9,
        ),
        (
            INCREMENTAL.replace("lookback: 5m", "lookback: soon"),
            "reconcile.incremental.lookback: `soon` is not a duration",
            10,
        ),
        (
            INCREMENTAL.replace("full_every: 6h", "full_every: 0s"),
            "reconcile.incremental.full_every: must be longer than zero",
            11,
        ),
        (
            INCREMENTAL.replace("full_every: 6h", "full_evry: 6h"),
            "unknown field `reconcile.incremental.full_evry`; did you mean `full_every`?",
            11,
        ),
        (
            INCREMENTAL.replace("right: recorded_at}", "rigth: recorded_at}"),
            "unknown field `reconcile.incremental.column.rigth`; did you mean `right`?",
            9,
        ),
    ];
    for (text, want, line) in cases {
        let (_, errs) = parse(&text);
        let found = errs.iter().find(|e| e.message.contains(want));
        assert!(found.is_some(), "{want}: {errs:?}");
        assert_eq!(found.unwrap().line, line, "{want}: {errs:?}");
    }
}

#[test]
fn a_reconcile_may_be_split_into_segments_of_one_key_and_a_wrong_count_is_located() {
    let split = INCREMENTAL.replace("      key: id\n", "      key: id\n      segments: 16\n");
    let (invs, errs) = parse(&split);
    assert!(errs.is_empty(), "{errs:?}");
    let InvariantSpec::Reconcile(spec) = &invs[0].spec else {
        panic!()
    };
    assert_eq!(spec.segments, Some(16));
    let cases = [
        (
            split.replace("segments: 16", "segments: 1"),
            "reconcile.segments: 1 is out of range; split a run into 2 to 4096 segments, or leave `segments` out to run it whole",
        ),
        (
            split.replace("segments: 16", "segments: 5000"),
            "reconcile.segments: 5000 is out of range",
        ),
        (
            split.replace("key: id", "key: [tenant, id]"),
            "reconcile.segments: segments split one integer key, and this reconcile's key has several columns",
        ),
    ];
    for (text, want) in cases {
        let (_, errs) = parse(&text);
        let found = errs.iter().find(|e| e.message.contains(want));
        assert!(found.is_some(), "{want}: {errs:?}");
        assert_eq!(found.unwrap().line, 8, "{want}: {errs:?}");
    }
}

#[test]
fn an_slo_block_gives_the_objective_with_a_thirty_day_window_by_default() {
    let text = "invariants:\n  - name: a\n    slo: {objective: 99.9%, max_open: 1h}\n    check: {source: shop, query: SELECT 1 AS id, key: id}\n  - name: b\n    slo:\n      objective: 99.95\n      max_open: 30m\n      window: 7d\n    check: {source: shop, query: SELECT 1 AS id, key: id}\n";
    let (invs, errs) = parse(text);
    assert!(errs.is_empty(), "{errs:?}");
    let a = invs[0].slo.as_ref().unwrap();
    assert_eq!(a.target.to_string(), "99.9%");
    assert_eq!(a.max_open.as_std().as_secs(), 3600);
    assert_eq!(a.window.as_std().as_secs(), 30 * 86_400);
    let b = invs[1].slo.as_ref().unwrap();
    assert_eq!(b.target.to_string(), "99.95%");
    assert_eq!(b.window.as_std().as_secs(), 7 * 86_400);
}

#[test]
fn slo_mistakes_are_reported_with_their_field_line_and_remedy() {
    let text = "invariants:\n  - name: a\n    slo:\n      objective: 100%\n      max_open: soon\n      windw: 30d\n    check: {source: shop, query: SELECT 1 AS id, key: id}\n  - name: b\n    slo: {max_open: 40d}\n    check: {source: shop, query: SELECT 1 AS id, key: id}\n";
    let (_, errs) = parse(text);
    let lines: Vec<String> = errs
        .iter()
        .map(|e| {
            format!(
                "{}:{} [{}] {}",
                e.line,
                e.column,
                e.invariant.as_deref().unwrap_or("-"),
                e.message
            )
        })
        .collect();
    let has = |line: u64, inv: &str, text: &str| {
        errs.iter().any(|e| {
            e.line == line && e.invariant.as_deref() == Some(inv) && e.message.contains(text)
        })
    };
    assert!(
        has(4, "a", "slo.objective: `100%` is not an objective"),
        "{lines:#?}"
    );
    assert!(
        has(5, "a", "slo.max_open: `soon` is not a duration"),
        "{lines:#?}"
    );
    assert!(has(6, "a", "did you mean `window`"), "{lines:#?}");
    assert!(has(9, "b", "slo needs an `objective`"), "{lines:#?}");
}

#[test]
fn a_runbook_and_labels_are_read_and_their_mistakes_named_with_their_line() {
    let text = "invariants:\n  - name: a\n    runbook_url: https://wiki.example.com/runbooks/a\n    labels: {team: billing, tier_1: yes}\n    check: {source: shop, query: SELECT 1 AS id, key: id}\n  - name: b\n    runbook_url: wiki/runbooks/b\n    labels:\n      2fast: x\n    check: {source: shop, query: SELECT 1 AS id, key: id}\n";
    let (invs, errs) = parse(text);
    let a = invs.iter().find(|i| i.name.as_str() == "a").unwrap();
    assert_eq!(
        a.runbook_url.as_ref().map(|u| u.as_str()),
        Some("https://wiki.example.com/runbooks/a")
    );
    assert_eq!(
        a.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
        ["team=billing", "tier_1=yes"]
    );
    let has = |line: u64, text: &str| {
        errs.iter().any(|e| {
            e.line == line && e.invariant.as_deref() == Some("b") && e.message.contains(text)
        })
    };
    assert!(
        has(
            7,
            "runbook_url: `wiki/runbooks/b` is not an absolute web address"
        ),
        "{errs:#?}"
    );
    assert!(has(9, "labels: `2fast` is not a label name"), "{errs:#?}");
    // What only notices show is not part of the definition: editing it stales no plan.
    let mut edited = a.clone();
    edited.runbook_url = None;
    edited.labels.clear();
    assert_eq!(edited.definition_hash(), a.definition_hash());
}

#[test]
fn a_label_cannot_take_a_name_trueup_sets_from_the_invariant() {
    let (_, errs) = parse(
        "invariants:\n  - name: a\n    labels: {owner: billing, invariant: x}\n    check: {source: shop, query: SELECT 1 AS id, key: id}\n",
    );
    let all: String = errs.iter().map(|e| format!("{e}\n")).collect();
    assert!(
        all.contains("labels: `owner` is set by trueup from the invariant's own `owner:`"),
        "{all}"
    );
    assert!(
        all.contains("labels: `invariant` is set by trueup from the invariant's own `name:`"),
        "{all}"
    );
}

/// `sources()` and an HTTP API, `charges_api`.
fn with_api() -> Known {
    let mut known = sources();
    known.sources.insert(
        SourceName::parse("charges_api").unwrap(),
        crate::config::SourceClass::Http,
    );
    known
}

const API: &str = r#"
invariants:
  - name: charges-booked
    reconcile:
      left:
        source: charges_api
        request:
          path: /charges
          params: {limit: 100}
          items: data
          page:
            cursor: {param: starting_after, from_item: id, has_more: has_more}
          columns:
            charge_id: {path: id, type: int}
            amount: {path: amount.value, type: decimal}
            currency: amount.currency
      right: {source: ledger, query: "SELECT charge_id, amount, currency FROM entries"}
      key: charge_id
"#;

#[test]
fn a_side_on_an_api_is_a_request_with_its_paging_and_typed_columns() {
    let (invs, errs) = parse_file(API, Path::new("invariants/x.yaml"), &with_api());
    assert!(errs.is_empty(), "{errs:?}");
    let InvariantSpec::Reconcile(spec) = &invs[0].spec else {
        panic!()
    };
    let Read::Http(request) = &spec.left.query else {
        panic!("{:?}", spec.left.query)
    };
    assert_eq!(request.path, "charges");
    assert_eq!(
        request.params,
        [("limit".to_owned(), crate::domain::Param::text("100"))]
    );
    assert_eq!(request.items.to_string(), "data");
    assert_eq!(
        request.paging,
        crate::domain::Paging::Cursor {
            param: "starting_after".into(),
            from: crate::domain::CursorFrom::LastItem(
                crate::domain::JsonPath::parse("id").unwrap()
            ),
            has_more: Some(crate::domain::JsonPath::parse("has_more").unwrap()),
        }
    );
    let columns: Vec<(String, String, crate::domain::FieldKind)> = request
        .columns
        .iter()
        .map(|f| (f.column.to_string(), f.from.to_string(), f.kind))
        .collect();
    use crate::domain::FieldKind as K;
    assert_eq!(
        columns,
        // In the order written, as a query's columns are in its SELECT order.
        [
            ("charge_id".into(), "id".into(), K::Int),
            ("amount".into(), "amount.value".into(), K::Decimal),
            ("currency".into(), "amount.currency".into(), K::Auto),
        ]
    );
    // The API and reports show the side as one line.
    assert_eq!(spec.left.query.to_string(), "GET charges?limit=100");
}

#[test]
fn request_mistakes_are_each_reported_where_they_are() {
    let cases = [
        (
            API.replace("        request:\n          path: /charges", "        query: SELECT 1\n        request:\n          path: /charges"),
            "reconcile.left gives both `query:` and `request:`; a database source takes a query, an HTTP source a request, a NATS source a stream",
        ),
        (
            API.replace("source: ledger, query:", "source: charges_api, query:"),
            "reconcile.right.query: source `charges_api` is an HTTP API; read it with `request:` (path, items, page, columns)",
        ),
        (
            API.replace("        source: charges_api\n", "        source: shop\n"),
            "reconcile.left.request: source `shop` is a sqlite database; read it with `query:` (a SELECT)",
        ),
        (
            API.replace("{source: ledger, query: \"SELECT charge_id, amount, currency FROM entries\"}", "{source: ledger}"),
            "reconcile.right needs `query:` (a SELECT, for a database source), `request:` (for an HTTP source) or `stream:` (for a NATS source)",
        ),
        (
            API.replace("          page:\n", "          page:\n            link: next\n"),
            "reconcile.left.request.page takes one style: `cursor`, `link`, `offset` or `number`",
        ),
        (
            API.replace("from_item: id, ", ""),
            "reconcile.left.request.page.cursor takes the cursor from one place: `from_item:`",
        ),
        (
            API.replace("type: decimal", "type: money"),
            "reconcile.left.request.columns.amount.type `money` is unknown; use int, decimal, float, text, bool, timestamp, date or json",
        ),
        (
            API.replace("{limit: 100}", "{limit: 100, since: \"{{window.from}}\"}"),
            "reconcile.left.request.params.since `{{window.from}}` takes the run's window, and this side has none; give the reconcile a `window:`",
        ),
        (
            API.replace("{limit: 100}", "{limit: 100, since: \"{{window.start}}\"}"),
            "reconcile.left.request.params.since: `{{window.start}}` is not a value a read has; use {{window.from}}, {{window.to}}, {{window.from_epoch}} or {{window.to_epoch}}",
        ),
        (
            API.replace("      key: charge_id\n", "      key: charge_id\n      window: 7d\n"),
            "reconcile.window needs `time_column`",
        ),
        (
            API.replace("      key: charge_id\n", "      key: charge_id\n      window: 7d\n      segments: 4\n")
                .replace("  - name: charges-booked\n", "  - name: charges-booked\n    time_column: created\n"),
            "reconcile.window and `segments` do not go together",
        ),
        (
            API.replace("      key: charge_id\n", "      key: charge_id\n      window: 0s\n")
                .replace("  - name: charges-booked\n", "  - name: charges-booked\n    time_column: created\n"),
            "reconcile.window must be longer than zero",
        ),
        (
            API.replace("path: /charges", "path: charges?limit=5"),
            "reconcile.left.request.path `charges?limit=5` must be a plain path: give query parameters under `params:`",
        ),
        (
            API.replace("from_item: id", "from_itme: id"),
            "unknown field `reconcile.left.request.page.cursor.from_itme`; did you mean `from_item`?",
        ),
        (
            API.replace("{path: id, type: int}", "{path: id, typ: int}"),
            "unknown field `reconcile.left.request.columns.charge_id.typ`; did you mean `type`?",
        ),
        (
            API.replace("          items: data\n", "          itmes: data\n"),
            "unknown field `reconcile.left.request.itmes`; did you mean `items`?",
        ),
        (
            API.replace("      key: charge_id\n", "      key: charge_id\n      mode: checksum\n"),
            "reconcile.mode: checksum cannot be used with source `charges_api`, which is not a database: segment checksums are computed by databases",
        ),
        (
            API.replace("      key: charge_id\n", "      key: charge_id\n      segments: 4\n"),
            "reconcile.segments cannot be used with source `charges_api`, which is not a database",
        ),
        (
            API.replace(
                "          page:\n            cursor: {param: starting_after, from_item: id, has_more: has_more}\n",
                "          page:\n            link: prev\n",
            ),
            "reconcile.left.request.page.link `prev`: the only link followed is `next`",
        ),
        (
            API.replace(
                "          page:\n            cursor: {param: starting_after, from_item: id, has_more: has_more}\n",
                "          page:\n            offset: {param: offset}\n",
            ),
            "reconcile.left.request.page.offset needs `size:` above 0",
        ),
        (
            API.replace("          items: data\n", "          items: data..list\n"),
            "reconcile.left.request.items `data..list` has an empty step",
        ),
        (
            API.replace(
                "            currency: amount.currency\n",
                "            currency: amount.currency\n          lookup: {path: \"charges/{{key.id}}\"}\n",
            ),
            "reconcile.left.request.lookup.path: {{key.id}} is not a key column; a lookup fetches one key, so its path takes `{{key.<column>}}` only (the key is: charge_id)",
        ),
        (
            API.replace(
                "            currency: amount.currency\n",
                "            currency: amount.currency\n          lookup: {path: charges/latest}\n",
            ),
            "reconcile.left.request.lookup.path `charges/latest` has no `{{key.<column>}}`",
        ),
        (
            API.replace(
                "            currency: amount.currency\n",
                "            currency: amount.currency\n          lookup: {path: \"charges/{{key.charge_id}}\", itme: data}\n",
            ),
            "unknown field `reconcile.left.request.lookup.itme`; did you mean `item`?",
        ),
    ];
    for (text, want) in cases {
        let (_, errs) = parse_file(&text, Path::new("invariants/x.yaml"), &with_api());
        let found = errs.iter().find(|e| e.message.contains(want));
        assert!(found.is_some(), "{want}:\n{errs:?}");
        let found = found.unwrap();
        assert!(found.line > 0, "{want}: {found:?}");
        assert_eq!(found.invariant.as_deref(), Some("charges-booked"), "{want}");
    }
}

#[test]
fn a_window_lets_a_request_ask_for_the_runs_span_of_time() {
    let text = API
        .replace(
            "{limit: 100}",
            "{limit: 100, created_gte: \"{{window.from_epoch}}\"}",
        )
        .replace(
            "      key: charge_id\n",
            "      key: charge_id\n      window: 7d\n",
        )
        .replace(
            "  - name: charges-booked\n",
            "  - name: charges-booked\n    time_column: created\n",
        );
    let (invs, errs) = parse_file(&text, Path::new("invariants/x.yaml"), &with_api());
    assert!(errs.is_empty(), "{errs:?}");
    let InvariantSpec::Reconcile(spec) = &invs[0].spec else {
        panic!()
    };
    assert_eq!(spec.window, Some(HumanDuration::parse("7d").unwrap()));
    assert_eq!(
        spec.left.query.to_string(),
        "GET charges?created_gte={{window.from_epoch}}&limit=100"
    );
}

const STREAM: &str = r#"
invariants:
  - name: orders-fulfilled
    reconcile:
      left:
        source: orders
        stream:
          name: ORDERS
          subject: orders.created.>
          columns:
            order_id: {path: id, type: int}
            msg_id: {header: Nats-Msg-Id}
            published: {meta: time}
      right: {source: ledger, query: "SELECT order_id FROM fulfilled"}
      key: order_id
"#;

/// `with_api()` and a NATS server, `orders`.
fn with_stream() -> Known {
    let mut known = with_api();
    known.sources.insert(
        SourceName::parse("orders").unwrap(),
        crate::config::SourceClass::Nats,
    );
    known
}

#[test]
fn a_side_on_a_stream_names_it_its_subject_and_columns_from_payload_headers_and_metadata() {
    let (invs, errs) = parse_file(STREAM, Path::new("invariants/x.yaml"), &with_stream());
    assert!(errs.is_empty(), "{errs:?}");
    let InvariantSpec::Reconcile(spec) = &invs[0].spec else {
        panic!()
    };
    let Read::Stream(read) = &spec.left.query else {
        panic!("{:?}", spec.left.query)
    };
    assert_eq!(read.stream, "ORDERS");
    assert_eq!(read.subject.as_deref(), Some("orders.created.>"));
    let from: Vec<String> = read.columns.iter().map(|f| f.from.to_string()).collect();
    assert_eq!(from, ["id", "header Nats-Msg-Id", "meta time"]);
    assert_eq!(
        spec.left.query.to_string(),
        "stream ORDERS subject orders.created.>"
    );
}

#[test]
fn stream_mistakes_are_each_reported_where_they_are() {
    let cases = [
        (
            STREAM.replace("          name: ORDERS\n", ""),
            "reconcile.left.stream needs `name:`, the JetStream stream",
        ),
        (
            STREAM.replace("name: ORDERS", "name: orders.all"),
            "reconcile.left.stream.name `orders.all` is not a stream name",
        ),
        (
            STREAM.replace("subject: orders.created.>", "subject: orders.>.created"),
            "reconcile.left.stream.subject `orders.>.created` is not a subject filter",
        ),
        (
            STREAM.replace("{meta: time}", "{meta: offset}"),
            "reconcile.left.stream.columns.published.meta `offset` is unknown; use time, sequence, subject (NATS) or id (Redis, an event log)",
        ),
        (
            STREAM.replace("{header: Nats-Msg-Id}", "{header: Nats-Msg-Id, path: id}"),
            "reconcile.left.stream.columns.msg_id takes one of `path:`, `header:` or `meta:`",
        ),
        (
            STREAM.replace("source: ledger, query:", "source: orders, query:"),
            "reconcile.right.query: source `orders` is a NATS JetStream server; read it with `stream:` (name, subject, columns)",
        ),
        (
            STREAM.replace("        source: orders\n", "        source: charges_api\n"),
            "reconcile.left.stream: source `charges_api` is an HTTP API; read it with `request:`",
        ),
        (
            STREAM.replace("      key: order_id\n", "      key: order_id\n      incremental: {column: updated_at, lookback: 1m, full_every: 1h}\n"),
            "reconcile.incremental cannot be used with source `orders`, which is not a database",
        ),
        (
            STREAM.replace(
                "            published: {meta: time}\n",
                "            published: {meta: time}\n          lookup: {subject: \"orders.{{key.id}}\"}\n",
            ),
            "reconcile.left.stream.lookup.subject: {{key.id}} is not a key column",
        ),
        (
            STREAM.replace(
                "            published: {meta: time}\n",
                "            published: {meta: time}\n          lookup: {path: \"orders/{{key.order_id}}\"}\n",
            ),
            "reconcile.left.stream.lookup: `path` and `item` are an API lookup's; a NATS stream's takes `subject:`",
        ),
        (
            API.replace("currency: amount.currency", "currency: {header: X-Currency}"),
            "reconcile.left.request.columns.currency: an API item has no headers or metadata; give `path:`",
        ),
    ];
    for (text, want) in cases {
        let (_, errs) = parse_file(&text, Path::new("invariants/x.yaml"), &with_stream());
        let found = errs.iter().find(|e| e.message.contains(want));
        assert!(found.is_some(), "{want}:\n{errs:?}");
        assert!(found.unwrap().line > 0, "{want}");
    }
}

#[test]
fn a_side_on_a_redis_stream_names_its_key_and_columns_from_fields_and_entry_ids() {
    let mut known = with_stream();
    known.sources.insert(
        SourceName::parse("events").unwrap(),
        crate::config::SourceClass::Redis,
    );
    let text = STREAM
        .replace("        source: orders\n", "        source: events\n")
        .replace(
            "          name: ORDERS\n          subject: orders.created.>\n",
            "          key: \"orders:events\"\n",
        )
        .replace("{header: Nats-Msg-Id}", "{meta: id}");
    let (invs, errs) = parse_file(&text, Path::new("invariants/x.yaml"), &known);
    assert!(errs.is_empty(), "{errs:?}");
    let InvariantSpec::Reconcile(spec) = &invs[0].spec else {
        panic!()
    };
    let Read::Stream(read) = &spec.left.query else {
        panic!()
    };
    assert_eq!(
        (read.stream.as_str(), read.subject.as_deref()),
        ("orders:events", None)
    );
    let cases = [
        (
            text.replace(
                "          key: \"orders:events\"\n",
                "          name: ORDERS\n",
            ),
            "reconcile.left.stream: a Redis stream is named by its `key:`",
        ),
        (
            text.replace("{meta: id}", "{header: Nats-Msg-Id}"),
            "reconcile.left.stream.columns.msg_id: a Redis stream entry has no headers",
        ),
        (
            text.replace("{meta: id}", "{meta: subject}"),
            "reconcile.left.stream.columns.msg_id.meta `subject` is a NATS message's; a Redis entry has time and id",
        ),
        (
            STREAM.replace("{header: Nats-Msg-Id}", "{meta: id}"),
            "reconcile.left.stream.columns.msg_id.meta `id` is a Redis entry's",
        ),
        (
            STREAM.replace(
                "          name: ORDERS\n",
                "          name: ORDERS\n          key: x\n",
            ),
            "reconcile.left.stream.key is a Redis stream's",
        ),
    ];
    for (text, want) in cases {
        let (_, errs) = parse_file(&text, Path::new("invariants/x.yaml"), &known);
        assert!(
            errs.iter().any(|e| e.message.contains(want) && e.line > 0),
            "{want}:\n{errs:?}"
        );
    }
}

/// `with_api()` and the event log `orders`.
fn with_log() -> Known {
    let mut known = with_api();
    known.sources.insert(
        SourceName::parse("log:orders").unwrap(),
        crate::config::SourceClass::Log,
    );
    known
}

fn log_side(stream: &str) -> String {
    format!(
        "invariants:\n  - name: captured\n    reconcile:\n      left:\n        source: log:orders\n        stream:\n{stream}      right:\n        source: shop\n        query: SELECT order_id FROM orders\n      key: order_id\n"
    )
}

#[test]
fn a_side_on_an_event_log_gives_its_columns_from_payload_headers_id_time_and_sequence() {
    let text = log_side(
        "          columns:\n            order_id: {path: data.order, type: int}\n            event: {meta: id}\n            at: {meta: time}\n            seq: {meta: sequence}\n            subject: {header: Nats-Subject}\n",
    );
    let (invs, errs) = parse_file(&text, Path::new("invariants/x.yaml"), &with_log());
    assert!(errs.is_empty(), "{errs:?}");
    let InvariantSpec::Reconcile(spec) = &invs[0].spec else {
        panic!()
    };
    assert_eq!(spec.left.source.log(), Some("orders"));
    let Read::Stream(read) = &spec.left.query else {
        panic!("{:?}", spec.left.query)
    };
    assert_eq!(read.stream, "orders");
    assert_eq!(read.columns.len(), 5);
}

#[test]
fn a_side_on_an_event_log_refuses_a_stream_name_a_subject_meta_and_an_unknown_log() {
    for (stream, says) in [
        (
            "          name: ORDERS\n          columns: {id: {meta: id}}\n",
            "left.stream.name: an event log is named by its source (`log:orders`); give only `columns:`",
        ),
        (
            "          columns: {id: {meta: subject}}\n",
            "left.stream.columns.id.meta `subject` is a NATS message's; a logged event has id, time and sequence",
        ),
        (
            "          lookup: {subject: x}\n          columns: {id: {meta: id}}\n",
            "left.stream.lookup: an event log is read by trueup from its own store",
        ),
    ] {
        let (_, errs) = parse_file(
            &log_side(stream),
            Path::new("invariants/x.yaml"),
            &with_log(),
        );
        let all = errs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(all.contains(says), "missing {says:?} in:\n{all}");
    }
    let (_, errs) = parse_file(
        &log_side("          columns: {id: {meta: id}}\n").replace("log:orders", "log:payments"),
        Path::new("invariants/x.yaml"),
        &with_log(),
    );
    let all = errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(all.contains("source `log:payments`"), "{all}");
}

#[test]
fn a_reconcile_reading_both_sides_from_a_source_of_one_connection_is_refused_where_its_right_side_names_it()
 {
    let mut known = sources();
    known
        .single_connection
        .insert(SourceName::parse("shop").unwrap());
    let text = "invariants:\n  - name: same\n    reconcile:\n      left: {source: shop, query: SELECT id FROM a}\n      right: {source: shop, query: SELECT id FROM b}\n      key: id\n  - name: apart\n    reconcile:\n      left: {source: shop, query: SELECT id FROM a}\n      right: {source: ledger, query: SELECT id FROM b}\n      key: id\n";
    let (invs, errs) = parse_file(text, Path::new("invariants/x.yaml"), &known);
    assert_eq!(
        invs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        vec!["apart"]
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].to_string().contains("x.yaml:5:"), "{}", errs[0]);
    assert_eq!(
        errs[0].message,
        "both sides read source `shop`, whose pool_size is 1: a reconcile reads its two sides at once, each on a connection of its own; set `pool_size: 2` or more on source `shop`"
    );
}

#[test]
fn a_reader_of_a_log_with_retain_and_no_schedule_is_told_it_holds_the_log() {
    let mut known = with_log();
    let text =
        log_side("          columns:\n            order_id: {path: data.order, type: int}\n");
    let (invs, errs) = parse_file(&text, Path::new("invariants/x.yaml"), &known);
    assert!(errs.is_empty(), "{errs:?}");
    // Without `retain` the log keeps every event anyway.
    assert!(advice(&invs[0], &known).is_empty());
    known
        .retained_logs
        .insert(SourceName::parse("log:orders").unwrap());
    let notes = advice(&invs[0], &known);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with("invariant `captured` reads event log `orders` and has no `schedule`"),
        "{}",
        notes[0]
    );
    // With a schedule, `serve` runs it.
    let scheduled = text.replace(
        "  - name: captured\n",
        "  - name: captured\n    schedule: \"*/5 * * * *\"\n",
    );
    let (invs, errs) = parse_file(&scheduled, Path::new("invariants/x.yaml"), &known);
    assert!(errs.is_empty(), "{errs:?}");
    assert!(invs[0].schedule.is_some());
    assert!(advice(&invs[0], &known).is_empty());
}
