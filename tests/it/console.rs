//! The web console in a real browser (headless Chromium over WebDriver), on the demo served
//! by `trueup serve`.

use std::time::Duration;

use trueup::domain::AlertState;

use crate::serve::{ADMIN, APPROVER, VIEWER};

const INVARIANT: &str = "subscriptions-entitlements";

/// `trueup serve` on the demo, every invariant scheduled every second, once `firing`'s alert
/// fires.
async fn serve_demo_until_firing(
    dir: &std::path::Path,
    firing: &'static str,
) -> crate::helpers::TestServer {
    let config =
        crate::helpers::demo_with(dir, Some("* * * * * *"), &crate::serve::tokens_yaml("")).await;
    let server = crate::helpers::TestServer::start(config).await;
    let store = std::sync::Arc::clone(&server.store);
    crate::helpers::wait_for(
        &format!("`{firing}` to fire"),
        Duration::from_secs(30),
        || {
            let store = std::sync::Arc::clone(&store);
            async move { store.alert(firing).await.unwrap().state == AlertState::Firing }
        },
    )
    .await;
    server
}

// Multi-threaded: the server under test and the browser's client share the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_signs_in_approves_and_applies_a_plan_and_the_violations_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_demo_until_firing(dir.path(), INVARIANT).await;
    let (base, store) = (server.base.clone(), std::sync::Arc::clone(&server.store));
    let b = crate::browser::open().await;

    // A signed-out visit lands on the sign-in page; a wrong token is refused there.
    b.goto(&format!("{base}/ui/")).await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/ui/login");
    b.screenshot("sign-in").await;
    b.fill("#token", "not-a-token").await;
    b.click("form button[type=submit]").await;
    assert!(b.text("p.error").await.contains("does not know this token"));

    // The overview: the demo's firing invariant.
    b.sign_in(&base, APPROVER).await;
    let row = format!("tr[data-invariant=\"{INVARIANT}\"]");
    b.wait_for("the overview", Duration::from_secs(10), |s| {
        s.contains("Invariants")
    })
    .await;
    assert_eq!(b.text(&format!("{row} .state")).await, "firing");
    assert!(b.exists(&format!("{row} svg.spark")).await, "a sparkline");
    b.screenshot("overview").await;

    // Its page: open violations with their evidence, and its plan.
    b.click(&format!("{row} th a")).await;
    b.wait_for("the invariant page", Duration::from_secs(10), |s| {
        s.contains("id=\"open-total\"")
    })
    .await;
    assert_eq!(b.text("#violations h2").await, "Open violations (3)");
    assert!(
        b.exists("tr.differs").await,
        "the mismatched column is marked"
    );
    b.screenshot("invariant").await;
    b.click("#plans li a").await;
    b.wait_for("the plan page", Duration::from_secs(10), |s| {
        s.contains("Content hash")
    })
    .await;
    let plan_path = b.client.current_url().await.unwrap().path().to_owned();
    assert_eq!(b.text("#plan-status").await, "proposed");
    assert!(b.text("#diff").await.contains("INSERT INTO entitlements"));
    b.screenshot("plan-proposed").await;

    // Approve, dry run, apply; the progress finishes on its own (the page reloads itself).
    b.click("#approve").await;
    b.wait_for("the approval", Duration::from_secs(10), |s| {
        s.contains("id=\"plan-status\">approved")
    })
    .await;
    assert_eq!(
        b.text("#approve-why").await,
        "You approved this content; it has the approval it needs."
    );
    assert_eq!(b.text("#approvals").await, "1 of 1: april");
    // A plan proposed after a run has never been dry-run: that comes first.
    assert!(!b.exists("#apply").await, "a dry run comes first");
    assert_eq!(
        b.text("#apply-why").await,
        "A dry run comes first: the live apply is offered with its result."
    );
    b.click("#dry-run").await;
    b.wait_for("the dry run", Duration::from_secs(30), |s| {
        s.contains("dry-run-result")
    })
    .await;
    // Recorded: it is still there when the page is opened again.
    b.goto(&format!("{base}{plan_path}")).await;
    assert!(
        b.text("#dry-run-when").await.starts_with("Dry-run at "),
        "{}",
        b.text("#dry-run-when").await
    );
    assert!(b.text("#dry-run-when").await.ends_with(" by april."));
    assert!(
        b.text("#dry-run-result").await.contains("would apply 3"),
        "{}",
        b.text("#dry-run-result").await
    );
    b.screenshot("plan-dry-run").await;
    b.click("#apply").await;
    b.wait_for(
        "the apply and its re-check to finish",
        Duration::from_secs(60),
        |s| s.contains("id=\"plan-status\">applied") && s.contains("id=\"verification\""),
    )
    .await;
    assert!(
        b.text("#progress").await.contains("3 of 3 done"),
        "{}",
        b.text("#progress").await
    );
    assert!(b.text("#verification").await.contains("3 of 3"));
    b.screenshot("plan-applied").await;

    // The next scheduled run resolves the violations.
    b.goto(&format!("{base}/ui/invariants/{INVARIANT}")).await;
    b.wait_for("the violations to resolve", Duration::from_secs(30), |s| {
        s.contains("None open.")
    })
    .await;
    b.screenshot("invariant-resolved").await;

    b.goto(&format!("{base}/ui/plans")).await;
    assert!(b.exists("#queue-applied").await);
    b.screenshot("plans").await;

    // A viewer sees no approve control, and a POST forged from a viewer's session is refused.
    b.sign_in(&base, VIEWER).await;
    let proposed = store
        .plans(None, 50)
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.state == trueup::domain::PlanState::Proposed)
        .expect("another demo plan still proposed");
    b.goto(&format!("{base}/ui/plans/{}", proposed.id)).await;
    assert!(
        !b.exists("#approve").await,
        "a viewer gets no approve control"
    );
    assert!(
        b.text("#approve-why")
            .await
            .contains("needs the approver role")
    );
    b.screenshot("plan-as-viewer").await;
    let forged = b
        .client
        .execute_async(
            r#"const [id, hash, done] = arguments;
               const csrf = document.querySelector("input[name=csrf]").value;
               fetch("/ui/plans/" + id + "/approve", {
                   method: "POST",
                   headers: {"Content-Type": "application/x-www-form-urlencoded"},
                   body: "csrf=" + encodeURIComponent(csrf) + "&content_hash=" + hash,
               }).then(r => done(r.status));"#,
            vec![
                serde_json::json!(proposed.id),
                serde_json::json!(proposed.content_hash),
            ],
        )
        .await
        .unwrap();
    assert_eq!(forged, serde_json::json!(403));
    assert!(
        store
            .plan(proposed.id)
            .await
            .unwrap()
            .unwrap()
            .approvals
            .is_empty(),
        "the forged approval did not count"
    );
    b.goto(&format!("{base}/ui/audit")).await;
    assert!(b.text("#problem").await.contains("needs admin"));

    // The audit log, as an admin: the approval and the apply, by name.
    b.sign_in(&base, ADMIN).await;
    b.goto(&format!(
        "{base}/ui/audit?target=plan:{}",
        plan_path.rsplit('/').next().unwrap()
    ))
    .await;
    let audit = b.text("table").await;
    assert!(
        audit.contains("plan.approve") && audit.contains("april"),
        "{audit}"
    );
    assert!(audit.contains("plan.apply.finish"), "{audit}");
    // Newest first: the apply's end comes before the approval.
    let first_row = b.text("tbody tr:first-child").await;
    assert!(
        audit.find("plan.apply.finish") < audit.find("plan.approve"),
        "{audit}"
    );
    assert!(!first_row.contains("plan.approve"), "{first_row}");
    // Decisions only, unless each action's record is asked for: a replay writes thousands.
    assert!(!audit.contains("action.applied"), "{audit}");
    assert!(
        b.text("#audit-scope").await.contains("Decisions only"),
        "{}",
        b.text("#audit-scope").await
    );
    b.screenshot("audit").await;
    b.click("#include-actions").await;
    b.click("form.filters button[type=submit]").await;
    b.wait_for("every record", Duration::from_secs(10), |s| {
        s.contains("Every record, each action's included.")
    })
    .await;
    let every = b.text("table").await;
    assert_eq!(every.matches("action.applied").count(), 3, "{every}");
    assert!(every.contains("plan.approve"), "{every}");

    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_forms_need_the_csrf_token_and_pages_need_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::helpers::demo_with(dir.path(), None, &crate::serve::tokens_yaml("")).await;
    // One check, so that the demo's plans exist.
    let checked = crate::helpers::trueup_cli(config.file.as_ref().unwrap(), "olga")
        .arg("check")
        .output()
        .unwrap();
    assert!(
        crate::helpers::combined_output(&checked).contains("proposed plan 1"),
        "{}",
        crate::helpers::combined_output(&checked)
    );
    let server = crate::helpers::TestServer::start(config).await;
    let base = server.base.clone();
    // As a browser on the console's pages would: every POST says where it comes from.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::ORIGIN,
            base.parse().unwrap(),
        )]))
        .build()
        .unwrap();
    // Every console page declares its role; without a session, pages redirect to sign-in
    // and forms are refused.
    for p in trueup::http::console::pages() {
        let url = format!(
            "{base}{}",
            p.path
                .replace("{id}", "1")
                .replace("{name}", INVARIANT)
                .replace("{file}", "console.css")
        );
        let method = reqwest::Method::from_bytes(p.method.as_str().as_bytes()).unwrap();
        let status = client
            .request(method, &url)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        match (p.role, p.method.as_str()) {
            // The bare address leads to the console.
            (None, _) if p.path == "/" => assert_eq!(status, 303, "GET /"),
            (None, _) => assert!(
                status == 200 || status == 422 || status == 415,
                "{} {}: {status}",
                p.method,
                p.path
            ),
            (Some(_), "GET") => assert_eq!(status, 303, "{} {}", p.method, p.path),
            (Some(_), _) => assert_eq!(status, 401, "{} {}", p.method, p.path),
        }
    }
    // Signed in: a form without the session's CSRF token, or from another origin, is refused.
    let signed_in = client
        .post(format!("{base}/ui/login"))
        .form(&[("token", APPROVER), ("next", "/ui/")])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status().as_u16(), 303);
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let approve = |body: Vec<(&'static str, String)>, origin: Option<&'static str>| {
        let mut r = client
            .post(format!("{base}/ui/plans/1/approve"))
            .header("cookie", session.clone())
            .form(&body);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let no_token = approve(vec![("content_hash", "x".into())], None)
        .await
        .unwrap();
    assert_eq!(no_token.status().as_u16(), 403);
    assert!(no_token.text().await.unwrap().contains("CSRF token"));
    let page = client
        .get(format!("{base}/ui/plans/1"))
        .header("cookie", session.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("{page}"))
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let foreign = approve(
        vec![("csrf", csrf.clone()), ("content_hash", "x".into())],
        Some("https://evil.example"),
    )
    .await
    .unwrap();
    assert_eq!(foreign.status().as_u16(), 403);
    // With the token, the request reaches the plan rules: an empty or partial hash is refused
    // with what to send, a whole hash of other content conflicts.
    for (sent, status, says) in [
        (String::new(), 422, "the content hash is empty"),
        ("x".to_owned(), 422, "not a hexadecimal digit"),
        ("6".to_owned(), 422, "the whole hash has 64"),
        ("0".repeat(64), 409, "review it again"),
    ] {
        let refused = approve(
            vec![("csrf", csrf.clone()), ("content_hash", sent.clone())],
            None,
        )
        .await
        .unwrap();
        assert_eq!(refused.status().as_u16(), status, "{sent:?}");
        let page = refused.text().await.unwrap();
        assert!(page.contains(says), "{sent:?}: {page}");
    }
    // A POST that does not say where it comes from (no Origin, no Referer: no browser sends
    // that) is refused even with the session and its token; a Referer from the console
    // itself is enough; a browser that says the form is cross-site is refused.
    let bare = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (headers, status, says) in [
        (vec![], 403, "neither where this form comes from"),
        (
            vec![("referer", format!("{base}/ui/plans/1"))],
            409,
            "review it again",
        ),
        (
            vec![
                ("origin", base.clone()),
                ("sec-fetch-site", "cross-site".into()),
            ],
            403,
            "sent from another site",
        ),
    ] {
        let mut r = bare
            .post(format!("{base}/ui/plans/1/approve"))
            .header("cookie", session.clone())
            .form(&[("csrf", csrf.clone()), ("content_hash", "0".repeat(64))]);
        for (k, v) in &headers {
            r = r.header(*k, v);
        }
        let answer = r.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), status, "{headers:?}");
        let page = answer.text().await.unwrap();
        assert!(page.contains(says), "{headers:?}: {page}");
    }
    // Signing in is a form too: a sign-in from nowhere is refused.
    let forged = bare
        .post(format!("{base}/ui/login"))
        .form(&[("token", APPROVER), ("next", "/ui/")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    assert!(forged.headers().get("set-cookie").is_none());
    // Every page refuses every role below its own, with a valid session and CSRF token.
    for (role, token) in [
        (trueup::domain::Role::Viewer, crate::serve::VIEWER),
        (trueup::domain::Role::Operator, crate::serve::OPERATOR),
        (trueup::domain::Role::Approver, APPROVER),
    ] {
        let signed = client
            .post(format!("{base}/ui/login"))
            .form(&[("token", token), ("next", "/ui/")])
            .send()
            .await
            .unwrap();
        let cookie = signed.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let home = client
            .get(format!("{base}/ui/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let token = home
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("{home}"))
            .to_owned();
        for p in trueup::http::console::pages() {
            let Some(needed) = p.role else { continue };
            if role >= needed {
                continue;
            }
            let url = format!(
                "{base}{}",
                p.path.replace("{id}", "1").replace("{name}", INVARIANT)
            );
            let r = if p.method == axum::http::Method::POST {
                client.post(&url).form(&[("csrf", token.as_str())])
            } else {
                client.get(&url)
            };
            let status = r.header("cookie", &cookie).send().await.unwrap().status();
            assert_eq!(status.as_u16(), 403, "{role} on {} {}", p.method, p.path);
        }
    }

    // Signing out ends the session on the server, not just in the browser.
    let out = client
        .post(format!("{base}/ui/logout"))
        .header("cookie", session.clone())
        .form(&[(
            "csrf",
            page.split("name=\"csrf\" value=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap(),
        )])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status().as_u16(), 303);
    let after = client
        .get(format!("{base}/ui/"))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        after.status().as_u16(),
        303,
        "the old cookie no longer works"
    );
    server.stop().await;
}

/// The 2 AM flow, in the console alone, on the demo's outage: find the window on the
/// timeline, dry-run the replay, approve it, apply it with live progress, see the gap closed,
/// open the incident, verify, read the report and close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_outage_is_replayed_and_its_incident_closed_from_the_console_alone() {
    const OUTAGE: &str = "order-events-billed";
    let dir = tempfile::tempdir().unwrap();
    let server = serve_demo_until_firing(dir.path(), OUTAGE).await;
    let (base, store) = (server.base.clone(), std::sync::Arc::clone(&server.store));
    let b = crate::browser::open().await;
    b.sign_in(&base, APPROVER).await;
    let row = format!("tr[data-invariant=\"{OUTAGE}\"]");
    b.wait_for("the overview", Duration::from_secs(10), |s| {
        s.contains(OUTAGE)
    })
    .await;
    assert_eq!(b.text(&format!("{row} .state")).await, "firing");
    // The outage was found seconds ago: none of its violations has been open an hour, so its
    // objective (99%, none open over 1h) has its whole budget.
    assert_eq!(b.text(&format!("{row} .budget")).await, "100% left");
    assert_eq!(
        b.text(&format!("{row} .slo-objective")).await,
        "99% of 30 days with no violation open over 1h"
    );
    b.click(&format!("{row} th a")).await;
    b.wait_for("the timeline", Duration::from_secs(10), |s| {
        s.contains("class=\"chart\"")
    })
    .await;
    // Every open violation is counted, though only the first are listed.
    assert_eq!(
        b.text("#open-total").await,
        trueup::demo::OUTAGE_EVENTS.to_string()
    );
    // The chart: the outage still open, nothing resolved, selected from its start (within
    // max_window) with its count; a y-axis of counts and time ticks at round hours.
    let outage_selected = format!("{} open, 0 resolved.", trueup::demo::OUTAGE_EVENTS);
    assert_eq!(
        b.text("#chart-open").await,
        trueup::demo::OUTAGE_EVENTS.to_string()
    );
    assert_eq!(b.text("#chart-resolved").await, "0");
    let selection = b.text("#selection").await;
    assert!(
        selection.starts_with("Selected ") && selection.ends_with(&outage_selected),
        "{selection}"
    );
    // Within the replay's max_window: the selection's length against it, in seconds.
    let max_window: u64 = b
        .client
        .execute(
            "return document.getElementById('selection').dataset.maxWindow;",
            vec![],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let selected: u64 = b
        .client
        .execute(
            "const f = document.getElementById('replay-from').value, t = document.getElementById('replay-to').value; return String((Date.parse(t) - Date.parse(f)) / 1000);",
            vec![],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        selected > 0 && selected <= max_window,
        "selected {selected}s of max_window {max_window}s"
    );
    let chart_range = b.text("#chart-range").await;
    let labels = |css: &str| {
        let b = &b;
        let js = format!(
            "return Array.from(document.querySelectorAll('{css}')).map(t => t.textContent);"
        );
        async move {
            let v = b.client.execute(&js, vec![]).await.unwrap();
            serde_json::from_value::<Vec<String>>(v).unwrap()
        }
    };
    let times = labels(".chart .xaxis text:not(.sub)").await;
    assert!(times.len() >= 3, "{times:?}");
    assert!(
        times
            .iter()
            .all(|t| t.len() == 5 && t.ends_with(":00") && t[..2].parse::<u32>().is_ok()),
        "round hours: {times:?}"
    );
    let counts: Vec<u64> = labels(".chart .grid text")
        .await
        .iter()
        .map(|c| c.replace(',', "").parse().unwrap())
        .collect();
    assert_eq!(counts.first(), Some(&0), "{counts:?}");
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
    b.screenshot("timeline").await;

    // A window wider than the invariant's max_window: refused without a reason, with the
    // fields that fix it; dry-run with one.
    let wide = |reason: &str| {
        format!(
            "{base}/ui/replay?invariant={OUTAGE}&from={}&to={}&reason={reason}",
            (chrono::Utc::now() - chrono::TimeDelta::days(30)).format("%Y-%m-%dT%H:%M:%SZ"),
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        )
    };
    b.goto(&wide("")).await;
    let refused = b.text("main").await;
    assert!(
        refused.contains("narrow it, or say in the Reason field why a window this wide is safe"),
        "{refused}"
    );
    b.goto(&wide("backfill%20after%20the%20November%20outage"))
        .await;
    assert!(
        b.text("#wide-window")
            .await
            .contains("the reason given: “backfill after the November outage”"),
        "{}",
        b.text("main").await
    );
    assert_eq!(
        b.text("#would-replay").await,
        trueup::demo::OUTAGE_EVENTS.to_string()
    );
    b.screenshot("replay-wide-window").await;
    b.goto(&format!("{base}/ui/invariants/{OUTAGE}")).await;

    // Pick the window on the timeline: the first bar, then the last.
    b.click(".chart .bar:first-child").await;
    b.click(".chart .bar:last-child").await;
    let selected = b
        .client
        .find_all(fantoccini::Locator::Css(".chart .bar.selected"))
        .await
        .unwrap()
        .len();
    assert!(
        selected > 10,
        "the whole outage is selected ({selected} bars)"
    );
    let selection = b.text("#selection").await;
    assert!(selection.ends_with(&outage_selected), "{selection}");
    let from = b
        .find("#replay-from")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    let to = b
        .find("#replay-to")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    // The From and To boxes show their whole timestamps.
    for id in ["replay-from", "replay-to"] {
        let cut = b
            .client
            .execute(
                &format!(
                    "const i = document.getElementById('{id}'); return i.scrollWidth - i.clientWidth;"
                ),
                vec![],
            )
            .await
            .unwrap();
        assert!(
            cut.as_i64().unwrap() <= 0,
            "#{id} cuts its timestamp off by {cut} px"
        );
    }
    b.screenshot("timeline-selected").await;
    // A dry run takes seconds on a real window: while it runs the form says so and cannot be
    // sent twice (held here by a listener that keeps the browser on the page, then sent).
    busy_while_sent(
        &b,
        "replay-form",
        "Running the dry run: reading the window's events",
    )
    .await;
    b.screenshot("replay-dry-run-running").await;
    b.click("#replay-form button").await;
    b.wait_for("the dry run", Duration::from_secs(20), |s| {
        s.contains("would-replay")
    })
    .await;
    assert_eq!(
        b.text("#would-replay").await,
        trueup::demo::OUTAGE_EVENTS.to_string()
    );
    assert_eq!(b.text("#would-skip").await, "0");
    // Samples name the event's key, not the action's internals.
    let sample = b.text("ul.samples li").await;
    assert!(sample.starts_with("key "), "{sample}");
    assert!(
        !sample.contains("seq") && !sample.contains("null"),
        "{sample}"
    );
    b.screenshot("replay-dry-run").await;

    // Submit, approve, apply: live progress until the gap is closed.
    b.click("#propose-replay").await;
    b.wait_for("the replay plan", Duration::from_secs(10), |s| {
        s.contains("Content hash")
    })
    .await;
    assert!(b.text("h1").await.contains("proposed"));
    // Reject does not look like Approve.
    let looks = |id: &str| {
        format!(
            "const s = getComputedStyle(document.getElementById('{id}')); return s.color + ' on ' + s.backgroundColor;"
        )
    };
    let approve_looks = b.client.execute(&looks("approve"), vec![]).await.unwrap();
    let reject_looks = b.client.execute(&looks("reject"), vec![]).await.unwrap();
    assert_ne!(approve_looks, reject_looks);
    b.click("#approve").await;
    b.wait_for("the approval", Duration::from_secs(10), |s| {
        s.contains("id=\"plan-status\">approved")
    })
    .await;
    // The proposer approved alone (one approval is required): the page says so.
    assert_eq!(
        b.text("#approvals").await,
        "1 of 1: april (who proposed it)"
    );
    assert_eq!(
        b.text("#self-approved").await,
        "No second person reviewed it: its only approval is its proposer's (plans.approvals asks for 1 at high severity)."
    );
    // The replay page's dry run was of this very content: no second one is asked for.
    assert!(
        b.text("#dry-run-when")
            .await
            .starts_with("Dry-run as its window on the replay page, before it was proposed"),
        "{}",
        b.text("#dry-run-when").await
    );
    assert!(
        b.text("#dry-run-result")
            .await
            .contains(&format!("would apply {}", trueup::demo::OUTAGE_EVENTS)),
        "{}",
        b.text("#dry-run-result").await
    );
    assert!(b.exists("#apply").await, "no second dry run");
    // Another dry run is still there for whoever wants one, and says it is working.
    busy_while_sent(
        &b,
        "dry-run-form",
        "Running the dry run: checking each action",
    )
    .await;
    b.fill("#rate", "3/s").await;
    b.click("#apply").await;
    // 30 events at 3/s: about ten seconds of live progress (rate and ETA appear after the
    // second poll that sees one more event done).
    b.wait_for("progress under way", Duration::from_secs(30), |s| {
        s.contains("actions/s")
    })
    .await;
    // The time left is written as every duration on the pages is (`9s`, `33m 06s`).
    let rate = b.text("#progress-rate").await;
    let left = rate
        .split("about ")
        .nth(1)
        .and_then(|r| r.split(" left").next())
        .unwrap_or_default();
    assert!(
        !left.is_empty()
            && left.split(' ').all(|part| part.ends_with(['h', 'm', 's'])
                && part[..part.len() - 1].parse::<u32>().is_ok()),
        "{rate}"
    );
    // While it applies, neither a dry run nor another apply is offered, and the page says why.
    assert!(!b.exists("#dry-run").await, "no dry run during an apply");
    assert!(!b.exists("#apply").await, "no second apply during an apply");
    assert_eq!(
        b.text("#apply-why").await,
        "It is being applied: the dry run and the apply come back when it stops."
    );
    // The counts by status and the listed actions follow the apply on this same page (no
    // reload: the mark set now stays).
    b.client
        .execute("window.samePage = true; return true;", vec![])
        .await
        .unwrap();
    b.wait_for(
        "the counts and the action list to follow the apply",
        Duration::from_secs(20),
        |s| {
            s.contains("data-status=\"applied\">applied ")
                && s.contains("class=\"astatus astatus-applied\" data-seq=\"1\"")
        },
    )
    .await;
    assert_eq!(
        b.client
            .execute("return window.samePage === true;", vec![])
            .await
            .unwrap(),
        serde_json::json!(true),
        "the page reloaded instead of following the apply"
    );
    b.screenshot("replay-applying").await;

    // Pause it mid-way: the page says paused, offers Resume (not Pause), and nothing more is
    // delivered; Resume goes on from there.
    assert_eq!(b.text("#pause").await, "Pause");
    b.click("#pause").await;
    b.wait_for("the pause", Duration::from_secs(10), |s| {
        s.contains("id=\"plan-status\">paused")
    })
    .await;
    assert!(!b.exists("#pause").await, "a paused plan offers no Pause");
    assert_eq!(b.text("#resume").await, "Resume");
    assert!(
        b.text("#controls-help")
            .await
            .contains("Resume applies on from where the plan stopped"),
        "{}",
        b.text("#controls-help").await
    );
    let paused_plan = store
        .plans(None, 50)
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.state == trueup::domain::PlanState::Paused)
        .expect("the paused replay");
    let done_at = |store: std::sync::Arc<dyn trueup::store::Store>, id| async move {
        let progress = store.action_progress(id).await.unwrap();
        trueup::plan::apply::finished(&progress)
    };
    // Each apply worker looks at the plan's state once a second: after that, nothing moves.
    // (There is no event to wait for: the end of a paused apply is not recorded.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let paused_at = done_at(std::sync::Arc::clone(&store), paused_plan.id).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        done_at(std::sync::Arc::clone(&store), paused_plan.id).await,
        paused_at,
        "nothing is delivered while paused"
    );
    assert!(
        paused_at < trueup::demo::OUTAGE_EVENTS,
        "paused before the end: {paused_at}"
    );
    b.goto(&format!("{base}/ui/plans/{}", paused_plan.id)).await;
    assert!(
        b.text("#progress").await.contains(&format!(
            "{paused_at} of {} done",
            trueup::demo::OUTAGE_EVENTS
        )),
        "{}",
        b.text("#progress").await
    );
    b.screenshot("replay-paused").await;
    b.fill("#resume-rate", "10/s").await;
    b.click("#resume").await;
    b.wait_for(
        "the replay and its re-check to finish",
        Duration::from_secs(60),
        |s| s.contains("id=\"plan-status\">applied") && s.contains("id=\"verification\""),
    )
    .await;
    let verification = b.text("#verification").await;
    assert!(
        verification.contains("0 missing left in the window"),
        "{verification}"
    );
    b.screenshot("replay-applied").await;
    b.goto(&format!("{base}/ui/invariants/{OUTAGE}")).await;
    b.wait_for("the gap to close", Duration::from_secs(30), |s| {
        s.contains("None open.")
    })
    .await;
    // The chart keeps its range and shows the window resolved.
    assert_eq!(b.text("#chart-range").await, chart_range);
    assert_eq!(b.text("#chart-open").await, "0");
    assert_eq!(
        b.text("#chart-resolved").await,
        trueup::demo::OUTAGE_EVENTS.to_string()
    );
    assert_eq!(
        b.text("#selection").await,
        "Click a bar, then another, to select a window."
    );
    b.screenshot("timeline-resolved").await;

    // The incident: open it over the replay's window (the plan's page leads there with the
    // window filled in), verify, read the report, close it.
    b.goto(&format!("{base}/ui/plans/{}", paused_plan.id)).await;
    b.click("#incident-for-window").await;
    b.wait_for("the incidents page", Duration::from_secs(10), |s| {
        s.contains("open-incident-button")
    })
    .await;
    let instant = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    let field = |name: &'static str| {
        let b = &b;
        async move {
            b.find(&format!("input[name={name}]"))
                .await
                .prop("value")
                .await
                .unwrap()
                .unwrap()
        }
    };
    assert_eq!(instant(&field("from").await), instant(&from));
    assert_eq!(instant(&field("to").await), instant(&to));
    assert_eq!(
        b.find("select[name=invariant]")
            .await
            .prop("value")
            .await
            .unwrap()
            .unwrap(),
        OUTAGE
    );
    // The name's pattern is one the browser enforces (an invalid pattern is silently off).
    let valid = |name: &str| {
        format!(
            "const i = document.querySelector('input[name=name]'); i.value = '{name}'; return i.checkValidity();"
        )
    };
    for (name, ok) in [
        ("Billing Outage", false),
        ("-outage", false),
        ("2026-11-25_billing.outage", true),
    ] {
        assert_eq!(
            b.client.execute(&valid(name), vec![]).await.unwrap(),
            serde_json::json!(ok),
            "{name}"
        );
    }
    b.fill("input[name=name]", "billing-consumer-outage").await;
    b.fill(
        "input[name=summary]",
        "billing's consumer was down for three hours",
    )
    .await;
    b.screenshot("incidents").await;
    b.click("#open-incident-button").await;
    b.wait_for("the incident", Duration::from_secs(10), |s| {
        s.contains("Verdict:")
    })
    .await;
    let incident_path = b.client.current_url().await.unwrap().path().to_owned();
    // The plan now leads to the incident that covers its window, not to a second one.
    b.goto(&format!("{base}/ui/plans/{}", paused_plan.id)).await;
    assert_eq!(
        b.text("#covering-incidents").await,
        "Incident covering this window: billing-consumer-outage"
    );
    assert!(!b.exists("#incident-for-window").await);
    b.click("#covering-incidents a").await;
    b.wait_for("the incident again", Duration::from_secs(10), |s| {
        s.contains("Verdict:")
    })
    .await;
    assert_eq!(b.client.current_url().await.unwrap().path(), incident_path);
    b.click("#verify").await;
    b.wait_for("a ready verdict", Duration::from_secs(30), |s| {
        s.contains("Verdict: ready to close")
    })
    .await;
    // The click says what it did: here the schedule (every second) evaluated the invariant
    // moments ago, so nothing needed evaluating again.
    assert_eq!(
        b.text("#verified").await,
        "Nothing needed evaluating again: every invariant in scope was evaluated in the last 15 minutes, and the verdict is their result."
    );
    assert!(
        b.text("#verdict").await.contains(&format!(
            "{} delivered, 0 skipped as processed, 0 parked, 0 missing left in its window",
            trueup::demo::OUTAGE_EVENTS
        )),
        "{}",
        b.text("#verdict").await
    );
    b.screenshot("incident-ready").await;
    b.click("#report-html").await;
    b.wait_for("the report", Duration::from_secs(10), |s| {
        s.contains("closure report")
    })
    .await;
    assert!(b.text("#verdict").await.contains("Verdict: ready to close"));
    assert_eq!(b.text("#back").await, "← Back to the incident");
    // Replayed within the hour: the incident cost none of the error budget.
    assert_eq!(
        b.text(".slo-statement").await,
        "This incident consumed 0% of the error budget: 0 s in breach of the 7 h 12 min the objective allows over 30 days. Over the last 30 days: 100% left."
    );
    b.screenshot("incident-report").await;
    // The report leads back to the incident.
    b.click("#back").await;
    b.wait_for("the incident again", Duration::from_secs(10), |s| {
        s.contains("id=\"close\"")
    })
    .await;
    b.click("#close").await;
    b.wait_for("the close", Duration::from_secs(10), |s| {
        s.contains("status-closed")
    })
    .await;
    // Closed, the verdict says so (not "ready to close"), and the report has no replay-only
    // "Compensations: 0 proposed" line.
    assert_eq!(
        b.text("#verdict h2").await,
        "Verdict: closed, ready: every check held"
    );
    b.screenshot("incident-closed").await;
    b.click("#report-html").await;
    b.wait_for("the closed report", Duration::from_secs(10), |s| {
        s.contains("closure report")
    })
    .await;
    assert!(
        b.text("#verdict")
            .await
            .contains("Verdict: closed, ready: every check held")
    );
    assert!(!b.text("main, body").await.contains("Compensations: 0"));
    b.goto(&format!("{base}/ui/incidents")).await;
    b.screenshot("incidents-after").await;

    // Another plan, cancelled from its page: nothing more can be done to it.
    let other = store
        .plans(None, 50)
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.state == trueup::domain::PlanState::Proposed)
        .expect("another demo plan still proposed");
    b.goto(&format!("{base}/ui/plans/{}", other.id)).await;
    assert_eq!(b.text("#cancel").await, "Cancel the plan");
    b.click("#cancel").await;
    b.wait_for("the cancel", Duration::from_secs(10), |s| {
        s.contains("id=\"plan-status\">cancelled")
    })
    .await;
    assert!(
        !b.exists("#controls").await,
        "a cancelled plan has no controls"
    );
    assert!(b.text("#apply-why").await.contains("It is cancelled."));
    b.screenshot("plan-cancelled").await;

    // At phone width the pages fit: nothing scrolls sideways.
    b.client.set_window_size(390, 844).await.unwrap();
    for page in ["/ui/", "/ui/incidents/billing-consumer-outage", "/ui/plans"] {
        b.goto(&format!("{base}{page}")).await;
        let overflow = b
            .client
            .execute(
                "return document.documentElement.scrollWidth - window.innerWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{page} is wider than a phone: {overflow}"
        );
    }
    b.goto(&format!("{base}/ui/")).await;
    b.screenshot("overview-phone").await;
    let closed = store
        .incident("billing-consumer-outage")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.closed_by.as_deref(), Some("april"));
    assert!(closed.report_hash.is_some());

    b.close().await;
    server.stop().await;
}

