//! Streams as sources — NATS JetStream and Redis Streams: orders published to a fresh stream,
//! reconciled against a PostgreSQL fulfilment table; the planted differences are found exactly
//! and the repaired ones resolve exactly; a stream that cannot be read fails the run.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use trueup::app::App;
use trueup::config::Config;
use trueup::domain::ViolationStatus;
use trueup::runner::run_invariant;
use trueup::store::{StatusFilter, ViolationFilter};

use crate::helpers::{NATS_URL, REDIS_URL, TestPg, TestRedis, TestStream};

const ORDERS: i64 = 1_000;

fn order(id: i64) -> serde_json::Value {
    let cents = (id % 89) * 100 + 25;
    json!({
        "id": id,
        "total": format!("{}.{:02}", cents / 100, cents % 100),
        "currency": if id % 4 == 0 { "EUR" } else { "USD" },
        "lines": [{"sku": format!("sku-{}", id % 13)}],
    })
}

fn planted() -> BTreeMap<String, BTreeSet<i64>> {
    BTreeMap::from([
        ("missing".to_owned(), BTreeSet::from([17, 333, 901])),
        ("extra".to_owned(), BTreeSet::from([1_001, 1_002])),
        ("duplicate".to_owned(), BTreeSet::from([50, 600])),
        ("mismatch".to_owned(), BTreeSet::from([7, 444])),
    ])
}

/// Every order on `<prefix>.orders.created` (newest first, as a replay after an outage might
/// publish them), and cancellations on another subject the side does not read.
async fn publish_orders(stream: &TestStream) {
    let mut messages = Vec::new();
    for id in (1..=ORDERS).rev() {
        let msg_id = vec![("Nats-Msg-Id".to_owned(), format!("order-{id}"))];
        messages.push(("orders.created".to_owned(), msg_id, order(id)));
        if id % 100 == 0 {
            messages.push((
                "orders.cancelled".to_owned(),
                Vec::new(),
                json!({"id": id + 5_000}),
            ));
        }
    }
    stream.publish_all(&messages).await;
}

/// Fulfilment: one row per order, then the planted differences.
async fn fulfilment() -> TestPg {
    let pg = TestPg::new().await;
    let values: Vec<String> = (1..=ORDERS)
        .map(|id| {
            let o = order(id);
            format!(
                "({id}, {}, '{}')",
                o["total"].as_str().unwrap(),
                o["currency"].as_str().unwrap()
            )
        })
        .collect();
    pg.exec(&format!(
        "CREATE TABLE fulfilled (order_id bigint NOT NULL, amount numeric(12,2) NOT NULL, currency text NOT NULL);
         INSERT INTO fulfilled VALUES {};
         DELETE FROM fulfilled WHERE order_id IN (17, 333, 901);
         INSERT INTO fulfilled VALUES (1001, 1.00, 'USD'), (1002, 2.00, 'USD');
         INSERT INTO fulfilled SELECT * FROM fulfilled WHERE order_id IN (50, 600);
         UPDATE fulfilled SET amount = amount + 0.01 WHERE order_id IN (7, 444);",
        values.join(", ")
    ))
    .await;
    pg
}

async fn project(
    dir: &std::path::Path,
    nats_url: &str,
    stream: &str,
    subject: &str,
    pg: &TestPg,
) -> App {
    project_with(dir, nats_url, stream, subject, None, pg).await
}

