//! Dangerous or unreachable sources: privileged roles refused, secrets never printed, an
//! unreachable source or store failing at once.

use super::*;

#[tokio::test]
async fn a_privileged_postgres_role_is_refused_unless_the_source_allows_it_and_then_warned_about() {
    let db = TestPg::new().await;
    let suffix = db.name.rsplit('_').next().unwrap().to_owned();
    let (prog, files, creator) = (
        format!("trueup_prog_{suffix}"),
        format!("trueup_files_{suffix}"),
        format!("trueup_creator_{suffix}"),
    );
    db.exec(&format!(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);
         CREATE ROLE {prog} LOGIN IN ROLE pg_execute_server_program;
         CREATE ROLE {files} LOGIN IN ROLE pg_read_server_files;
         CREATE ROLE {creator} LOGIN CREATEROLE;
         GRANT SELECT ON t TO {prog}, {files}, {creator};
         CREATE EXTENSION dblink;"
    ))
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let as_role = |role: &str| crate::helpers::as_user(&db.url, role);
    for (url, says) in [
        (db.url.clone(), "the role is a superuser"),
        (as_role(&prog), "member of pg_execute_server_program"),
        (as_role(&files), "member of pg_read_server_files"),
        (as_role(&creator), "CREATEROLE"),
    ] {
        let config = one_check_project(tmp.path(), &url, "");
        let (code, text) = check(&config);
        assert_eq!(code, Some(2), "{url}: {text}");
        for part in [
            "source `src`: its database role is privileged",
            says,
            "only has SELECT",
            "allow_privileged_role: true",
        ] {
            assert!(text.contains(part), "{url}: `{part}` in {text}");
        }
        assert!(
            !text.contains("t-listed"),
            "nothing was evaluated through it: {text}"
        );
    }
    // Opting in runs, with a loud warning each time.
    let config = one_check_project(tmp.path(), &db.url, "    allow_privileged_role: true\n");
    let (code, text) = check(&config);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("SOURCE ROLE IS PRIVILEGED") && text.contains("superuser"),
        "{text}"
    );
    // The reader role reads, and is told about dblink in its database.
    let config = one_check_project(tmp.path(), &db.reader_url, "");
    let (code, text) = check(&config);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains("PRIVILEGED"), "{text}");
    assert!(text.contains("the extension dblink"), "{text}");

    // Under serve, an allowed privileged role shows in /metrics; a reader role shows 0.
    for (url, extra, want) in [
        (db.url.clone(), "    allow_privileged_role: true\n", 1.0),
        (db.reader_url.clone(), "", 0.0),
    ] {
        let config = one_check_project(
            tmp.path(),
            &url,
            &format!("{extra}{}", crate::serve::tokens_yaml("")),
        );
        let config = trueup::config::Config::load(&config).unwrap();
        let server = crate::helpers::TestServer::start(config).await;
        let base = server.base.clone();
        let (_, metrics) = crate::serve::call(
            reqwest::Method::GET,
            &format!("{base}/metrics"),
            Some(crate::serve::VIEWER),
        )
        .await;
        assert_eq!(
            crate::serve::sample(&metrics, "trueup_source_privileged_role{source=\"src\"}"),
            Some(want),
            "{url}: {metrics}"
        );
        server.stop().await;
    }
    db.exec(&format!(
        "DROP OWNED BY {prog}, {files}, {creator}; DROP ROLE {prog}, {files}, {creator};"
    ))
    .await;
}

