mod server;
pub use server::TestServer;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::{Connection, Executor};
use trueup::config::{SecretUrl, SourceConfig, SourceKind, SqlSource, WritablePolicy};
use trueup::domain::{HumanDuration, SourceName};
use trueup::source::Sources;

/// The server every machine of this project runs; override with TRUEUP_TEST_PG.
pub fn pg_server() -> String {
    std::env::var("TRUEUP_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Override with TRUEUP_TEST_MYSQL.
pub fn mysql_server() -> String {
    std::env::var("TRUEUP_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// `url` with its user replaced by `user` (no password: the test servers trust local users).
pub fn as_user(url: &str, user: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let host_at = url[after_scheme..]
        .find('@')
        .map_or(after_scheme, |i| after_scheme + i + 1);
    format!("{}{user}@{}", &url[..after_scheme], &url[host_at..])
}

/// A fresh PostgreSQL database, dropped when this goes out of scope.
pub struct TestPg {
    pub name: String,
    /// As the server's superuser: for setting up data, targets and stores.
    pub url: String,
    /// As a login role that may only read this database's tables, present and future: what
    /// a source should connect as (trueup refuses a privileged one).
    pub reader_url: String,
}

impl TestPg {
    pub async fn new() -> Self {
        let name = unique_name("trueup_test");
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_server()))
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (.ci/run starts it)");
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .expect("create test database");
        let url = format!("{}/{name}", pg_server());
        let reader = format!("{name}_reader");
        let mut db = sqlx::PgConnection::connect(&url)
            .await
            .expect("connect to test database");
        sqlx::raw_sql(&format!(
            "CREATE ROLE \"{reader}\" LOGIN;
             GRANT USAGE ON SCHEMA public TO \"{reader}\";
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO \"{reader}\";"
        ))
        .execute(&mut db)
        .await
        .expect("create the test database's reader role");
        let reader_url = format!("{}/{name}", as_user(&pg_server(), &reader));
        Self {
            name,
            url,
            reader_url,
        }
    }

    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect to test database")
    }

    pub async fn exec(&self, sql: &str) {
        let mut c = self.connect().await;
        sqlx::raw_sql(sql)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let name = self.name.clone();
        drop_on_thread::<_, sqlx::Error>(format!("the test database {name}"), async move {
            let mut admin =
                sqlx::PgConnection::connect(&format!("{}/postgres", pg_server())).await?;
            admin
                .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                .await?;
            admin
                .execute(format!("DROP ROLE IF EXISTS \"{name}_reader\"").as_str())
                .await?;
            Ok(())
        });
    }
}

/// A fresh MariaDB/MySQL database, dropped when this goes out of scope.
pub struct TestMysql {
    pub name: String,
    /// As root: for setting up data and targets.
    pub url: String,
    /// As a user with SELECT on this database only: what a source should connect as.
    pub reader_url: String,
}

impl TestMysql {
    pub async fn new() -> Self {
        let name = unique_name("trueup_test");
        let mut admin = sqlx::MySqlConnection::connect(&mysql_server())
            .await
            .expect("MariaDB must run on 127.0.0.1:3306 (.ci/run starts it)");
        admin
            .execute(format!("CREATE DATABASE `{name}`").as_str())
            .await
            .expect("create test database");
        // MariaDB user names are at most 80 characters; the database name is unique already.
        let reader = format!("{name}_r");
        sqlx::raw_sql(&format!(
            "CREATE USER '{reader}'@'%'; GRANT SELECT ON `{name}`.* TO '{reader}'@'%';"
        ))
        .execute(&mut admin)
        .await
        .expect("create the test database's reader user");
        let url = format!("{}/{name}", mysql_server());
        let reader_url = format!("{}/{name}", as_user(&mysql_server(), &reader));
        Self {
            name,
            url,
            reader_url,
        }
    }

    pub async fn connect(&self) -> sqlx::MySqlConnection {
        sqlx::MySqlConnection::connect(&self.url)
            .await
            .expect("connect to test database")
    }

    pub async fn exec(&self, sql: &str) {
        let mut c = self.connect().await;
        sqlx::raw_sql(sql)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestMysql {
    fn drop(&mut self) {
        let name = self.name.clone();
        drop_on_thread::<_, sqlx::Error>(format!("the test database {name}"), async move {
            let mut admin = sqlx::MySqlConnection::connect(&mysql_server()).await?;
            // As PostgreSQL's `WITH (FORCE)`: a connection the test left in a transaction
            // (its runtime waits for this drop) would hold a metadata lock, and the drop
            // would wait for it for ever.
            // `ID` is a signed BIGINT in MariaDB's processlist, unsigned in MySQL's: read as
            // one type (decoding it as u64 failed on MariaDB, and the database was left
            // behind whenever a connection was still there to kill).
            let left: Vec<i64> = sqlx::query_scalar(
                "SELECT CAST(id AS SIGNED) FROM information_schema.processlist \
                 WHERE (db = ? OR user = ?) AND id <> CONNECTION_ID()",
            )
            .bind(&name)
            .bind(format!("{name}_r"))
            .fetch_all(&mut admin)
            .await?;
            for id in left {
                // One that ended meanwhile is no longer there to kill.
                let _ = admin.execute(format!("KILL {id}").as_str()).await;
            }
            admin
                .execute(format!("DROP DATABASE IF EXISTS `{name}`").as_str())
                .await?;
            admin
                .execute(format!("DROP USER IF EXISTS '{name}_r'@'%'").as_str())
                .await?;
            Ok(())
        });
    }
}

/// Drop cannot await; clean up on a thread with its own runtime so it works from any test.
/// (The test's own connections run on the test's runtime, which waits here: `work` opens its
/// own.) A failure fails the test, naming `what`: a warning in a passing test's captured
/// output went unread while a helper defect left a MariaDB database behind on every run.
/// (Not while the test is already failing: a second panic would abort the whole run.)
fn drop_on_thread<F, E>(what: String, work: F)
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime for cleanup");
        rt.block_on(work)
            .map_err(|e| format!("could not remove {what}: {e}"))
    });
    let failure = match handle.join() {
        Ok(Ok(())) => return,
        Ok(Err(failure)) => failure,
        Err(_) => "the cleanup thread panicked".to_owned(),
    };
    if std::thread::panicking() {
        eprintln!("warning: {failure}");
    } else {
        panic!("{failure}");
    }
}

