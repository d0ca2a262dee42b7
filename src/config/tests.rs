//! Parsing `trueup.yaml`: defaults, secrets, every problem at once.

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "LEDGER_PASSWORD" => Some("s3cret".into()),
        "PAYMENTS_TOKEN" => Some("tok_live_9f".into()),
        "ORDERS_WEBHOOK_SECRET" => Some("whsec_0123456789abcdef".into()),
        "SHORT_SECRET" => Some("short".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, Diagnostics> {
    Config::parse(text, Path::new("conf/trueup.yaml"), &env)
}

#[test]
fn an_empty_file_gives_the_embedded_sqlite_store() {
    let c = parse("").unwrap();
    assert_eq!(c.store.expose(), "sqlite://conf/trueup.db");
    assert_eq!(c.invariants_dir, Path::new("conf/invariants"));
}

#[test]
fn passwords_come_from_the_environment_and_never_print() {
    let c =
        parse("sources:\n  ledger:\n    url: postgres://app:${LEDGER_PASSWORD}@db:5432/ledger\n")
            .unwrap();
    let src = sql_source(&c, "ledger");
    assert_eq!(src.url.expose(), "postgres://app:s3cret@db:5432/ledger");
    assert_eq!(src.kind, SourceKind::Postgres);
    let shown = format!("{c:?} {}", src.url);
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains("postgres://app:***@db:5432/ledger"),
        "{shown}"
    );
}

#[test]
fn a_variable_anywhere_in_a_url_shows_as_its_reference_never_its_value() {
    // Found by fuzzing: the userinfo split at the first `@` left a second `user:${VAR}@`
    // in the query, where no `name=` said it was a secret.
    let c = parse(
            "sources:\n  ledger:\n    url: postgres://app:${LEDGER_PASSWORD}@db/ledger?x:${LEDGER_PASSWORD}@db&application_name=${LEDGER_PASSWORD}\n",
        )
        .unwrap();
    let src = sql_source(&c, "ledger");
    let shown = format!("{c:?} {}", src.url);
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
            shown.contains(
                "postgres://app:***@db/ledger?x:${LEDGER_PASSWORD}@db&application_name=${LEDGER_PASSWORD}"
            ),
            "{shown}"
        );
}

#[test]
fn a_password_in_the_query_comes_from_the_environment_and_never_prints() {
    let c = parse(
            "store: postgres://app@db/trueup?sslmode=require&password=${LEDGER_PASSWORD}\nsources:\n  ledger:\n    url: mysql://app@db/ledger?ssl-mode=REQUIRED&sslpassword=${LEDGER_PASSWORD}&token=${LEDGER_PASSWORD}#x\n",
        )
        .unwrap();
    assert_eq!(
        c.store.expose(),
        "postgres://app@db/trueup?sslmode=require&password=s3cret"
    );
    let src = sql_source(&c, "ledger");
    let shown = format!("{c:?} {} {}", src.url, c.store);
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains("postgres://app@db/trueup?sslmode=require&password=***"),
        "{shown}"
    );
    assert!(
        shown.contains("mysql://app@db/ledger?ssl-mode=REQUIRED&sslpassword=***&token=***#x"),
        "{shown}"
    );
}

#[test]
fn query_parameters_that_name_files_or_settings_are_not_secrets() {
    let c = parse(
            "sources:\n  ledger:\n    url: \"postgres://app:${LEDGER_PASSWORD}@db/l?sslmode=verify-full&sslkey=/etc/k.pem&sslcert=/etc/c.pem&target_session_attrs=read-write\"\n",
        )
        .unwrap();
    let src = sql_source(&c, "ledger");
    assert!(
        src.url
            .redacted()
            .contains("sslkey=/etc/k.pem&sslcert=/etc/c.pem")
    );
}