/// Submits form `id` once with the browser kept on the page, and checks what a person sees
/// while the server works: the status line `says` (and the seconds so far), the submit button
/// disabled. Then undoes that, so the caller can send the form for real.
async fn busy_while_sent(b: &crate::browser::Browser, id: &str, says: &str) {
    let hold = format!(
        "const f = document.getElementById('{id}'); \
         f.addEventListener('submit', e => e.preventDefault(), {{ once: true }}); \
         f.requestSubmit(); return true;"
    );
    b.client.execute(&hold, vec![]).await.unwrap();
    let status = b.text(&format!("#{id} [role=status]")).await;
    assert!(
        status.starts_with(says) && status.ends_with(" s"),
        "{id}: {status:?}"
    );
    let disabled = b
        .client
        .execute(
            &format!(
                "return Array.from(document.querySelectorAll('#{id} button[type=submit]')).every(b => b.disabled) \
                 && document.getElementById('{id}').getAttribute('aria-busy') === 'true';"
            ),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(disabled, serde_json::json!(true), "{id}: not sent twice");
    let undo = format!(
        "const f = document.getElementById('{id}'); f.removeAttribute('aria-busy'); \
         f.querySelectorAll('button[type=submit]').forEach(b => b.disabled = false); return true;"
    );
    b.client.execute(&undo, vec![]).await.unwrap();
}

// Multi-threaded: the server under test and the browser's client share the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_silences_an_invariant_from_its_page_and_ends_the_silence() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_demo_until_firing(dir.path(), INVARIANT).await;
    let (base, store) = (server.base.clone(), std::sync::Arc::clone(&server.store));
    let b = crate::browser::open().await;
    b.sign_in(&base, crate::serve::OPERATOR).await;

    // From the invariant's page, the form comes prefilled with its matcher.
    b.goto(&format!("{base}/ui/invariants/{INVARIANT}")).await;
    b.click("#silence-link").await;
    b.wait_for("the silences page", Duration::from_secs(10), |s| {
        s.contains("id=\"new-silence\"")
    })
    .await;
    assert_eq!(b.text("#silence-count").await, "0 silences active");
    b.fill("input[name=reason]", "entitlements migration").await;
    b.fill("input[name=duration]", "90m").await;
    b.click("#create-silence").await;
    b.wait_for("the silence", Duration::from_secs(10), |s| {
        s.contains("id=\"silence-1\"")
    })
    .await;
    assert_eq!(b.text("#silence-count").await, "1 silence active");
    let row = b.text("#silence-1").await;
    for says in [
        "active",
        &format!("invariant=\"{INVARIANT}\""),
        "entitlements migration",
        "otto",
        "End now",
    ] {
        assert!(row.contains(says), "{says:?} in {row:?}");
    }
    assert_eq!(
        b.text("#silence-1 td:nth-of-type(3)").await,
        INVARIANT,
        "matches now"
    );
    b.screenshot("silences").await;

    // The invariant's page says its notices are silenced; the alert is still shown firing.
    b.goto(&format!("{base}/ui/invariants/{INVARIANT}")).await;
    let banner = b.text("#silenced-1").await;
    assert!(
        banner.starts_with("Notices silenced until ")
            && banner.contains("by otto: entitlements migration"),
        "{banner}"
    );
    assert_eq!(b.text("h1 .state").await, "firing");
    assert!(!b.exists("#silence-link").await, "already silenced");

    // Ended early: it says so, and the page offers the link again.
    b.goto(&format!("{base}/ui/silences")).await;
    b.click("#silence-1 button").await;
    b.wait_for("the silence ended", Duration::from_secs(10), |s| {
        s.contains("0 silences active")
    })
    .await;
    let row = b.text("#silence-1").await;
    assert!(
        row.contains("expired") && row.contains("ended by otto"),
        "{row}"
    );
    assert!(!b.exists("#silence-1 button").await);
    b.goto(&format!("{base}/ui/invariants/{INVARIANT}")).await;
    assert!(b.exists("#silence-link").await);

    let trail: Vec<(String, String)> = store
        .audit_trail(
            &["silence:1".to_owned()],
            chrono::Utc::now() - chrono::TimeDelta::hours(1),
            10,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.actor))
        .filter(|(a, _)| a != "silence.end")
        .collect();
    assert_eq!(
        trail,
        [
            ("silence.create".to_owned(), "otto".to_owned()),
            ("silence.expire".to_owned(), "otto".to_owned())
        ]
    );
    b.close().await;
    server.stop().await;
}