/// [`project`], with a `lookup` subject for the re-check of one key.
async fn project_with(
    dir: &std::path::Path,
    nats_url: &str,
    stream: &str,
    subject: &str,
    lookup: Option<&str>,
    pg: &TestPg,
) -> App {
    let lookup = lookup
        .map(|l| format!("          lookup: {{subject: \"{l}\"}}\n"))
        .unwrap_or_default();
    let config = format!(
        "store: sqlite://{store}
sources:
  orders:
    kind: nats
    url: {nats_url}
    timeout: 5s
  fulfilment:
    url: {pg}
",
        store = dir.join("trueup.db").display(),
        pg = pg.reader_url,
    );
    let invariants = format!(
        "invariants:
  - name: orders-fulfilled
    reconcile:
      left:
        source: orders
        stream:
          name: {stream}
          subject: {subject}
          columns:
            order_id: {{path: id, type: int}}
            amount: {{path: total, type: decimal}}
            currency: currency
            first_sku: lines.0.sku
            msg_id: {{header: Nats-Msg-Id}}
            published: {{meta: time}}
            seq: {{meta: sequence}}
{lookup}      right:
        source: fulfilment
        query: SELECT order_id, amount, currency FROM fulfilled
      key: order_id
      compare: [amount, currency]
"
    );
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(dir.join("invariants/stream.yaml"), invariants).unwrap();
    let path = dir.join("trueup.yaml");
    let config = Config::parse(&config, &path, &|_| None).unwrap();
    App::with_config(config).await.unwrap()
}

async fn keys_by_kind(app: &App, status: StatusFilter) -> BTreeMap<String, BTreeSet<i64>> {
    crate::helpers::keys_by_kind(app.store.as_ref(), "orders-fulfilled", status).await
}

