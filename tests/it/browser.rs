//! A real browser for the console tests: Debian's Chromium driven over WebDriver by
//! chromedriver (both installed by `.ci/run`), from Rust with fantoccini.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

/// How long an element that keeps going stale is looked for again.
const STALE_RETRIES: Duration = Duration::from_secs(20);

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Starts chromedriver on a free port and a headless Chromium session through it.
pub async fn open() -> Browser {
    const DRIVER: &str = "/usr/bin/chromedriver";
    assert!(
        Path::new(DRIVER).exists(),
        "{DRIVER} is missing: install Debian's chromium-driver (`.ci/run` does)"
    );
    let chromium = crate::helpers::chromium();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let driver = Command::new(DRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while reqwest::get(format!("{url}/status")).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a Chromium session through chromedriver");
    Browser {
        client,
        driver,
        _profile: profile,
    }
}

impl Browser {
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The element, waiting for it to appear (a page may still be loading after a click).
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => panic!("{css}: {e}\n{}", self.source().await),
        }
    }

    /// Finds the element and acts on it, finding it again when the page was replaced in between
    /// (a page's script reloads it, e.g. when a live apply finishes): a stale element is the
    /// page moving on, not a failure.
    async fn on_element<T, Act, Done>(&self, css: &str, act: Act) -> T
    where
        Act: Fn(fantoccini::elements::Element) -> Done,
        Done: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        let started = Instant::now();
        loop {
            match act(self.find(css).await).await {
                Ok(done) => return done,
                Err(e) if e.is_stale_element_reference() && started.elapsed() < STALE_RETRIES => {}
                Err(e) => panic!("{css}: {e}\n{}", self.source().await),
            }
        }
    }

    pub async fn text(&self, css: &str) -> String {
        self.on_element(css, |e| async move { e.text().await })
            .await
    }

    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
    }

    pub async fn click(&self, css: &str) {
        self.on_element(css, |e| async move { e.click().await.map(drop) })
            .await
    }

    pub async fn fill(&self, css: &str, value: &str) {
        self.on_element(css, |field| async move {
            field.clear().await?;
            field.send_keys(value).await
        })
        .await
    }

    /// The page's source, for assertions and their messages.
    pub async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// Waits until `check` holds on the page's source.
    pub async fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn(&str) -> bool) {
        let started = Instant::now();
        loop {
            let source = self.source().await;
            if check(&source) {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "timed out waiting for {what}:\n{source}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot of the whole page under `target/tmp/screenshots/console/`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots/console");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 5_000,
            "{name}: not a rendered page"
        );
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Signs in on the console's sign-in page with `token`.
    pub async fn sign_in(&self, base: &str, token: &str) {
        self.client.delete_all_cookies().await.unwrap();
        self.goto(&format!("{base}/ui/")).await;
        assert!(
            self.client.current_url().await.unwrap().path() == "/ui/login",
            "a signed-out visit goes to the sign-in page"
        );
        self.fill("#token", token).await;
        self.click("form button[type=submit]").await;
        self.wait_for("the signed-in page", Duration::from_secs(20), |s| {
            s.contains("Sign out")
        })
        .await;
    }

    pub async fn close(self) {
        let Browser { client, .. } = &self;
        client.clone().close().await.unwrap();
    }
}
