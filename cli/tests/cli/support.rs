//! What the tests share: one coffer-server for the whole test binary (SQLite in a temporary
//! directory, in this process), a project per test, and the real `coffer` binary run with its
//! own configuration directory and working directory.

use std::ffi::OsStr;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coffer_client::{Client, CreateProjectRequest, PutSecretRequest};
use secrecy::SecretString;
use serde_json::{Value, json};

pub const ORG: &str = "acme";
pub const OWNER_EMAIL: &str = "owner@acme.test";
pub const PASSWORD: &str = "correct horse battery staple";
/// The longest any one `coffer` invocation may take in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The server all tests of this binary share.
pub struct Server {
    pub url: String,
    /// A read-write API key of the organization's owner.
    pub admin_token: String,
    /// Kept for as long as the process lives: statics are never dropped.
    _dir: tempfile::TempDir,
}

/// The runtime the server (and the tests' own API calls) run on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Starts the shared server the first time.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| runtime().block_on(start()))
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = coffer_server::Config::defaults();
    config.data_dir = dir.path().to_path_buf();
    config.listen = addr;
    config.password_hash_concurrency = Some(2);
    // Several tests log in, some with a wrong password, all from 127.0.0.1.
    config.login_rate_per_ip = 1_000;
    config.login_rate_per_account = 1_000;
    config.register_rate_per_ip = 1_000;
    let state = coffer_server::start(config).await.unwrap();
    tokio::spawn(async move {
        coffer_server::serve_until(state, std::future::pending())
            .await
            .unwrap();
    });
    let url = format!("http://{addr}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + TIMEOUT;
    while !http
        .get(format!("{url}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "coffer-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let access = register(&url, OWNER_EMAIL).await;
    post(
        &url,
        "orgs",
        Some(&access),
        json!({ "name": "Acme", "slug": ORG }),
    )
    .await;
    let key = post(
        &url,
        "api-keys",
        Some(&access),
        json!({ "name": "cli tests", "read_only": false }),
    )
    .await;
    Server {
        url,
        admin_token: key["token"].as_str().unwrap().to_owned(),
        _dir: dir,
    }
}

async fn post(url: &str, path: &str, token: Option<&str>, body: Value) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("{url}/api/v1/{path}"))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// Registers a user with [`PASSWORD`]; their access token.
async fn register(url: &str, email: &str) -> String {
    let session = post(
        url,
        "auth/register",
        None,
        json!({ "email": email, "password": PASSWORD, "name": "Test User" }),
    )
    .await;
    session["access_token"].as_str().unwrap().to_owned()
}

impl Server {
    /// A client with the admin API key.
    pub fn admin(&self) -> Client {
        Client::new(&self.url, SecretString::from(self.admin_token.clone())).unwrap()
    }

    /// A new user (password [`PASSWORD`]) with a unique email starting with `name`.
    pub fn user(&self, name: &str) -> String {
        let email = format!("{}@example.test", unique(name));
        runtime().block_on(register(&self.url, &email));
        email
    }

    /// Sets `key` in `env` of `project` through the API.
    pub fn put(&self, project: &str, env: &str, key: &str, value: &str) {
        runtime()
            .block_on(self.admin().put_secret(
                ORG,
                project,
                env,
                key,
                &PutSecretRequest {
                    value: SecretString::from(value),
                    comment: None,
                },
            ))
            .unwrap();
    }

    /// Adds environment `env` to `project`.
    pub fn environment(&self, project: &str, env: &str) {
        runtime()
            .block_on(self.admin().create_environment(
                ORG,
                project,
                &coffer_client::CreateEnvironmentRequest {
                    slug: env.to_owned(),
                    name: None,
                },
            ))
            .unwrap();
    }

    /// A new project (environments development, staging, production) named after `name`.
    pub fn project(&self, name: &str) -> String {
        let slug = unique(name);
        runtime()
            .block_on(self.admin().create_project(
                ORG,
                &CreateProjectRequest {
                    name: slug.clone(),
                    slug: slug.clone(),
                    environments: None,
                },
            ))
            .unwrap();
        slug
    }
}

/// `name` with a number no other call of this process got.
pub fn unique(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// How one `coffer` invocation ended.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts success; stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        &self.stdout
    }

    /// Asserts the exit code; stderr.
    #[track_caller]
    pub fn fails_with(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "{self:#?}");
        &self.stderr
    }

    /// stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

/// A user of `coffer`: their own configuration directory and working directory, and the
/// environment variables they set.
pub struct User {
    pub config: tempfile::TempDir,
    pub cwd: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl User {
    /// Nobody logged in, nothing configured.
    pub fn new() -> Self {
        Self {
            config: tempfile::tempdir().unwrap(),
            cwd: tempfile::tempdir().unwrap(),
            vars: Vec::new(),
        }
    }

    /// With the admin API key in COFFER_TOKEN, working on `project` in development.
    pub fn with_token(project: &str) -> Self {
        Self::new()
            .var("COFFER_TOKEN", &server().admin_token)
            .var("COFFER_SERVER_URL", &server().url)
            .var("COFFER_ORG", ORG)
            .var("COFFER_PROJECT", project)
            .var("COFFER_ENVIRONMENT", "development")
    }

    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `COFFER_CONFIG_DIR`: a directory that does not exist until `coffer` makes it.
    pub fn config_dir(&self) -> PathBuf {
        self.config.path().join("coffer")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.cwd.path().join(name)
    }

    /// The `coffer` command, with only this user's variables.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
        command.args(args);
        self.environment(&mut command);
        command
    }

    /// `coffer ARGS` on a terminal of its own (`script`), with this user's variables; `None`
    /// (and a note) where `script` is not installed.
    pub fn command_on_a_terminal(&self, args: &[&str]) -> Option<Command> {
        let script = ["/usr/bin/script", "/bin/script"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(script) = script else {
            eprintln!("skipped: `script` (util-linux) is not installed, so no terminal to test on");
            return None;
        };
        let mut line = String::from(env!("CARGO_BIN_EXE_coffer"));
        for arg in args {
            line.push_str(&format!(" '{}'", arg.replace('\'', r"'\''")));
        }
        let mut command = Command::new(script);
        command.args(["-qec", &line, "/dev/null"]);
        self.environment(&mut command);
        Some(command)
    }

    fn environment(&self, command: &mut Command) {
        command
            .current_dir(self.cwd.path())
            .env("COFFER_CONFIG_DIR", self.config_dir());
        for name in [
            "COFFER_TOKEN",
            "COFFER_SERVER_URL",
            "COFFER_ORG",
            "COFFER_PROJECT",
            "COFFER_ENVIRONMENT",
            "NO_COLOR",
        ] {
            command.env_remove(name);
        }
        for (name, value) in &self.vars {
            command.env(name, value);
        }
    }

    /// Runs `coffer ARGS` with nothing on stdin.
    pub fn run<I, S>(&self, args: I) -> Out
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_with_stdin(args, "")
    }

    /// Runs `coffer ARGS` with `input` on stdin.
    pub fn run_with_stdin<I, S>(&self, args: I, input: &str) -> Out
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        finish(child, TIMEOUT)
    }
}

/// Waits (at most `timeout`) for `child` and collects what it wrote.
pub fn finish(mut child: Child, timeout: Duration) -> Out {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = wait(&mut child, timeout);
    Out {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Waits at most `timeout` for `child` to end (and kills it, failing the test, after that).
#[track_caller]
pub fn wait(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (at most `timeout`) until `check` holds.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The mode bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A TCP port on the loopback interface that nothing listens on.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