#[tokio::test]
async fn a_jetstream_subject_reconciles_exactly_against_postgres_and_repairs_resolve() {
    let stream = TestStream::new().await;
    publish_orders(&stream).await;
    let pg = fulfilment().await;
    let dir = tempfile::tempdir().unwrap();
    let subject = format!("{}.orders.created", stream.prefix);
    let app = project(dir.path(), NATS_URL, &stream.name, &subject, &pg).await;
    let inv = app.invariant("orders-fulfilled").unwrap().clone();

    let first = run_invariant(&inv, &app.sources, app.store.as_ref())
        .await
        .unwrap();
    assert!(first.error.is_none(), "{:?}", first.error);
    // The cancellations on the other subject were not read.
    assert_eq!(first.stats.rows_left, ORDERS as u64);
    assert_eq!(first.stats.rows_right, (ORDERS - 3 + 2 + 2) as u64);
    assert_eq!(keys_by_kind(&app, StatusFilter::Active).await, planted());
    // The evidence carries what the message said, headers and metadata included.
    let missing = app
        .store
        .violations(&ViolationFilter {
            invariants: vec!["orders-fulfilled".into()],
            kind: Some(trueup::domain::ViolationKind::Missing),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let left = &missing
        .iter()
        .find(|v| v.key[0] == json!(333))
        .unwrap()
        .evidence["left"];
    assert_eq!(left["msg_id"], json!("order-333"));
    assert_eq!(left["first_sku"], json!("sku-8"));
    assert_eq!(left["amount"], json!("66.25"));
    assert!(left["seq"].as_i64().unwrap() > 0, "{left}");

    pg.exec(
        "INSERT INTO fulfilled VALUES (17, 17.25, 'USD');
         DELETE FROM fulfilled WHERE order_id = 1001;
         UPDATE fulfilled SET amount = amount - 0.01 WHERE order_id = 7;",
    )
    .await;
    let second = run_invariant(&inv, &app.sources, app.store.as_ref())
        .await
        .unwrap();
    assert!(second.error.is_none(), "{:?}", second.error);
    assert_eq!(second.change.unwrap().resolved, 3);
    assert_eq!(
        keys_by_kind(&app, StatusFilter::Only(ViolationStatus::Resolved)).await,
        BTreeMap::from([
            ("missing".to_owned(), BTreeSet::from([17])),
            ("extra".to_owned(), BTreeSet::from([1_001])),
            ("mismatch".to_owned(), BTreeSet::from([7])),
        ])
    );
    app.close().await;
}

#[tokio::test]
async fn a_stream_that_cannot_be_read_fails_the_run_and_resolves_nothing() {
    let stream = TestStream::new().await;
    publish_orders(&stream).await;
    let pg = fulfilment().await;
    let dir = tempfile::tempdir().unwrap();
    let subject = format!("{}.orders.created", stream.prefix);
    let app = project(dir.path(), NATS_URL, &stream.name, &subject, &pg).await;
    let inv = app.invariant("orders-fulfilled").unwrap().clone();
    let first = run_invariant(&inv, &app.sources, app.store.as_ref())
        .await
        .unwrap();
    assert!(first.error.is_none(), "{:?}", first.error);
    let open = keys_by_kind(&app, StatusFilter::Active).await;
    app.close().await;

    // Everything repaired in fulfilment, and the stream gone: an empty read would resolve
    // the missing orders and report every fulfilled one as extra.
    pg.exec(
        "INSERT INTO fulfilled VALUES (17, 17.25, 'USD'), (333, 66.25, 'USD'), (901, 11.25, 'USD');
         DELETE FROM fulfilled WHERE order_id > 1000;",
    )
    .await;
    stream.js.delete_stream(&stream.name).await.unwrap();
    let app = project(dir.path(), NATS_URL, &stream.name, &subject, &pg).await;
    let second = run_invariant(&inv, &app.sources, app.store.as_ref())
        .await
        .unwrap();
    let error = second.error.clone().expect("the run fails");
    assert!(
        error.contains("source `orders`")
            && error.contains(&format!("stream {} subject {subject}", stream.name))
            && error.contains("cannot open the stream"),
        "{error}"
    );
    assert!(second.change.is_none());
    assert_eq!(keys_by_kind(&app, StatusFilter::Active).await, open);
    app.close().await;

    // A server that does not answer: the run fails saying where it tried.
    let app = project(
        dir.path(),
        "nats://127.0.0.1:1",
        &stream.name,
        &subject,
        &pg,
    )
    .await;
    let third = run_invariant(&inv, &app.sources, app.store.as_ref())
        .await
        .unwrap();
    let error = third.error.clone().expect("the run fails");
    assert!(
        error.contains("source `orders`: cannot connect: nats://127.0.0.1:1"),
        "{error}"
    );
    assert_eq!(keys_by_kind(&app, StatusFilter::Active).await, open);
    app.close().await;
}

/// Every order added to a Redis stream (newest first), the amount in a JSON `payload` field.
async fn add_orders(redis: &TestRedis, key: &str) {
    let mut con = redis.con.clone();
    let mut pipe = redis::pipe();
    for id in (1..=ORDERS).rev() {
        let o = order(id);
        let payload = json!({"total": o["total"], "lines": o["lines"]}).to_string();
        pipe.cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("order_id")
            .arg(id)
            .arg("currency")
            .arg(o["currency"].as_str().unwrap())
            .arg("payload")
            .arg(payload)
            .ignore();
    }
    pipe.query_async::<()>(&mut con).await.unwrap();
}

async fn redis_project(dir: &std::path::Path, redis_url: &str, key: &str, pg: &TestPg) -> App {
    let config = format!(
        "store: sqlite://{store}
sources:
  orders:
    url: {redis_url}
    timeout: 5s
  fulfilment:
    url: {pg}
",
        store = dir.join("trueup.db").display(),
        pg = pg.reader_url,
    );
    let invariants = format!(
        "invariants:
  - name: orders-fulfilled
    reconcile:
      left:
        source: orders
        stream:
          key: \"{key}\"
          columns:
            order_id: {{type: int}}
            amount: {{path: payload.total, type: decimal}}
            currency: currency
            first_sku: payload.lines.0.sku
            entry: {{meta: id}}
            added: {{meta: time}}
      right:
        source: fulfilment
        query: SELECT order_id, amount, currency FROM fulfilled
      key: order_id
      compare: [amount, currency]
"
    );
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(dir.join("invariants/stream.yaml"), invariants).unwrap();
    let path = dir.join("trueup.yaml");
    let config = Config::parse(&config, &path, &|_| None).unwrap();
    App::with_config(config).await.unwrap()
}

#[tokio::test]
async fn a_redis_stream_reconciles_exactly_against_postgres_and_repairs_resolve() {
    let redis = TestRedis::new().await;
    let key = redis.key("orders");
    add_orders(&redis, &key).await;
    let pg = fulfilment().await;
    let dir = tempfile::tempdir().unwrap();
    let app = redis_project(dir.path(), REDIS_URL, &key, &pg).await;
    let inv = app.invariant("orders-fulfilled").unwrap().clone();

    let first = run_invariant(&inv, &app.sources, app.store.as_ref())
        .await
        .unwrap();
    assert!(first.error.is_none(), "{:?}", first.error);
    assert_eq!(first.stats.rows_left, ORDERS as u64);
    assert_eq!(keys_by_kind(&app, StatusFilter::Active).await, planted());
    let missing = app
        .store
        .violations(&ViolationFilter {
            invariants: vec!["orders-fulfilled".into()],
            kind: Some(trueup::domain::ViolationKind::Missing),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let left = &missing
        .iter()
        .find(|v| v.key[0] == json!(333))
        .unwrap()
        .evidence["left"];
    assert_eq!(left["first_sku"], json!("sku-8"));
    assert!(left["entry"].as_str().unwrap().contains('-'), "{left}");

    pg.exec(
        "INSERT INTO fulfilled VALUES (17, 17.25, 'USD');
         DELETE FROM fulfilled WHERE order_id = 1001;
         UPDATE fulfilled SET amount = amount - 0.01 WHERE order_id = 7;",
    )
    .await;
    let second = run_invariant(&inv, &app.sources, app.store.as_ref())
        .await
        .unwrap();
    assert!(second.error.is_none(), "{:?}", second.error);
    assert_eq!(second.change.unwrap().resolved, 3);
    assert_eq!(
        keys_by_kind(&app, StatusFilter::Only(ViolationStatus::Resolved)).await,
        BTreeMap::from([
            ("missing".to_owned(), BTreeSet::from([17])),
            ("extra".to_owned(), BTreeSet::from([1_001])),
            ("mismatch".to_owned(), BTreeSet::from([7])),
        ])
    );
    app.close().await;
}

#[tokio::test]
async fn a_redis_key_that_holds_no_stream_fails_the_run_and_resolves_nothing() {
    let redis = TestRedis::new().await;
    let key = redis.key("orders");
    add_orders(&redis, &key).await;
    let pg = fulfilment().await;
    let dir = tempfile::tempdir().unwrap();
    let app = redis_project(dir.path(), REDIS_URL, &key, &pg).await;
    let inv = app.invariant("orders-fulfilled").unwrap().clone();
    let first = run_invariant(&inv, &app.sources, app.store.as_ref())
        .await
        .unwrap();
    assert!(first.error.is_none(), "{:?}", first.error);
    let open = keys_by_kind(&app, StatusFilter::Active).await;

    // The key is gone (expired, renamed, mistyped): not an empty stream.
    let mut con = redis.con.clone();
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let second = run_invariant(&inv, &app.sources, app.store.as_ref())
        .await
        .unwrap();
    let error = second.error.clone().expect("the run fails");
    assert!(
        error.contains(&format!(
            "source `orders`: stream at key {key}: no key of that name"
        )),
        "{error}"
    );
    assert_eq!(keys_by_kind(&app, StatusFilter::Active).await, open);

    // A key of another type.
    redis::cmd("SET")
        .arg(&key)
        .arg("x")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let third = run_invariant(&inv, &app.sources, app.store.as_ref())
        .await
        .unwrap();
    assert!(
        third
            .error
            .clone()
            .unwrap()
            .contains("the key holds a string, not a stream"),
        "{:?}",
        third.error
    );
    assert_eq!(keys_by_kind(&app, StatusFilter::Active).await, open);
    app.close().await;
}

#[tokio::test]
async fn the_recheck_of_one_order_reads_the_last_message_on_its_own_subject() {
    let stream = TestStream::new().await;
    // A subject per order: orders.<id>.
    let messages: Vec<crate::helpers::TestMessage> = (1..=ORDERS)
        .map(|id| (format!("orders.{id}"), Vec::new(), order(id)))
        .collect();
    stream.publish_all(&messages).await;
    let pg = fulfilment().await;
    let dir = tempfile::tempdir().unwrap();
    let (subject, lookup) = (
        format!("{}.orders.*", stream.prefix),
        format!("{}.orders.{{{{key.order_id}}}}", stream.prefix),
    );
    let app = project_with(
        dir.path(),
        NATS_URL,
        &stream.name,
        &subject,
        Some(&lookup),
        &pg,
    )
    .await;
    let inv = app.invariant("orders-fulfilled").unwrap().clone();
    let first = run_invariant(&inv, &app.sources, app.store.as_ref())
        .await
        .unwrap();
    assert!(first.error.is_none(), "{:?}", first.error);
    assert_eq!(keys_by_kind(&app, StatusFilter::Active).await, planted());
    let open = app
        .store
        .violations(&ViolationFilter {
            invariants: vec!["orders-fulfilled".into()],
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let violation = |id: i64| open.iter().find(|v| v.key[0] == json!(id)).unwrap();

    // The re-check reads only the key's own subject: with the side's subject filter pointed
    // at nothing, a paged read would see no order at all, and 333 would look repaired.
    let mut recheck = inv.clone();
    if let trueup::domain::InvariantSpec::Reconcile(spec) = &mut recheck.spec
        && let trueup::domain::Read::Stream(read) = &mut spec.left.query
    {
        read.subject = Some(format!("{}.nothing.*", stream.prefix));
    }
    pg.exec("UPDATE fulfilled SET amount = amount - 0.01 WHERE order_id = 7;")
        .await;
    for (id, holds) in [(333, true), (1_001, true), (7, false)] {
        let v = violation(id);
        let still =
            trueup::plan::recheck::still_holds(&recheck, &app.sources, &v.key, &v.fingerprint)
                .await
                .unwrap();
        assert_eq!(still, holds, "{id}");
    }
    app.close().await;
}

/// With a window, a stream's time field that reads as no instant (text the columns did not
/// type) fails the read, naming the field and the fix: left out of the window, every entry
/// would read as absent and nothing would be reported. Typed, the same entry is read.
#[tokio::test]
async fn a_window_over_a_stream_time_that_is_no_instant_fails_the_read_saying_how_to_type_it() {
    let redis = TestRedis::new().await;
    let key = redis.key("placed");
    let mut con = redis.con.clone();
    let placed = chrono::Utc::now().to_rfc3339();
    redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("order_id")
        .arg(1)
        .arg("placed")
        .arg(&placed)
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let pg = TestPg::new().await;
    pg.exec("CREATE TABLE placed (order_id bigint, placed timestamptz); INSERT INTO placed VALUES (1, now());")
        .await;
    for (column, error) in [
        (
            "placed",
            Some(format!(
                "it holds `{placed}`, which is no instant, and the window keeps rows by their time; read the field as a timestamp or a date (`type: timestamp` or `type: date` in the source's columns)"
            )),
        ),
        ("{type: timestamp}", None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "store: sqlite://{store}\nsources:\n  orders:\n    url: {REDIS_URL}\n    timeout: 5s\n  db:\n    url: {pg}\n",
            store = dir.path().join("trueup.db").display(),
            pg = pg.reader_url,
        );
        let invariants = format!(
            "invariants:
  - name: placed-recorded
    time_column: placed
    reconcile:
      window: 30d
      left:
        source: orders
        stream:
          key: \"{key}\"
          columns:
            order_id: {{type: int}}
            placed: {column}
      right:
        source: db
        query: SELECT order_id, placed FROM placed
      key: order_id
"
        );
        std::fs::create_dir_all(dir.path().join("invariants")).unwrap();
        std::fs::write(dir.path().join("invariants/w.yaml"), invariants).unwrap();
        let config = Config::parse(&config, &dir.path().join("trueup.yaml"), &|_| None).unwrap();
        let app = App::with_config(config).await.unwrap();
        let inv = app.invariant("placed-recorded").unwrap().clone();
        let outcome = run_invariant(&inv, &app.sources, app.store.as_ref())
            .await
            .unwrap();
        match error {
            Some(error) => {
                let got = outcome.error.unwrap_or_default();
                assert!(got.contains(&error), "{got}");
            }
            None => {
                assert!(outcome.error.is_none(), "{:?}", outcome.error);
                assert_eq!((outcome.stats.rows_left, outcome.stats.observed), (1, 0));
            }
        }
        app.close().await;
    }
}
