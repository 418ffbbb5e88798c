//! The browser tests' harness: one coffer-server and one chromedriver for the whole test binary,
//! and a headless Chromium session per test.
//!
//! - The server runs on SQLite in a temporary directory, on a thread of its own with its own
//!   Tokio runtime (each `#[tokio::test]` has a runtime that ends with the test, and a server
//!   spawned on it would end too). Tests share it: give every user, organisation and project a
//!   name of its own ([`unique`]).
//! - chromedriver is started under a small shell watchdog, in a process group of its own. When
//!   the test process is gone, however it ended, the watchdog stops that group (chromedriver and
//!   every browser it started) and removes the temporary directory. Nothing outlives the run by
//!   more than about a second.
//! - [`Browser`] is one WebDriver session with a fresh profile; it dereferences to a
//!   [`fantoccini::Client`] for everything the helpers here do not cover. Dropping it ends the
//!   session (and, when the test is failing, saves a screenshot first).
//!
//! Without `/usr/bin/chromium` or `/usr/bin/chromedriver` [`Browser::new`] gives `None` (the
//! test returns early, with a note), except in CI (`CI` set), where it fails.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{self, header};
use base64::Engine as _;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long any wait for the browser, the page or an element may take.
pub const WAIT: Duration = Duration::from_secs(10);
/// The password of the users [`register`] creates.
pub const PASSWORD: &str = "correct horse battery staple";
/// The window of a new session, and a phone's viewport.
pub const DESKTOP: (u32, u32) = (1280, 800);
pub const PHONE: (u32, u32) = (390, 844);

const AXE_VERSION: &str = "4.14.1";
const AXE: &str = include_str!("vendor/axe-core-4.14.1/axe.min.js");

/// What the whole binary shares: started by the first test that needs it, never stopped (the
/// watchdog cleans up after the process).
#[derive(Debug)]
struct Shared {
    root: PathBuf,
    server: SocketAddr,
    fixture: SocketAddr,
    driver: SocketAddr,
    /// `sh` running the [`WATCHDOG`]: it outlives this process, and is never waited for.
    _watchdog: std::process::Child,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn shared() -> &'static Shared {
    SHARED.get_or_init(Shared::start)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Runs a chromedriver (the arguments after the first two) and, once the process whose id is
/// the first argument is gone, stops this process group and removes the directory named by the
/// second. The driver is started before TERM is ignored, so that it does not inherit that.
const WATCHDOG: &str = r#"
parent=$1 root=$2
shift 2
"$@" &
trap '' TERM INT HUP
while kill -0 "$parent" 2>/dev/null; do sleep 0.2; done
kill -TERM 0 2>/dev/null
sleep 1
rm -rf "$root"
"#;

impl Shared {
    fn start() -> Self {
        let root = tempfile::Builder::new()
            .prefix("coffer-browser-")
            .tempdir()
            .expect("a temporary directory")
            .keep();

        let driver = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = root.join("chromedriver.log");
        let log_file = std::fs::File::create(&log).expect("the chromedriver log");
        let watchdog = std::os::unix::process::CommandExt::process_group(
            Command::new("sh")
                .arg("-c")
                .arg(WATCHDOG)
                .arg("coffer-browser-watchdog")
                .arg(std::process::id().to_string())
                .arg(&root)
                .arg(CHROMEDRIVER)
                .arg(format!("--port={}", driver.port()))
                .arg("--log-level=WARNING")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("the chromedriver log"))
                .stderr(log_file),
            0,
        )
        .spawn()
        .expect("sh starts chromedriver");

        let (server, fixture) = start_server(&root);