pub fn source(name: &str, url: &str) -> SourceConfig {
    sql_source(name, url).into()
}

/// A read of `query` with nothing else asked: no needed columns, order, filter or digests.
pub fn read_request(query: &str) -> trueup::source::ReadRequest {
    trueup::source::ReadRequest::plain(trueup::domain::Read::Sql(query.to_owned()))
}

/// A database source's settings, to change before it is opened.
pub fn sql_source(name: &str, url: &str) -> SqlSource {
    SqlSource {
        name: SourceName::parse(name).unwrap(),
        kind: SourceKind::of_url(url).unwrap(),
        url: SecretUrl::new(url),
        pool_size: 2,
        statement_timeout: HumanDuration::from_std(Duration::from_secs(30)),
        on_writable: WritablePolicy::Warn,
        on_privileged: trueup::config::PrivilegedPolicy::Refuse,
    }
}

pub async fn sources(list: &[(&str, &str)]) -> Sources {
    let configs: BTreeMap<SourceName, SourceConfig> = list
        .iter()
        .map(|(n, u)| (SourceName::parse(n).unwrap(), source(n, u)))
        .collect();
    Sources::open_all(&configs).await.expect("open sources")
}

/// A reconcile of `left` and `right` (each a source name and a query) on `key`, every other
/// setting at its default; a test sets the fields it exercises.
pub fn reconcile_invariant(
    name: &str,
    left: (&str, &str),
    right: (&str, &str),
    key: &[&str],
) -> trueup::domain::Invariant {
    use trueup::domain::{ColumnName, InvariantName, QuerySide, ReconcileSpec};
    let side = |(source, query): (&str, &str)| QuerySide {
        source: SourceName::parse(source).unwrap(),
        query: trueup::domain::Read::Sql(query.into()),
    };
    trueup::domain::Invariant {
        name: InvariantName::parse(name).unwrap(),
        description: None,
        owner: None,
        severity: trueup::domain::Severity::High,
        schedule: None,
        time_column: None,
        grace: None,
        alert: Default::default(),
        notify: None,
        sample_limit: 10,
        violation_budget: 1_000_000,
        spec: trueup::domain::InvariantSpec::Reconcile(ReconcileSpec {
            left: side(left),
            right: side(right),
            key: key.iter().map(|k| ColumnName::parse(k).unwrap()).collect(),
            expect: trueup::domain::Expect::ExactlyOne,
            compare: None,
            mode: trueup::domain::ReconcileMode::Auto,
            incremental: None,
            segments: None,
            window: None,
        }),
        compensate: Default::default(),
        replay: None,
        slo: None,
        runbook_url: None,
        labels: Default::default(),
        defined_at: (std::path::PathBuf::from("test"), 1),
    }
}

