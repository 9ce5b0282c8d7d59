//! Browser tests made easy: a `chromedriver` process on a free port and Chromium sessions driven
//! through it with `fantoccini`, each with a fresh profile.
//!
//! ```ignore
//! let Some(driver) = ChromeDriver::start().await else { return }; // skipped (loudly) here
//! let page = driver.session("alice", Window::Desktop).await;
//! page.goto(&cluster.backend_url).await;
//! page.wait_for("the login form", "return !document.getElementById('login-view').hidden").await;
//! page.close().await;
//! driver.stop().await;
//! ```
//!
//! Needs Debian's `chromium` and `chromium-driver` (`BERTH_CHROMEDRIVER` / `BERTH_CHROMIUM`
//! override the paths). Without them [`ChromeDriver::start`] reports a skip (a failure under
//! `CI=true`). Screenshots go to `target/screenshots/`, and also to `docs/screenshots/` when
//! `BERTH_UPDATE_SCREENSHOTS=1`. Every method panics on failure: this is for tests.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How long a condition may take by default ([`Browser::wait_for`]).
pub const WAIT: Duration = Duration::from_secs(30);
/// The WebDriver key for Enter, to end typed text with.
pub const ENTER: &str = "\u{E007}";
/// The WebDriver key for Shift (held until the next key).
pub const SHIFT: &str = "\u{E008}";

/// A `chromedriver` process on a free port; killed when dropped.
pub struct ChromeDriver {
    url: String,
    chromium: String,
    child: tokio::process::Child,
}

/// The window a session opens with.
#[derive(Clone, Copy, Debug)]
pub enum Window {
    /// 1280×900.
    Desktop,
    /// Chrome's mobile emulation at a phone's size (390×844 CSS pixels).
    Phone,
}

impl ChromeDriver {
    /// Starts chromedriver, or reports a skip and returns `None` when Chromium or chromedriver
    /// is not installed (under `CI=true` that panics instead).
    pub async fn start() -> Option<ChromeDriver> {
        let driver =
            std::env::var("BERTH_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium =
            std::env::var("BERTH_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        for path in [&driver, &chromium] {
            if !Path::new(path).exists() {
                crate::skip(
                    "browser",
                    &format!("no {path}; apt-get install chromium chromium-driver"),
                );
                return None;
            }
        }
        // Failure screenshots of an earlier run would only confuse.
        if let Ok(entries) = std::fs::read_dir(screenshot_dir()) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("failure-") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {driver}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let status = format!("{url}/status");
        crate::eventually(WAIT, || {
            let (http, status) = (http.clone(), status.clone());
            async move {
                match http.get(&status).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .map(|v| v["value"]["ready"] == true)
                        .unwrap_or(false),
                    Err(_) => false,
                }
            }
        })
        .await;
        Some(ChromeDriver {
            url,
            chromium,
            child,
        })
    }