        let deadline = Instant::now() + WAIT;
        loop {
            let status = http_request(driver, "GET", "/status", None);
            if let Ok((200, body)) = &status
                && serde_json::from_str::<Value>(body).is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>();
                panic!(
                    "chromedriver is not ready on {driver} after {WAIT:?} ({status:?}); \
                     the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            root,
            server,
            fixture,
            driver,
            _watchdog: watchdog,
        }
    }
}

/// Starts coffer-server (and the harness's fixture pages) on a thread with its own runtime;
/// returns once both accept connections.
fn start_server(root: &Path) -> (SocketAddr, SocketAddr) {
    let server = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut config = coffer_server::Config::defaults();
    config.data_dir = root.join("data");
    config.database_url = Some(format!(
        "sqlite://{}?mode=rwc",
        root.join("coffer.db").display()
    ));
    config.listen = server;
    config.password_hash_concurrency = Some(2);
    config.register_rate_per_ip = 100_000;
    config.login_rate_per_ip = 100_000;
    config.refresh_rate_per_ip = 100_000;
    config.login_rate_per_account = 100_000;

    let (started, start) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    std::thread::Builder::new()
        .name("coffer-server".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = started.send(Err(format!("no runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let fixture = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = started.send(Err(format!("no port for the fixture: {e}")));
                        return;
                    }
                };
                let fixture_addr = fixture.local_addr().map_err(|e| e.to_string());
                tokio::spawn(async move {
                    let _ = axum::serve(fixture, fixture_pages()).await;
                });
                let state = match coffer_server::start(config).await {
                    Ok(state) => state,
                    Err(e) => {
                        let _ = started.send(Err(format!("coffer-server does not start: {e}")));
                        return;
                    }
                };
                let _ = started.send(fixture_addr);
                if let Err(e) = coffer_server::serve_until(state, std::future::pending()).await {
                    eprintln!("coffer-server stopped: {e}");
                }
            });
        })
        .expect("a thread for coffer-server");

    let fixture = match start.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(fixture)) => fixture,
        Ok(Err(e)) => panic!("{e}"),
        Err(e) => panic!("coffer-server has not started after 60 s: {e}"),
    };
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect_timeout(&server, Duration::from_secs(1)).is_err() {
        assert!(
            Instant::now() < deadline,
            "coffer-server does not listen on {server} after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, fixture)
}

/// Pages that are not coffer-server's, served beside it, for the harness's own test: one under
/// a strict Content-Security-Policy, with a console error, a blocked inline script and an image
/// without a text alternative.
fn fixture_pages() -> axum::Router {
    const CSP: &str = "default-src 'none'; script-src 'self'; img-src 'self'; \
                       style-src 'self'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'";
    const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Harness fixture</title><script src="/fixture.js"></script></head>
<body><main><h1>Harness fixture</h1><img src="/pixel.svg" width="10" height="10">
<script>document.title = "an inline script ran";</script></main></body>
</html>
"#;
    const SCRIPT: &str = "console.error('fixture: an error from an allowed script');\n";
    const PIXEL: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10" fill="#036"/></svg>"##;
    axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        (header::CONTENT_SECURITY_POLICY, CSP),
                    ],
                    PAGE,
                )
            }),
        )
        // Another origin's page posting a form to coffer-server, as a forged request would.
        .route(
            "/cross-site-form",
            axum::routing::get(|| async {
                let page = format!(
                    r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Another site</title></head>
<body><main><h1>Another site</h1>
<form method="post" action="{}"><input type="hidden" name="name" value="Forged">
<input type="hidden" name="slug" value="forged"><button type="submit">Win a prize</button></form>
</main></body></html>
"#,
                    url("/orgs")
                );
                (
                    [
                        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
                    ],
                    page,
                )
            }),
        )
        .route(
            "/fixture.js",
            axum::routing::get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], SCRIPT) }),
        )
        .route(
            "/pixel.svg",
            axum::routing::get(|| async { ([(header::CONTENT_TYPE, "image/svg+xml")], PIXEL) }),
        )
}

/// coffer-server's URL for `path` (`/login`, `/api/v1/...`).
pub fn url(path: &str) -> String {
    format!("http://{}{path}", shared().server)
}