// Multi-threaded: the server under test and the browser's client share the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parked_events_of_a_wide_replay_are_retried_from_the_console_once_fixed() {
    use crate::helpers::{combined_output, trueup_cli};
    let f = crate::replay::failures::consumer_down().await;
    let run = |args: &[&str]| {
        let out = trueup_cli(&f.config, "oncall").args(args).output().unwrap();
        (out.status.code(), combined_output(&out))
    };
    assert_eq!(run(&["check"]).0, Some(1));
    let mut yaml = std::fs::read_to_string(&f.config).unwrap();
    yaml.push_str(&crate::serve::tokens_yaml(""));
    std::fs::write(&f.config, yaml).unwrap();
    let server =
        crate::helpers::TestServer::start(trueup::config::Config::load(&f.config).unwrap()).await;
    let (base, store) = (server.base.clone(), std::sync::Arc::clone(&server.store));
    let b = crate::browser::open().await;
    b.sign_in(&base, crate::serve::OPERATOR).await;

    // An hour, wider than the invariant's 30m max_window: from the invariant page's replay
    // form, with the reason, dry-run and proposed from the console.
    b.goto(&format!("{base}/ui/invariants/events-consumed"))
        .await;
    b.fill("#replay-from", "2026-11-20T10:00:00Z").await;
    b.fill("#replay-to", "2026-11-20T11:00:00Z").await;
    b.fill("#replay-reason", "consumer down, INC-42").await;
    b.click("#replay-form button[type=submit]").await;
    b.wait_for("the wide dry run", Duration::from_secs(30), |s| {
        s.contains("id=\"propose-replay\"")
    })
    .await;
    assert_eq!(b.text("#would-replay").await, "60");
    b.click("#propose-replay").await;
    b.wait_for("the plan page", Duration::from_secs(10), |s| {
        s.contains("id=\"wide-reason\"")
    })
    .await;
    assert_eq!(
        b.text("#wide-reason").await,
        "Wider than the invariant's max_window, because: “consumer down, INC-42”"
    );

    // Approved and applied from the CLI: events 7 and 31 keep failing and are parked.
    assert_eq!(run(&["plan", "approve", "1"]).0, Some(0));
    let (code, out) = run(&["apply", "1", "--rate", "unlimited"]);
    assert_eq!(code, Some(1), "{out}");
    b.goto(&format!("{base}/ui/plans/1")).await;
    assert_eq!(b.text("#plan-status").await, "stopped");
    assert_eq!(
        b.text("#retry-failed").await,
        "Retry the 2 failed or parked"
    );
    b.screenshot("retry-parked").await;

    // The consumer is fixed; the retry delivers the two and the plan ends applied.
    f.consumer.failing.lock().unwrap().clear();
    b.fill("#retry-rate", "unlimited").await;
    b.click("#retry-failed").await;
    b.wait_for("the retry to finish", Duration::from_secs(30), |s| {
        s.contains("id=\"plan-status\">applied")
    })
    .await;
    assert!(!b.exists("#retry-failed").await, "nothing left to retry");
    let delivered: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT event_id) FROM processed")
        .fetch_one(&f.pool)
        .await
        .unwrap();
    assert_eq!(delivered, 60);
    let retried = store
        .audit_log(
            &trueup::store::AuditFilter::target("plan:1"),
            trueup::store::AuditPage::After(None),
            200,
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.actor == "otto")
        .map(|e| e.action)
        .collect::<Vec<_>>();
    assert!(!retried.is_empty(), "the retry is the operator's");
    b.close().await;
    server.stop().await;
}