    /// Stops chromedriver and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// A new browser (`name` labels its messages and screenshots) with a fresh profile.
    pub async fn session(&self, name: &str, window: Window) -> Browser {
        let profile = crate::temp_dir(&format!("chromium-{name}"));
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let mut options = json!({ "binary": self.chromium });
        match window {
            Window::Desktop => args.push("--window-size=1280,900".into()),
            Window::Phone => {
                args.push("--window-size=500,900".into());
                options["mobileEmulation"] =
                    json!({ "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 2.0 } });
            }
        }
        options["args"] = json!(args);
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("goog:chromeOptions".into(), options);
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        // Plain HTTP to the local chromedriver: no TLS stack at all.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("{name}: new WebDriver session: {e}"));
        let session = client
            .session_id()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: the new session has no id"));
        Browser {
            name: name.to_owned(),
            client: Some(client),
            driver: self.url.clone(),
            session,
            profile,
        }
    }
}

/// One browser session. Dropping it (say, on a failed assertion) still closes the browser.
pub struct Browser {
    name: String,
    /// `None` once closed.
    client: Option<Client>,
    driver: String,
    session: String,
    profile: PathBuf,
}

impl Browser {
    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Panics with the driver's message, naming the browser and the action.
    fn check<T>(&self, what: &str, result: Result<T, fantoccini::error::CmdError>) -> T {
        result.unwrap_or_else(|e| panic!("{}: {what}: {e}", self.name))
    }

    pub async fn goto(&self, url: &str) {
        let r = self.client().goto(url).await;
        self.check(&format!("go to {url}"), r)
    }

    /// Runs `script` in every page this session opens from now on, before the page's own
    /// scripts (Chrome's `Page.addScriptToEvaluateOnNewDocument`, through chromedriver).
    pub async fn before_each_page(&self, script: &str) {
        let url = format!("{}/session/{}/goog/cdp/execute", self.driver, self.session);
        let body = json!({
            "cmd": "Page.addScriptToEvaluateOnNewDocument",
            "params": { "source": script },
        });
        let answer = reqwest::Client::new()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: add a script to new pages: {e}", self.name));
        assert!(
            answer.status().is_success(),
            "{}: add a script to new pages: {}",
            self.name,
            answer.text().await.unwrap_or_default()
        );
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        let r = self.client().execute(script, args).await;
        self.check("run a script", r)
    }

    /// Runs an asynchronous `script`: it reports by calling its last argument.
    pub async fn js_async(&self, script: &str, args: Vec<Value>) -> Value {
        let r = self.client().execute_async(script, args).await;
        self.check("run an asynchronous script", r)
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let r = self.client().find(Locator::Css(css)).await;
        self.check(&format!("find {css}"), r)
    }

    /// Types like a person (key events) into the element `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let r = self.find(css).await.send_keys(text).await;
        self.check(&format!("type into {css}"), r)
    }

    pub async fn click(&self, css: &str) {
        let r = self.find(css).await.click().await;
        self.check(&format!("click {css}"), r)
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let r = self.client().screenshot().await;
        self.check("take a screenshot", r)
    }

    /// Saves a screenshot as `NAME.png` in `target/screenshots/` (and in `docs/screenshots/`
    /// with `BERTH_UPDATE_SCREENSHOTS=1`, failures excepted).
    pub async fn save_screenshot(&self, name: &str) {
        let png = self.screenshot().await;
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let mut dirs = vec![screenshot_dir()];
        if std::env::var("BERTH_UPDATE_SCREENSHOTS").as_deref() == Ok("1")
            && !name.starts_with("failure-")
        {
            dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots"));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{name}.png"));
            std::fs::write(&path, &png).unwrap();
            eprintln!("screenshot: {}", path.display());
        }
    }

    /// Polls `script` until it returns something truthy (within [`WAIT`]), and returns that.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        self.wait_for_args(what, script, vec![], WAIT).await
    }

    /// [`Browser::wait_for`] with a timeout of its own.
    pub async fn wait_for_within(&self, what: &str, script: &str, timeout: Duration) -> Value {
        self.wait_for_args(what, script, vec![], timeout).await
    }

    /// [`Browser::wait_for`] with script arguments and a timeout. On timeout it fails with a
    /// screenshot, the console, and what the page showed.
    pub async fn wait_for_args(
        &self,
        what: &str,
        script: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.js(script, args.clone()).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                self.fail(what, timeout).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reports a condition that never came true: a screenshot, the console, what the page showed
    /// (the rooms' states and `window.__berthLastMessages`, where a test keeps them).
    async fn fail(&self, what: &str, timeout: Duration) -> ! {
        self.save_screenshot(&format!("failure-{}", self.name))
            .await;
        let seen = self
            .js(
                "return JSON.stringify(window.__berthLastMessages ?? null)",
                vec![],
            )
            .await;
        let status = self
            .js(
                "return [...document.querySelectorAll('[data-testid=room]')].map(r => r.dataset.roomId + ': ' + r.dataset.state + ' / ' + r.querySelector('[data-testid=room-status]')?.textContent).join('; ')",
                vec![],
            )
            .await;
        for line in self.console().await {
            eprintln!("{} console: {line}", self.name);
        }
        panic!(
            "{}: waited {timeout:?} for {what}; rooms: {status}; last messages seen: {seen}",
            self.name
        );
    }

    /// The browser console so far (chromedriver's log endpoint, which fantoccini does not
    /// wrap), or nothing where unsupported.
    pub async fn console(&self) -> Vec<String> {
        let url = format!("{}/session/{}/se/log", self.driver, self.session);
        let Ok(res) = reqwest::Client::new()
            .post(&url)
            .json(&json!({ "type": "browser" }))
            .timeout(WAIT)
            .send()
            .await
        else {
            return vec![];
        };
        let body: Value = res.json().await.unwrap_or(Value::Null);
        body["value"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| format!("{} {}", e["level"], e["message"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Fails on any uncaught exception in the page. (Failed WebSocket attempts during a
    /// failover are logged as errors too; they are expected.)
    pub async fn assert_no_uncaught_errors(&self, who: &str) {
        let uncaught: Vec<String> = self
            .console()
            .await
            .into_iter()
            .filter(|l| l.contains("Uncaught"))
            .collect();
        assert!(
            uncaught.is_empty(),
            "{who}: uncaught errors in the page: {uncaught:#?}"
        );
    }

    /// Ends the session (the browser exits) and removes its profile.
    pub async fn close(mut self) {
        let client = self.client.take().expect("the session is open");
        let r = client.close().await;
        self.check("close the session", r);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    /// Closes the browser even when the test failed half-way: a blocking `DELETE /session`
    /// (the runtime that fantoccini's own clean-up needs may already be gone).
    fn drop(&mut self) {
        if self.client.take().is_none() {
            return;
        }
        let Some(addr) = self.driver.strip_prefix("http://") else {
            return;
        };
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// `target/screenshots/` of the workspace.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots")
}