/// The harness's fixture page, under a strict Content-Security-Policy.
pub fn fixture_url(path: &str) -> String {
    format!("http://{}{path}", shared().fixture)
}

/// `prefix` with a number no other call in this process gets: for emails, slugs and names on
/// the shared server.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Registers `email` (password [`PASSWORD`]) through the API; returns its access token.
pub async fn register(email: &str) -> String {
    let response = reqwest::Client::new()
        .post(url("/api/v1/auth/register"))
        .json(&json!({ "email": email, "password": PASSWORD, "name": "Browser Test" }))
        .timeout(WAIT)
        .send()
        .await
        .expect("the registration is answered");
    assert!(
        response.status().is_success(),
        "registering {email}: {}",
        response.status()
    );
    let body: Value = response.json().await.expect("a JSON body");
    body["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

/// Whether the browser tests can run; outside CI a missing browser skips them (with a note),
/// in CI it fails them.
fn browser_installed() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|path| !Path::new(path).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} not installed (Debian's chromium and chromium-driver; .ci/run installs them)",
        missing.join(" and ")
    );
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    assert!(!ci, "the browser tests cannot run: {why}");
    eprintln!("skipped: {why}");
    false
}

/// Where screenshots go: `$CARGO_TARGET_DIR/browser-screenshots`, else the target directory
/// this binary was built in.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("browser-screenshots")
}

fn screenshot_path(name: &str) -> PathBuf {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    screenshot_dir().join(format!("{name}.png"))
}

/// One accessibility rule that a page breaks, as axe-core reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule, e.g. `image-alt`, `color-contrast`.
    pub id: String,
    /// `minor`, `moderate`, `serious` or `critical`.
    pub impact: String,
    pub help: String,
    pub help_url: String,
    /// Each offending element's CSS selector.
    pub targets: Vec<String>,
}

impl Violation {
    pub fn is_serious(&self) -> bool {
        matches!(self.impact.as_str(), "serious" | "critical")
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {}: {} ({}) at {}",
            self.impact,
            self.id,
            self.help,
            self.help_url,
            self.targets.join(", ")
        )
    }
}

/// chromedriver's log of the browser's console and of the page's errors (blocked requests,
/// Content-Security-Policy violations); each read takes the entries that came since the last.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// A headless Chromium with a fresh profile, driven over WebDriver.
#[derive(Debug)]
pub struct Browser {
    client: Client,
    session: String,
    driver: SocketAddr,
    _profile: tempfile::TempDir,
}

impl std::ops::Deref for Browser {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Browser {
    /// A new session, its viewport [`DESKTOP`]-sized; `None` when the browser is not installed
    /// and this is not CI (the test should return).
    pub async fn new() -> Option<Self> {
        if !browser_installed() {
            return None;
        }
        let shared = shared();
        let profile = tempfile::Builder::new()
            .prefix("profile-")
            .tempdir_in(&shared.root)
            .expect("a profile directory");
        let (width, height) = DESKTOP;
        let capabilities = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": { "implicit": 0, "pageLoad": WAIT.as_millis(), "script": WAIT.as_millis() },
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--no-default-browser-check",
                    // no network but the loopback here: nothing may call home
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(capabilities);
        let driver_url = format!("http://{}", shared.driver);
        let client = tokio::time::timeout(Duration::from_secs(30), builder.connect(&driver_url))
            .await
            .expect("Chromium starts within 30 s")
            .expect("chromedriver opens a session");
        let session = client
            .session_id()
            .await
            .expect("the session")
            .expect("a session id");
        let browser = Self {
            client,
            session,
            driver: shared.driver,
            _profile: profile,
        };
        // the window's size leaves a smaller viewport; the viewport is what pages see
        browser.desktop().await;
        Some(browser)
    }

    /// Opens coffer-server's `path` and waits (at most [`WAIT`]) for it to load.
    pub async fn goto(&self, path: &str) {
        self.goto_url(&url(path)).await;
    }