/// Every way a reconcile compares: each must find what a plain stream finds.
pub const MODES: [trueup::domain::ReconcileMode; 3] = [
    trueup::domain::ReconcileMode::Stream,
    trueup::domain::ReconcileMode::Checksum,
    trueup::domain::ReconcileMode::Auto,
];

/// `inv` (a reconcile) evaluated in `mode`: its violations and stats; a failure panics,
/// naming the mode.
pub async fn evaluate_in(
    mut inv: trueup::domain::Invariant,
    mode: trueup::domain::ReconcileMode,
    srcs: &Sources,
) -> (Vec<trueup::domain::Violation>, trueup::domain::RunStats) {
    reconcile_spec(&mut inv).mode = mode;
    let mut sink = trueup::engine::Collect::default();
    let stats = trueup::engine::evaluate(&inv, srcs, chrono::Utc::now(), &mut sink)
        .await
        .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
    (sink.0, stats)
}

/// The reconcile settings of `inv` (a reconcile), to change.
pub fn reconcile_spec(inv: &mut trueup::domain::Invariant) -> &mut trueup::domain::ReconcileSpec {
    match &mut inv.spec {
        trueup::domain::InvariantSpec::Reconcile(spec) => spec,
        _ => panic!("{} is no reconcile", inv.name),
    }
}

pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Creates a SQLite file with `sql` applied.
pub async fn sqlite_file(path: &Path, sql: &str) {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
    c.close().await.unwrap();
}