#[tokio::test]
async fn a_mariadb_user_with_super_or_file_is_refused_unless_the_source_allows_it() {
    let db = TestMysql::new().await;
    let filer = format!("{}_f", db.name);
    db.exec(&format!(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);
         CREATE USER '{filer}'@'%'; GRANT FILE ON *.* TO '{filer}'@'%';
         GRANT SELECT ON `{}`.* TO '{filer}'@'%';",
        db.name
    ))
    .await;
    let tmp = tempfile::tempdir().unwrap();
    for (url, says) in [
        (db.url.clone(), "the user has SUPER"),
        (
            crate::helpers::as_user(&db.url, &filer),
            "the user has FILE",
        ),
    ] {
        let config = one_check_project(tmp.path(), &url, "");
        let (code, text) = check(&config);
        assert_eq!(code, Some(2), "{url}: {text}");
        assert!(
            text.contains("its database role is privileged") && text.contains(says),
            "{url}: {text}"
        );
    }
    let config = one_check_project(tmp.path(), &db.reader_url, "");
    let (code, text) = check(&config);
    assert_eq!(code, Some(1), "{text}");
    let config = one_check_project(tmp.path(), &db.url, "    allow_privileged_role: true\n");
    let (code, text) = check(&config);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("SOURCE ROLE IS PRIVILEGED"), "{text}");
    db.exec(&format!("DROP USER '{filer}'@'%'")).await;
}

#[tokio::test]
async fn a_password_in_a_url_query_never_appears_in_what_trueup_prints() {
    const CANARY: &str = "canary-s3cret-9f2c";
    let tmp = tempfile::tempdir().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::create_dir_all(tmp.path().join("invariants")).unwrap();
    std::fs::write(
        tmp.path().join("invariants/t.yaml"),
        "invariants:\n  - name: t-listed\n    check: {source: src, query: \"SELECT id FROM t\", key: id}\n",
    )
    .unwrap();
    let config = tmp.path().join("trueup.yaml");
    for (yaml, says) in [
        // The store cannot be reached.
        (
            format!(
                "store: postgres://app@127.0.0.1:{closed}/t?sslmode=disable&password=${{PW}}\nsources:\n  src:\n    url: sqlite://{}/src.db\n",
                tmp.path().display()
            ),
            "password=***",
        ),
        // A source URL the driver cannot parse.
        (
            "sources:\n  src:\n    url: postgres://app@127.0.0.1:notaport/t?password=${PW}\n"
                .to_owned(),
            "bad URL",
        ),
        // A source that cannot be reached.
        (
            format!(
                "sources:\n  src:\n    url: mysql://app@127.0.0.1:{closed}/t?password=${{PW}}\n"
            ),
            "src",
        ),
    ] {
        std::fs::write(&config, &yaml).unwrap();
        for args in [
            &["check"][..],
            &["validate"],
            &["check", "--format", "json"],
        ] {
            let out = trueup_cli(&config, "tester")
                .args(args)
                .env("PW", CANARY)
                .env("RUST_LOG", "debug")
                .output()
                .unwrap();
            let text = combined_output(&out);
            assert!(!text.contains(CANARY), "{yaml} {args:?}: {text}");
            if args == ["check"] {
                assert_eq!(out.status.code(), Some(2), "{yaml}: {text}");
                assert!(text.contains(says), "{yaml}: {text}");
            }
        }
    }
}

#[tokio::test]
async fn an_unreachable_source_or_store_fails_at_once_with_its_address_and_the_cause() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for url in [
        format!("postgres://reader@127.0.0.1:{closed}/x"),
        format!("mysql://reader@127.0.0.1:{closed}/x"),
    ] {
        let src = Source::open(&source("down", &url)).unwrap();
        let started = std::time::Instant::now();
        let err = read_all(&src, "SELECT 1 AS id").await.unwrap_err();
        let took = started.elapsed();
        let text = err.to_string();
        assert!(
            text.contains(&format!("cannot connect to 127.0.0.1:{closed}"))
                && text.contains("refused"),
            "{text}"
        );
        assert!(took < std::time::Duration::from_secs(3), "{url}: {took:?}");
    }
    let started = std::time::Instant::now();
    let err = trueup::store::open(&trueup::config::SecretUrl::new(format!(
        "postgres://app@127.0.0.1:{closed}/x"
    )))
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{closed}")) && err.contains("refused"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}