    /// Opens any URL (the fixture's, `data:`) and waits (at most [`WAIT`]) for it to load.
    pub async fn goto_url(&self, target: &str) {
        self.client
            .goto(target)
            .await
            .unwrap_or_else(|e| panic!("opening {target}: {e}"));
    }

    /// Waits (at most [`WAIT`]) until the current URL is `ok`; returns it.
    pub async fn wait_for_url(&self, what: &str, ok: impl Fn(&url::Url) -> bool) -> url::Url {
        let deadline = Instant::now() + WAIT;
        loop {
            let current = self.client.current_url().await.expect("the current URL");
            if ok(&current) {
                return current;
            }
            assert!(
                Instant::now() < deadline,
                "still at {current} after {WAIT:?}, not {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs in through the dashboard's form as `email` (with [`PASSWORD`], as [`register`]
    /// makes it) and waits until the browser has left `/login`.
    pub async fn sign_in(&self, email: &str) {
        self.goto("/login").await;
        self.find("form input[name=email]")
            .await
            .send_keys(email)
            .await
            .expect("typing the email");
        self.find("form input[name=password]")
            .await
            .send_keys(PASSWORD)
            .await
            .expect("typing the password");
        self.find("form button[type=submit]")
            .await
            .click()
            .await
            .expect("submitting the form");
        self.wait_for_url("signed in", |url| url.path() != "/login")
            .await;
    }

    /// The first element matching `css`, waited for (at most [`WAIT`]).
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css} after {WAIT:?}: {e}"))
    }

    /// The visible text of the first element matching `css`, waited for.
    pub async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("the text of {css}: {e}"))
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and returns its
    /// result. WebDriver's scripts are not subject to the page's Content-Security-Policy.
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("running a script: {e}"))
    }

    /// Saves a PNG of the viewport as `<target>/browser-screenshots/<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = screenshot_path(name);
        std::fs::create_dir_all(screenshot_dir()).expect("the screenshot directory");
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// Sets the viewport (the page's `innerWidth` × `innerHeight`) to `width` × `height`.
    pub async fn viewport(&self, width: u32, height: u32) {
        let inner = || async {
            let size = self
                .run("return [window.innerWidth, window.innerHeight];", vec![])
                .await;
            let dimension = |i: usize| {
                size[i]
                    .as_i64()
                    .and_then(|v| i32::try_from(v).ok())
                    .expect("a size")
            };
            (dimension(0), dimension(1))
        };
        let (mut window_width, mut window_height) = (width, height);
        for _ in 0..5 {
            self.client
                .set_window_size(window_width, window_height)
                .await
                .expect("the window resizes");
            // The page learns its new size a moment after the window's: read it once it holds.
            let mut seen = inner().await;
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = inner().await;
                if now == seen {
                    break;
                }
                seen = now;
            }
            let (inner_width, inner_height) = seen;
            if (inner_width, inner_height) == (width as i32, height as i32) {
                return;
            }
            // the window's frame, if it has one, takes the difference
            window_width = window_width.saturating_add_signed(width as i32 - inner_width);
            window_height = window_height.saturating_add_signed(height as i32 - inner_height);
        }
        panic!("the viewport is {:?}, not {width}×{height}", inner().await);
    }

    /// A phone's viewport, [`PHONE`].
    pub async fn phone(&self) {
        self.viewport(PHONE.0, PHONE.1).await;
    }

    /// Back to the desktop viewport, [`DESKTOP`].
    pub async fn desktop(&self) {
        self.viewport(DESKTOP.0, DESKTOP.1).await;
    }

    /// The console's errors (`SEVERE` entries: `console.error`, uncaught exceptions, failed
    /// loads, Content-Security-Policy violations) since the last call, or since the session
    /// started.
    pub async fn console_errors(&self) -> Vec<String> {
        let entries = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("the browser's log");
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Fails, with the list, if the console has errors (see [`Browser::console_errors`]).
    pub async fn assert_no_console_errors(&self, page: &str) {
        let errors = self.console_errors().await;
        assert!(
            errors.is_empty(),
            "{page}: the console has errors:\n  {}",
            errors.join("\n  ")
        );
    }

    /// Runs axe-core (vendored, [`AXE_VERSION`]) on the current page; returns every
    /// violation, of any impact.
    pub async fn axe(&self) -> Vec<Violation> {
        if self.run("return typeof window.axe;", vec![]).await != "object" {
            self.run(AXE, vec![]).await;
        }
        const RUN: &str = r"
            const done = arguments[arguments.length - 1];
            const selector = (t) => (Array.isArray(t) ? t.join(' >>> ') : String(t));
            window.axe.run(document, { resultTypes: ['violations'] }).then(
                (r) => done({ violations: r.violations.map((v) => ({
                    id: v.id, impact: v.impact || '', help: v.help, helpUrl: v.helpUrl,
                    targets: v.nodes.map((n) => n.target.map(selector).join(' ')),
                })) }),
                (e) => done({ error: String((e && e.stack) || e) }));
        ";
        let result = self
            .client
            .execute_async(RUN, vec![])
            .await
            .unwrap_or_else(|e| panic!("axe-core {AXE_VERSION} does not run: {e}"));
        if let Some(error) = result.get("error") {
            panic!("axe-core {AXE_VERSION} fails: {error}");
        }
        let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
        result["violations"]
            .as_array()
            .expect("axe-core's violations")
            .iter()
            .map(|v| Violation {
                id: text(v, "id"),
                impact: text(v, "impact"),
                help: text(v, "help"),
                help_url: text(v, "helpUrl"),
                targets: v["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect(),
            })
            .collect()
    }

    /// Fails, listing them, if axe-core finds serious or critical violations on the current
    /// page (and saves a screenshot `axe-<page>`).
    pub async fn assert_no_serious_axe_violations(&self, page: &str) {
        let serious: Vec<String> = self
            .axe()
            .await
            .iter()
            .filter(|v| v.is_serious())
            .map(Violation::to_string)
            .collect();
        if !serious.is_empty() {
            let shot = self.screenshot(&format!("axe-{page}")).await;
            panic!(
                "{page}: axe-core {AXE_VERSION} finds serious violations (screenshot {}):\n  {}",
                shot.display(),
                serious.join("\n  ")
            );
        }
    }
}

impl Drop for Browser {
    /// Ends the session, closing its Chromium, whatever state the test's runtime is in; a
    /// failing test's last page is saved as `failed-<test>.png` first.
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        if std::thread::panicking() {
            let test = std::thread::current()
                .name()
                .unwrap_or("browser-test")
                .replace("::", "-");
            if let Ok((200, body)) =
                http_request(self.driver, "GET", &format!("{path}/screenshot"), None)
                && let Ok(body) = serde_json::from_str::<Value>(&body)
                && let Some(png) = body["value"].as_str()
                && let Ok(png) = base64::engine::general_purpose::STANDARD.decode(png)
                && std::fs::create_dir_all(screenshot_dir()).is_ok()
            {
                let shot = screenshot_path(&format!("failed-{test}"));
                if std::fs::write(&shot, png).is_ok() {
                    eprintln!("the page when the test failed: {}", shot.display());
                }
            }
        }
        let _ = http_request(self.driver, "DELETE", &path, None);
    }
}

/// A blocking HTTP/1.1 request (no runtime needed, every wait bounded); the status and body.
fn http_request(
    to: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    let body = body.unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.trim().eq_ignore_ascii_case("chunked");
        }
    }
    let mut bytes = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
            if size == 0 {
                break;
            }
            let start = bytes.len();
            bytes.resize(start + size + 2, 0);
            reader.read_exact(&mut bytes[start..])?;
            bytes.truncate(start + size);
        }
    } else if let Some(length) = length {
        bytes.resize(length, 0);
        reader.read_exact(&mut bytes)?;
    } else {
        reader.read_to_end(&mut bytes)?;
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