/// A project in `dir` over two SQLite files, `app.db` (source `app`) and `ledger.db` (source
/// `ledger`), made with `app_sql` and `ledger_sql`, a SQLite store and an empty invariants
/// folder. Returns the config's path, the store's URL and both files.
pub async fn app_and_ledger_project(
    dir: &Path,
    app_sql: &str,
    ledger_sql: &str,
) -> (
    std::path::PathBuf,
    String,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let (app, ledger) = (dir.join("app.db"), dir.join("ledger.db"));
    sqlite_file(&app, app_sql).await;
    sqlite_file(&ledger, ledger_sql).await;
    let config = dir.join("trueup.yaml");
    let store_url = sqlite_url(&dir.join("trueup.db"));
    std::fs::write(
        &config,
        format!(
            "store: {store_url}\nsources:\n  app: {{url: \"{}\"}}\n  ledger: {{url: \"{}\"}}\n",
            sqlite_url(&app),
            sqlite_url(&ledger)
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    (config, store_url, app, ledger)
}

/// The demo in `dir` with every invariant's schedule replaced by `schedule` (or removed, so
/// they run only when asked), and `extra` appended to its trueup.yaml. Without the invariant
/// on the payment provider's API, which only a trueup process serves: these tests open the
/// demo in-process (`cli.rs` runs the whole demo through the binary).
pub async fn demo_with(dir: &Path, schedule: Option<&str>, extra: &str) -> trueup::config::Config {
    let config_path = trueup::demo::create(dir).await.unwrap();
    std::fs::remove_file(dir.join("invariants/provider.yaml")).unwrap();
    let text: Vec<String> = trueup::demo::INVARIANTS
        .lines()
        .filter_map(
            |l| match (l.trim_start().starts_with("schedule:"), schedule) {
                (true, Some(s)) => Some(format!("    schedule: \"{s}\"")),
                (true, None) => None,
                (false, _) => Some(l.to_owned()),
            },
        )
        .collect();
    std::fs::write(dir.join("invariants/demo.yaml"), text.join("\n")).unwrap();
    let mut config = std::fs::read_to_string(&config_path).unwrap();
    // The demo's own `serve:` section comes last; a test's replaces it.
    if !extra.is_empty()
        && let Some(at) = config.find("\nserve:\n")
    {
        let start = config[..at]
            .rfind("\n#")
            .filter(|c| at - c < 200)
            .unwrap_or(at);
        config.truncate(start + 1);
    }
    config.push_str(extra);
    std::fs::write(&config_path, config).unwrap();
    trueup::config::Config::load(&config_path).unwrap()
}

/// The `trueup` binary with `--config` and an acting identity (`TRUEUP_ACTOR`).
pub fn trueup_cli(config: &Path, actor: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_trueup"));
    c.arg("--config").arg(config).env("TRUEUP_ACTOR", actor);
    c
}

/// A finished command's stdout then stderr, for assertions and their messages.
pub fn combined_output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command to completion without blocking the async runtime (a test server on the
/// same runtime keeps answering).
pub async fn output_off_runtime(mut cmd: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Debian's Chromium; `.ci/run` installs it. A test that needs it fails (never skips) when it
/// is missing.
pub fn chromium() -> &'static str {
    const PATH: &str = "/usr/bin/chromium";
    assert!(
        Path::new(PATH).exists(),
        "{PATH} is missing: install Debian's chromium (`.ci/run` does)"
    );
    PATH
}

/// Loads `page` in headless Chromium, saves a screenshot of it to `png` and a print of it to
/// the same name with `.pdf`, and returns the DOM as Chromium built it.
pub async fn render_in_chromium(page: &Path, png: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[String]| {
        let mut c = std::process::Command::new(chromium());
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()));
        c
    };
    let shot = output_off_runtime(run(&[format!("--screenshot={}", png.display())])).await;
    assert!(shot.status.success(), "{}", combined_output(&shot));
    let png_bytes = std::fs::read(png).unwrap();
    assert!(
        png_bytes.starts_with(b"\x89PNG") && png_bytes.len() > 10_000,
        "the screenshot is not a rendered page ({} bytes)",
        png_bytes.len()
    );
    let pdf = png.with_extension("pdf");
    let printed = output_off_runtime(run(&[
        "--no-pdf-header-footer".to_owned(),
        format!("--print-to-pdf={}", pdf.display()),
    ]))
    .await;
    assert!(printed.status.success(), "{}", combined_output(&printed));
    let pdf_bytes = std::fs::read(&pdf).unwrap();
    assert!(
        pdf_bytes.starts_with(b"%PDF") && pdf_bytes.len() > 5_000,
        "the page does not print ({} bytes)",
        pdf_bytes.len()
    );
    let dom = output_off_runtime(run(&["--dump-dom".to_owned()])).await;
    assert!(dom.status.success(), "{}", combined_output(&dom));
    String::from_utf8(dom.stdout).unwrap()
}

/// Waits until `check` holds, asking every 100 ms; fails the test with `what` after
/// `timeout`. The one way a test waits for something to happen.
pub async fn wait_for<F, Fut>(what: &str, timeout: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < until {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The NATS server with JetStream this machine runs (`.ci/run` starts it).
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// A message to publish: its subject under the stream's prefix, its headers, its payload.
pub type TestMessage = (String, Vec<(String, String)>, serde_json::Value);

/// A fresh JetStream stream on subjects `<prefix>.>`, deleted when this goes out of scope.
pub struct TestStream {
    pub name: String,
    /// Every subject of the stream starts with it.
    pub prefix: String,
    pub js: async_nats::jetstream::Context,
}

impl TestStream {
    pub async fn new() -> Self {
        let name = unique_name("TRUEUP_TEST").to_uppercase();
        let prefix = name.to_lowercase();
        let client = async_nats::connect(NATS_URL)
            .await
            .expect("NATS with JetStream must run on 127.0.0.1:4222 (.ci/run starts it)");
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            // Longer than any test runs, so that a repeated Nats-Msg-Id is always caught.
            duplicate_window: std::time::Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .expect("create the test stream");
        Self { name, prefix, js }
    }

    /// Publishes each message (subject under the prefix, headers, JSON payload), then waits
    /// for the stream's acknowledgement of each: they are sent without waiting in between.
    pub async fn publish_all(&self, messages: &[TestMessage]) {
        // The client holds at most 5,000 acknowledgements in flight: await them a thousand
        // at a time.
        let mut acks = Vec::with_capacity(1_000);
        for (subject, headers, payload) in messages {
            let mut map = async_nats::HeaderMap::new();
            for (k, v) in headers {
                map.insert(k.as_str(), v.as_str());
            }
            acks.push(
                self.js
                    .publish_with_headers(
                        format!("{}.{subject}", self.prefix),
                        map,
                        serde_json::to_vec(payload).unwrap().into(),
                    )
                    .await
                    .expect("publish"),
            );
            if acks.len() == 1_000 {
                for ack in acks.drain(..) {
                    ack.await.expect("the stream's acknowledgement");
                }
            }
        }
        for ack in acks {
            ack.await.expect("the stream's acknowledgement");
        }
    }
}

impl TestStream {
    /// Every message the stream holds, in stream order.
    pub async fn messages(&self) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let mut s = self.js.get_stream(&self.name).await.unwrap();
        let last = s.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            out.push(s.get_raw_message(seq).await.unwrap());
        }
        out
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        drop_on_thread(format!("the test stream {name}"), async move {
            let client = async_nats::connect(NATS_URL).await?;
            match async_nats::jetstream::new(client)
                .delete_stream(&name)
                .await
            {
                // A test that deleted its stream itself left nothing to delete.
                Err(e) if !e.to_string().contains("stream not found") => Err(e.into()),
                _ => Ok::<_, async_nats::Error>(()),
            }
        });
    }
}

/// The Redis server this machine runs (`.ci/run` starts it).
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// A fresh key prefix on Redis; every key under it is deleted when this goes out of scope.
pub struct TestRedis {
    pub prefix: String,
    pub con: redis::aio::MultiplexedConnection,
}

impl TestRedis {
    pub async fn new() -> Self {
        let prefix = unique_name("trueup_test");
        let con = redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis must run on 127.0.0.1:6379 (.ci/run starts it)");
        Self { prefix, con }
    }

    /// `key` under the prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        drop_on_thread(format!("the test keys {prefix}:*"), async move {
            let mut con = redis::Client::open(REDIS_URL)?
                .get_multiplexed_async_connection()
                .await?;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query_async(&mut con)
                .await?;
            if !keys.is_empty() {
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut con)
                    .await?;
            }
            Ok::<_, redis::RedisError>(())
        });
    }
}

/// The keys (a single integer column) of `invariant`'s violations with `status`, by kind.
pub async fn keys_by_kind(
    store: &dyn trueup::store::Store,
    invariant: &str,
    status: trueup::store::StatusFilter,
) -> BTreeMap<String, std::collections::BTreeSet<i64>> {
    let list = store
        .violations(&trueup::store::ViolationFilter {
            invariants: vec![invariant.into()],
            status,
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out: BTreeMap<String, std::collections::BTreeSet<i64>> = BTreeMap::new();
    for v in list {
        out.entry(v.kind)
            .or_default()
            .insert(v.key[0].as_i64().unwrap());
    }
    out
}