// Multi-threaded: the server under test and the browser's client share the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invariant_with_more_open_violations_than_a_page_lists_says_how_many_in_all() {
    use crate::helpers::{combined_output, trueup_cli};
    let dir = tempfile::tempdir().unwrap();
    let store = crate::helpers::sqlite_url(&dir.path().join("trueup.db"));
    let config = crate::replay::outage(dir.path(), &store, false).await;
    // The downstream lost every one of the 300 events: more than the page lists.
    crate::helpers::sqlite_file(&dir.path().join("down.db"), "DELETE FROM processed;").await;
    let out = trueup_cli(&config, "oncall").arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", combined_output(&out));
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str(&crate::serve::tokens_yaml(""));
    std::fs::write(&config, yaml).unwrap();
    let server =
        crate::helpers::TestServer::start(trueup::config::Config::load(&config).unwrap()).await;
    let b = crate::browser::open().await;
    b.sign_in(&server.base, VIEWER).await;
    b.goto(&format!("{}/ui/invariants/events-processed", server.base))
        .await;
    assert_eq!(b.text("#open-total").await, "300");
    assert_eq!(
        b.text("#open-shown").await,
        "The first 200 of 300 are listed here."
    );
    assert_eq!(b.text("#violations h2").await, "Open violations (300)");
    let chart = b
        .client
        .find(fantoccini::Locator::Css("svg.chart"))
        .await
        .unwrap()
        .attr("aria-label")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(chart.contains(": 300 still open, 0 resolved"), "{chart}");
    b.close().await;
    server.stop().await;
}