#[test]
fn a_malformed_url_never_shows_the_password_it_was_given() {
    // Found by fuzzing `config_file`: no `://`, so no userinfo to redact.
    let err = parse("sources:\n  shop:\n    url: \"pg/:x/u:${LEDGER_PASSWORD}@db/shop\"\n")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("s3cret"), "{err}");
    assert!(err.contains("${LEDGER_PASSWORD}"), "{err}");
    let shown = SecretUrl::new("postgres:u:s3cret@db/x").to_string();
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[test]
fn a_literal_password_in_the_query_is_refused_with_the_line_and_the_fix() {
    for (url, name) in [
        ("postgres://app@db/ledger?password=hunter2", "password"),
        (
            "postgres://app@db/ledger?sslmode=disable&sslpassword=hunter2",
            "sslpassword",
        ),
        ("mysql://app@db/ledger?Password=hunter2&x=1", "Password"),
    ] {
        let err = parse(&format!("sources:\n  ledger:\n    url: \"{url}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("conf/trueup.yaml:3:"), "{err}");
        assert!(
            err.contains(&format!("`{name}=` written in the file")),
            "{err}"
        );
        assert!(err.contains("${DB_PASSWORD}"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
    let err = parse("store: postgres://app@db/t?password=hunter2\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`password=` written in the file"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_literal_password_is_refused_with_the_line_and_the_fix() {
    let err = parse("sources:\n  ledger:\n    url: postgres://app:hunter2@db/ledger\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("conf/trueup.yaml:3:"), "{err}");
    assert!(err.contains("${DB_PASSWORD}"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_missing_environment_variable_is_named() {
    let err = parse("store: postgres://u:${NOPE}@h/db\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`NOPE` is not set"), "{err}");
}

#[test]
fn every_source_problem_is_reported_at_once() {
    let err = parse(
            "sources:\n  a:\n    url: oracle://x\n  b:\n    url: postgres://h/db\n    statement_timeout: soon\n  c:\n    kind: mysql\n    url: postgres://h/db\n",
        )
        .unwrap_err();
    assert_eq!(err.0.len(), 3, "{err}");
}

#[test]
fn serve_settings_have_defaults_and_are_checked() {
    let c = parse("").unwrap();
    assert_eq!(c.serve, ServeConfig::default());
    let c = parse("serve:\n  listen: 0.0.0.0:9000\n  run_timeout: 90s\n").unwrap();
    assert_eq!(c.serve.listen.port(), 9000);
    assert_eq!(c.serve.run_timeout.as_std().as_secs(), 90);
    let err = parse("serve:\n  listen: localhost\n  shutdown_grace: never\n").unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
}

#[test]
fn api_tokens_come_from_the_environment_or_as_hashes_never_literally() {
    let env = |name: &str| match name {
        "ALICE" => Some("alice-token-0123456789".to_owned()),
        _ => None,
    };
    let hash = hex::encode(ApiToken::digest("bob-token-0123456789"));
    let c = Config::parse(
            &format!("serve:\n  tokens:\n    - {{name: alice, role: approver, token: \"${{ALICE}}\"}}\n    - {{name: bob, role: viewer, sha256: {hash}}}\n"),
            Path::new("t.yaml"),
            &env,
        )
        .unwrap();
    assert_eq!(c.serve.tokens.len(), 2);
    assert_eq!(
        c.serve.tokens[0].sha256,
        ApiToken::digest("alice-token-0123456789")
    );
    assert_eq!(c.serve.tokens[1].role, Role::Viewer);
    assert!(!format!("{c:?}").contains(&hash));
    let err = Config::parse(
            "serve:\n  tokens:\n    - {name: eve, role: admin, token: hunter2hunter2hunter2}\n    - {name: mal, role: god, sha256: abc}\n",
            Path::new("t.yaml"),
            &env,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("written in the file"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("viewer, operator, approver or admin"), "{err}");
}

#[test]
fn notification_channels_are_parsed_and_checked() {
    let c = parse(
            "notifications:\n  channels:\n    oncall:\n      email: {smtp: \"smtp://127.0.0.1:2525\", from: trueup@example.com, to: [oncall@example.com]}\n    ops:\n      webhook: {url: \"http://127.0.0.1:9/hook\", format: slack}\n",
        )
        .unwrap();
    assert_eq!(c.channels.len(), 2);
    assert!(
        matches!(&c.channels["ops"], ChannelConfig::Webhook(w) if w.format == WebhookFormat::Slack)
    );
    let err = parse(
            "notifications:\n  channels:\n    a:\n      email: {smtp: \"mail:25\", from: x@y, to: [z@w]}\n    b:\n      webhook: {url: ftp://x}\n    c:\n      email: {smtp: \"smtp://h:25\", from: x@y, to: [z@w], password: hunter2}\n",
        )
        .unwrap_err();
    assert_eq!(err.0.len(), 3, "{err}");
    assert!(!err.to_string().contains("hunter2"));
}

#[test]
fn a_key_given_twice_is_named_with_its_line_in_our_words() {
    let err = parse("store: sqlite://a.db\nstore: sqlite://b.db\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("conf/trueup.yaml:2:")
            && err.contains("`store` is given twice in the same mapping; keep one"),
        "{err}"
    );
    assert!(!err.contains("DuplicateKeyPolicy"), "{err}");
}

#[test]
fn unknown_fields_are_errors() {
    let err = parse("stor: sqlite://x.db\n").unwrap_err().to_string();
    assert!(err.contains("stor"), "{err}");
}

#[test]
fn relative_sqlite_sources_are_relative_to_the_config_file() {
    let c = parse("sources:\n  shop:\n    url: sqlite://shop.db\n").unwrap();
    let src = sql_source(&c, "shop");
    assert_eq!(src.url.expose(), "sqlite://conf/shop.db");
}

#[test]
fn targets_and_plan_rules_are_read() {
    let c = parse(
            "targets:\n  ledger-writer:\n    url: postgres://writer:${LEDGER_PASSWORD}@db/ledger\n  billing:\n    base_url: https://billing.example/api\n    headers: {Authorization: \"Bearer ${LEDGER_PASSWORD}\"}\nplans:\n  ttl: 2h\n  approvals: {critical: 3}\n",
        )
        .unwrap();
    let Some(TargetConfig::Sql(sql)) = c
        .targets
        .values()
        .find(|t| t.name().as_str() == "ledger-writer")
    else {
        panic!("{:?}", c.targets)
    };
    assert_eq!(sql.kind, SourceKind::Postgres);
    assert_eq!(sql.marker_table, DEFAULT_MARKER_TABLE);
    let Some(TargetConfig::Http(http)) =
        c.targets.values().find(|t| t.name().as_str() == "billing")
    else {
        panic!("{:?}", c.targets)
    };
    assert_eq!(http.base_url, "https://billing.example/api/");
    assert!(!http.allow_private_network);
    assert_eq!(c.plans.approvals_for(crate::domain::Severity::Critical), 3);
    assert_eq!(c.plans.approvals_for(crate::domain::Severity::High), 1);
    assert_eq!(c.plans.ttl.as_std().as_secs(), 7200);
}

#[test]
fn nats_and_redis_targets_are_read_with_their_stream_and_marker() {
    let c = parse(
        "targets:\n  bus:\n    url: nats://app:${LEDGER_PASSWORD}@127.0.0.1:4222\n    stream: ORDERS\n    timeout: 3s\n  cache:\n    url: redis://127.0.0.1:6379/2\n",
    )
    .unwrap();
    let Some(TargetConfig::Nats(nats)) = c.targets.values().find(|t| t.name().as_str() == "bus")
    else {
        panic!("{:?}", c.targets)
    };
    assert_eq!(nats.stream, "ORDERS");
    assert_eq!(nats.timeout.as_std().as_secs(), 3);
    assert!(nats.url.expose().contains("s3cret"));
    assert!(!nats.url.to_string().contains("s3cret"));
    let Some(TargetConfig::Redis(redis)) =
        c.targets.values().find(|t| t.name().as_str() == "cache")
    else {
        panic!("{:?}", c.targets)
    };
    assert_eq!(redis.marker_key, DEFAULT_MARKER_KEY);
    assert_eq!(redis.timeout.as_std().as_secs(), 10);
}

#[test]
fn nats_and_redis_target_mistakes_say_what_belongs_where() {
    for (text, want) in [
        (
            "targets:\n  bus:\n    url: nats://127.0.0.1:4222\n",
            "targets.bus: a NATS target needs `stream:`",
        ),
        (
            "targets:\n  bus:\n    url: nats://127.0.0.1:4222\n    stream: orders.all\n",
            "stream `orders.all` is not a JetStream stream name",
        ),
        (
            "targets:\n  bus:\n    url: nats://127.0.0.1:4222\n    stream: ORDERS\n    marker_table: t\n",
            "`marker_table` does not belong to a NATS target, which has url, stream and timeout",
        ),
        (
            "targets:\n  cache:\n    url: redis://127.0.0.1\n    stream: ORDERS\n",
            "`stream` does not belong to a Redis target, which has url, marker_key and timeout",
        ),
        (
            "targets:\n  cache:\n    url: redis://127.0.0.1\n    marker_key: \"a b\"\n",
            "marker_key `a b` must be a Redis key without spaces",
        ),
        (
            "targets:\n  bus:\n    url: nats://s3cr3t@127.0.0.1\n    stream: ORDERS\n",
            "url holds a credential before `@` written in the file",
        ),
        (
            "targets:\n  db:\n    url: postgres://db/x\n    stream: ORDERS\n",
            "`stream` belongs to a NATS or Redis target",
        ),
        (
            "targets:\n  bus:\n    url: tls://127.0.0.1:4222\n    stream: ORDERS\n",
            "TLS to NATS or Redis is not built in",
        ),
        (
            "targets:\n  cache:\n    url: redis://127.0.0.1\n    timeout: 0s\n",
            "targets.cache: timeout: give more than 0s",
        ),
        (
            "targets:\n  db:\n    url: kafka://broker\n",
            "nats:// (a JetStream stream) or redis:// (Redis streams)",
        ),
    ] {
        let err = parse(text).expect_err(want).to_string();
        assert!(err.contains(want), "{want}: {err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }
}

#[test]
fn a_credential_header_written_in_the_file_is_refused_and_one_from_the_environment_is_read() {
    for header in [
        "Authorization: \"Bearer abc123\"",
        "Proxy-Authorization: \"Basic abc123\"",
        "X-Api-Key: abc123",
        "Cookie: \"session=abc123\"",
    ] {
        let name = header.split(':').next().unwrap();
        let err = parse(&format!(
                "targets:\n  billing:\n    base_url: https://billing.example/\n    headers:\n      {header}\n"
            ))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("conf/trueup.yaml:5:"), "{err}");
        assert!(
            err.contains(&format!(
                "header `{name}` carries a credential written in the file"
            )),
            "{err}"
        );
        assert!(err.contains("${BILLING_TOKEN}"), "{err}");
        assert!(!err.contains("abc123"), "{err}");
    }
    let c = parse(
            "targets:\n  billing:\n    base_url: https://billing.example/\n    headers: {X-Api-Key: \"${LEDGER_PASSWORD}\", Accept: application/json}\n",
        )
        .unwrap();
    let Some(TargetConfig::Http(http)) = c.targets.values().next() else {
        panic!("{:?}", c.targets)
    };
    let key = http.headers.iter().find(|(h, _)| h == "X-Api-Key").unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&key.1), "s3cret");
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn a_webhook_url_with_a_literal_token_in_its_query_is_refused() {
    let err = parse(
            "notifications:\n  channels:\n    ops:\n      webhook: {url: \"https://hooks.example/x?token=abc123\"}\n",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("`token=` written in the file"), "{err}");
    assert!(!err.contains("abc123"), "{err}");
}

#[test]
fn a_target_mistake_says_where_and_what_to_write() {
    let err = parse("targets:\n  w:\n    url: postgres://u:pw@db/x\n  h:\n    base_url: ftp://x/\n  b:\n    url: sqlite://x.db\n    base_url: https://x/\nplans:\n  approvals: {urgent: 2}\n")
            .unwrap_err();
    let shown: Vec<String> = err.0.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 4, "{shown:#?}");
    assert!(
        shown
            .iter()
            .any(|s| s.contains(":3:") && s.contains("password written in the file")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.contains(":5:") && s.contains("http:// or https://")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.contains("targets.b") && s.contains("not both")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.contains("`urgent` is not a severity")),
        "{shown:#?}"
    );
}

#[test]
fn a_pagerduty_channel_takes_its_routing_key_from_the_environment_only() {
    let env =
        |name: &str| (name == "PD_KEY").then(|| "R0UT1NGKEY0123456789abcdefABCDEF".to_owned());
    let c = Config::parse(
        "notifications:\n  channels:\n    pager:\n      webhook: {url: \"https://events.pagerduty.com/v2/enqueue\", format: pagerduty, routing_key: \"${PD_KEY}\"}\n",
        Path::new("t.yaml"),
        &env,
    )
    .unwrap();
    let ChannelConfig::Webhook(w) = &c.channels["pager"] else {
        panic!("a webhook")
    };
    assert_eq!(w.format, WebhookFormat::PagerDuty);
    assert_eq!(
        w.routing_key
            .as_ref()
            .map(secrecy::ExposeSecret::expose_secret),
        Some("R0UT1NGKEY0123456789abcdefABCDEF")
    );
    assert!(!format!("{c:?}").contains("R0UT1NGKEY"));
    let err = Config::parse(
        "notifications:\n  channels:\n    a:\n      webhook: {url: \"https://x.example\", format: pagerduty}\n    b:\n      webhook: {url: \"https://x.example\", format: pagerduty, routing_key: R0UT1NGKEY0123456789abcdefABCDEF}\n    c:\n      webhook: {url: \"https://x.example\", routing_key: \"${PD_KEY}\"}\n    d:\n      webhook: {url: \"https://x.example\", format: teams}\n",
        Path::new("t.yaml"),
        &env,
    )
    .unwrap_err()
    .to_string();
    for says in [
        "format: pagerduty needs `routing_key: ${PAGERDUTY_ROUTING_KEY}`",
        "the routing key is written in the file",
        "routing_key applies to `format: pagerduty` only",
        "format `teams` is unknown; use json, slack or pagerduty",
    ] {
        assert!(err.contains(says), "{says}\n---\n{err}");
    }
    assert!(!err.contains("R0UT1NGKEY"), "{err}");
}

#[test]
fn a_route_tree_inherits_its_parents_settings_and_routes_by_labels() {
    let c = parse(
        "notifications:\n  channels:\n    mail: {webhook: {url: \"https://mail.example\"}}\n    pager: {webhook: {url: \"https://pager.example\"}}\n    chat: {webhook: {url: \"https://chat.example\"}}\n  route:\n    channels: [mail]\n    group_by: [owner]\n    group_wait: 10s\n    routes:\n      - matchers: ['severity=critical']\n        channels: [pager]\n        continue: true\n      - matchers: ['team=~\"pay.*\"']\n        channels: [chat]\n        group_interval: 1m\n",
    )
    .unwrap();
    let route = c.route();
    let labels = |pairs: &[(&str, &str)]| {
        crate::domain::AlertLabels(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    };
    let d = route.deliveries(&labels(&[("severity", "critical"), ("team", "payments")]));
    let channels: Vec<&str> = d.iter().map(|d| d.channel.as_str()).collect();
    assert_eq!(channels, ["pager", "chat"]);
    assert_eq!(d[1].group_wait, chrono::TimeDelta::seconds(10), "inherited");
    assert_eq!(d[1].group_interval, chrono::TimeDelta::minutes(1));
    assert_eq!(
        d[0].group_interval,
        chrono::TimeDelta::minutes(5),
        "the default"
    );
    let other = route.deliveries(&labels(&[("severity", "low")]));
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].channel, "mail");
    // Without a route: every channel, at once, each notice on its own.
    let plain = parse(
        "notifications:\n  channels:\n    mail: {webhook: {url: \"https://mail.example\"}}\n",
    )
    .unwrap();
    let d = plain.route().deliveries(&labels(&[("invariant", "a")]));
    assert_eq!(d[0].group_wait, chrono::TimeDelta::zero());
}

#[test]
fn every_mistake_in_a_route_tree_is_located_and_explained() {
    let err = parse(
        "notifications:\n  channels:\n    mail: {webhook: {url: \"https://mail.example\"}}\n  route:\n    matchers: ['a=b']\n    continue: true\n    routes:\n      - matchers: ['team', 'x=~(']\n        channels: [pagr]\n        group_by: ['...', owner]\n        group_wait: soon\n      - group_by: ['1x']\n        group_interval: 48h\n",
    )
    .unwrap_err()
    .to_string();
    for says in [
        "trueup.yaml:5:",
        "the root route matches every alert and takes no `matchers`",
        "the root route has no siblings to continue to",
        "notifications.route.routes[0]: matchers: `team` is not a matcher",
        "matchers: `(` is not a regular expression",
        "channels: unknown channel `pagr` (configured: mail)",
        "group_by: `...` (each alert on its own) stands alone",
        "group_wait: ",
        "notifications.route.routes[1]: group_by: `1x` is not a label name",
        "group_interval: at most 24h",
    ] {
        assert!(err.contains(says), "missing {says:?} in:\n{err}");
    }
}

/// The database source `name` of `c`.
fn sql_source<'a>(c: &'a Config, name: &str) -> &'a crate::config::SqlSource {
    match &c.sources[&SourceName::parse(name).unwrap()] {
        crate::config::SourceConfig::Sql(s) => s,
        other => panic!("`{name}` is not a database source: {other:?}"),
    }
}

#[test]
fn an_http_source_has_a_base_url_headers_from_the_environment_a_rate_and_retries() {
    let c = parse(
        "sources:
  payments:
    kind: http
    base_url: https://api.payments.example/v1
    headers:
      Authorization: \"Bearer ${PAYMENTS_TOKEN}\"
      Accept: application/json
    timeout: 10s
    rate: 2.5
    retries: 3
",
    )
    .unwrap();
    let SourceConfig::Http(api) = &c.sources[&SourceName::parse("payments").unwrap()] else {
        panic!("an HTTP source")
    };
    assert_eq!(api.base_url, "https://api.payments.example/v1/");
    let headers: Vec<(&str, &str)> = api
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), secrecy::ExposeSecret::expose_secret(v)))
        .collect();
    assert_eq!(
        headers,
        [
            ("Accept", "application/json"),
            ("Authorization", "Bearer tok_live_9f")
        ]
    );
    assert_eq!(
        (api.timeout.as_std().as_secs(), api.rate, api.retries),
        (10, Some(2.5), 3)
    );
    assert!(!api.allow_private_network);
    // The token never prints.
    assert!(!format!("{c:?}").contains("tok_live_9f"));
    // Defaults: 30 s, no rate limit, 5 retries.
    let c = parse("sources:\n  api: {kind: http, base_url: \"https://api.example/\"}\n").unwrap();
    let SourceConfig::Http(api) = &c.sources[&SourceName::parse("api").unwrap()] else {
        panic!()
    };
    assert_eq!(
        (api.timeout.as_std().as_secs(), api.rate, api.retries),
        (30, None, 5)
    );
}

#[test]
fn http_source_mistakes_are_each_explained_where_they_are() {
    let cases = [
        (
            "sources:\n  api:\n    kind: http\n    base_url: https://a.example/\n    headers: {Authorization: Bearer abc}\n",
            "header `Authorization` carries a credential written in the file",
            5,
        ),
        (
            "sources:\n  api:\n    kind: http\n    url: https://a.example/\n",
            "source `api`: `url` belongs to database sources; an HTTP source has base_url, headers, timeout, rate, retries and allow_private_network",
            3,
        ),
        (
            "sources:\n  api:\n    kind: http\n",
            "source `api`: an HTTP source needs `base_url:`",
            3,
        ),
        (
            "sources:\n  api:\n    kind: postgres\n    base_url: https://a.example/\n",
            "source `api`: kind is `postgres` but `base_url` is an HTTP API's; an HTTP source is `kind: http`",
            3,
        ),
        (
            "sources:\n  db:\n    url: postgres://db/x\n    rate: 5\n",
            "source `db`: `rate` belongs to HTTP sources (`kind: http`)",
            3,
        ),
        (
            "sources:\n  api: {kind: http, base_url: \"https://a.example/\", rate: 0}\n",
            "source `api`: rate `0` must be a number of requests per second, at least 0.001",
            2,
        ),
        (
            "sources:\n  api: {kind: http, base_url: \"ftp://a.example/\"}\n",
            "base_url `ftp://a.example/` must start with http:// or https://",
            2,
        ),
        (
            "sources:\n  api: {kind: http, base_url: \"https://a.example/\", retries: 50}\n",
            "source `api`: retries must be at most 20",
            2,
        ),
        (
            "sources:\n  db: {pool_size: 2}\n",
            "source `db`: give `url:` (a database: postgres://, mysql:// or sqlite://) or `kind: http` and `base_url:` (an HTTP API)",
            2,
        ),
    ];
    for (text, want, line) in cases {
        let errs = parse(text).expect_err(want).0;
        let found = errs.iter().find(|e| e.message.contains(want));
        assert!(found.is_some(), "{want}: {errs:?}");
        assert_eq!(found.unwrap().line, line, "{want}: {errs:?}");
    }
}

#[test]
fn a_nats_source_has_a_url_with_credentials_from_the_environment_and_a_timeout() {
    let c = parse(
        "sources:\n  orders:\n    kind: nats\n    url: nats://app:${LEDGER_PASSWORD}@nats:4222\n    timeout: 3s\n  events: {url: \"nats://127.0.0.1:4222\"}\n",
    )
    .unwrap();
    let SourceConfig::Nats(n) = &c.sources[&SourceName::parse("orders").unwrap()] else {
        panic!("a NATS source")
    };
    assert_eq!(n.url.expose(), "nats://app:s3cret@nats:4222");
    assert_eq!(n.timeout.as_std().as_secs(), 3);
    assert!(!format!("{c:?} {}", n.url).contains("s3cret"));
    // The kind follows from the scheme; the timeout defaults to 10 s.
    let SourceConfig::Nats(e) = &c.sources[&SourceName::parse("events").unwrap()] else {
        panic!("a NATS source")
    };
    assert_eq!(e.timeout.as_std().as_secs(), 10);
    for (text, want) in [
        (
            "sources:\n  o: {kind: nats}\n",
            "source `o`: a NATS source needs `url:`",
        ),
        (
            "sources:\n  o: {kind: nats, url: \"http://x:4222\"}\n",
            "source `o`: a NATS source's url starts with nats://",
        ),
        (
            "sources:\n  o: {url: \"nats://x:4222\", pool_size: 3}\n",
            "source `o`: `pool_size` does not belong to a NATS source",
        ),
        (
            "sources:\n  o: {url: \"nats://app:hunter2@x:4222\"}\n",
            "password",
        ),
        (
            "sources:\n  o: {url: \"nats://s3cr3ttoken@x:4222\"}\n",
            "source `o`: a NATS source's url holds a credential before `@` written in the file; write it from the environment, like `nats://${NATS_TOKEN}@host`",
        ),
    ] {
        let errs = parse(text).expect_err(want).0;
        assert!(
            errs.iter().any(|e| e.message.contains(want)),
            "{want}: {errs:?}"
        );
    }
}

#[test]
fn a_redis_source_has_a_url_with_its_password_from_the_environment() {
    let c = parse(
        "sources:\n  events: {url: \"redis://:${LEDGER_PASSWORD}@cache:6379/2\", timeout: 2s}\n",
    )
    .unwrap();
    let SourceConfig::Redis(r) = &c.sources[&SourceName::parse("events").unwrap()] else {
        panic!("a Redis source")
    };
    assert_eq!(r.url.expose(), "redis://:s3cret@cache:6379/2");
    assert_eq!(r.timeout.as_std().as_secs(), 2);
    assert!(!format!("{c:?} {}", r.url).contains("s3cret"));
    let errs = parse("sources:\n  e: {kind: redis, url: \"nats://x\"}\n")
        .unwrap_err()
        .0;
    assert!(
        errs.iter().any(|e| e
            .message
            .contains("a Redis source's url starts with redis://")),
        "{errs:?}"
    );
}

const BUS: &str = "sources:\n  bus:\n    url: nats://127.0.0.1:4222\n  cache:\n    url: redis://127.0.0.1:6379/0\n  shop:\n    url: sqlite://shop.db\n";

#[test]
fn event_logs_are_read_with_their_feeds_and_defaults() {
    let c = parse(&format!(
        "{BUS}event_logs:\n  orders:\n    event_id: data.id\n    event_time: $.data.created\n    max_event_bytes: 4096\n    from:\n      - nats: {{source: bus, stream: ORDERS, subject: \"orders.>\", ack_wait: 5s, batch: 100}}\n      - redis: {{source: cache, stream: orders, field: json, start: new}}\n      - webhook: {{secret: \"${{ORDERS_WEBHOOK_SECRET}}\", signature_header: Stripe-Signature}}\n"
    ))
    .unwrap();
    let log = &c.event_logs[&crate::domain::LogName::parse("orders").unwrap()];
    assert_eq!(log.shape.event_id.to_string(), "data.id");
    assert_eq!(
        log.shape.event_time.as_ref().unwrap().to_string(),
        "data.created"
    );
    assert_eq!(log.shape.max_event_bytes, 4096);
    let [LogFeed::Nats(n), LogFeed::Redis(r), LogFeed::Webhook(w)] = &log.feeds[..] else {
        panic!("{:?}", log.feeds);
    };
    assert_eq!(
        (n.stream.as_str(), n.subject.as_deref()),
        ("ORDERS", Some("orders.>"))
    );
    assert_eq!(
        (n.durable.as_str(), n.batch, n.start),
        ("trueup-orders", 100, FeedStart::All)
    );
    assert_eq!(n.ack_wait.to_string(), "5s");
    assert_eq!(n.server.url.expose(), "nats://127.0.0.1:4222");
    assert_eq!(
        (r.group.as_str(), r.field.as_deref(), r.start),
        ("trueup-orders", Some("json"), FeedStart::New)
    );
    assert_eq!((r.batch, r.claim_after.to_string().as_str()), (500, "1m"));
    assert_eq!(w.signature_header, "Stripe-Signature");
    assert_eq!(w.tolerance.to_string(), "5m");
    let shown = format!("{c:?}");
    assert!(!shown.contains("whsec_0123456789abcdef"), "{shown}");
    assert_eq!(log.webhook().unwrap().signature_header, "Stripe-Signature");
}

#[test]
fn event_log_problems_are_each_reported_with_the_log_line_and_fix() {
    let err = parse(&format!(
        "{BUS}event_logs:\n  orders:\n    from:\n      - nats: {{source: shop, stream: ORDERS}}\n      - redis: {{source: nowhere, stream: x}}\n      - webhook: {{secret: literal-secret-of-some-length}}\n  Bad:\n    event_id: id\n    from: []\n  hooks:\n    event_id: $\n    from:\n      - webhook: {{secret: \"${{SHORT_SECRET}}\"}}\n      - webhook: {{secret: \"${{ORDERS_WEBHOOK_SECRET}}\", tolerance: 0s}}\n      - {{nats: {{source: bus, stream: \"A.B\"}}, webhook: {{secret: x}}}}\n"
    ))
    .unwrap_err()
    .to_string();
    for says in [
        "conf/trueup.yaml:10:5: event log `orders`: needs `event_id:`",
        "event log `orders`: source `shop` is not a NATS server; a `nats:` feed reads a `kind: nats` source",
        "event log `orders`: source `nowhere` is not configured; add it under `sources:` with `url: redis://",
        "event log `orders`: the webhook secret is written in the file; write `secret: ${ORDERS_WEBHOOK_SECRET}`",
        "event log `Bad`: event log name `Bad`",
        "event log `Bad`: needs `from:`",
        "event log `hooks`: event_id names the whole payload",
        "event log `hooks`: the webhook secret from ${SHORT_SECRET} has 5 bytes; use at least 16",
        "event log `hooks`: has a second `webhook:` (the first is at line 20)",
        "event log `hooks`: from[2] must be exactly one of",
    ] {
        assert!(err.contains(says), "missing {says:?} in:\n{err}");
    }
}

#[test]
fn two_feeds_on_one_stream_consumer_are_refused_with_the_field_to_change() {
    let err = parse(&format!(
        "{BUS}event_logs:\n  a:\n    event_id: id\n    from:\n      - nats: {{source: bus, stream: ORDERS, durable: shared}}\n  b:\n    event_id: id\n    from:\n      - nats: {{source: bus, stream: ORDERS, durable: shared}}\n      - nats: {{source: bus, stream: ORDERS, subject: \"x.>\"}}\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("event log `b`: from[0] reads nats:bus/ORDERS with consumer `shared`, as a feed of log `a` does already; give one of them another `durable:`"),
        "{err}"
    );
    // Another durable on the same stream is another consumer.
    assert!(!err.contains("from[1]"), "{err}");
}

#[test]
fn retention_is_a_duration_of_an_hour_or_more() {
    let c = parse(&format!(
        "{BUS}event_logs:\n  orders:\n    event_id: id\n    retain: 30d\n    from:\n      - nats: {{source: bus, stream: ORDERS}}\n"
    ))
    .unwrap();
    let log = &c.event_logs[&crate::domain::LogName::parse("orders").unwrap()];
    assert_eq!(log.retain.unwrap().as_std().as_secs(), 30 * 86_400);
    let err = parse(&format!(
        "{BUS}event_logs:\n  orders:\n    event_id: id\n    retain: 10m\n    from:\n      - nats: {{source: bus, stream: ORDERS}}\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("event log `orders`: retain `10m` is shorter than 1h"),
        "{err}"
    );
    // A retention no clock can subtract is refused here, not a panic in serve's purge.
    let err = parse(&format!(
        "{BUS}event_logs:
  orders:
    event_id: id
    retain: 999999y
    from:
      - nats: {{source: bus, stream: ORDERS}}
"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("event log `orders`: retain `999999y` is longer than 100 years"),
        "{err}"
    );
}

#[test]
fn a_mysql_url_asking_for_another_character_set_or_time_zone_is_refused_with_the_line_and_the_fix()
{
    for (query, says) in [
        (
            "charset=latin1",
            "its URL sets `charset=latin1`; trueup's MySQL sessions are utf8mb4, in which every character passes as it is (in latin1, a character it lacks becomes `?`, and two different texts would read alike); remove `charset` from the URL",
        ),
        (
            "ssl-mode=disabled&collation=latin1_bin",
            "its URL sets `collation=latin1_bin`, which is not a utf8mb4 collation; trueup's MySQL sessions are utf8mb4, in which every character passes as it is; remove `collation` from the URL",
        ),
        (
            "timezone=%2B02:00",
            "its URL sets `timezone=+02:00`; trueup's MySQL sessions run in UTC: the protocol carries a TIMESTAMP without its offset, and in another time zone every one read or written would be shifted; remove `timezone` from the URL",
        ),
        (
            "time-zone=SYSTEM",
            "its URL sets `time-zone=SYSTEM`; trueup's MySQL sessions run in UTC",
        ),
        (
            "timezone=",
            "its URL sets `timezone=`; trueup's MySQL sessions run in UTC",
        ),
    ] {
        let url = format!("mysql://app@db/ledger?{query}");
        let err = parse(&format!("sources:\n  ledger:\n    url: \"{url}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("conf/trueup.yaml:3:10: source `ledger`: {says}")),
            "{err}"
        );
        // A target writes through the same session.
        let err = parse(&format!("targets:\n  ledger:\n    url: \"{url}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("conf/trueup.yaml:3:"), "{err}");
        assert!(err.contains(&format!("targets.ledger: {says}")), "{err}");
    }
    for query in [
        "charset=UTF8MB4&collation=utf8mb4_bin",
        "timezone=%2B00:00",
        "time-zone=UTC",
    ] {
        let url = format!("mysql://app@db/ledger?{query}");
        parse(&format!("sources:\n  ledger:\n    url: \"{url}\"\n"))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        parse(&format!("targets:\n  ledger:\n    url: \"{url}\"\n"))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    // The same settings mean nothing to PostgreSQL's URLs, which sqlx reads its own way.
    parse("sources:\n  pg:\n    url: \"postgres://app@db/ledger?timezone=%2B02:00\"\n").unwrap();
}
