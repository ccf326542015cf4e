//! Test harness: a real server on a random loopback port, on SQLite (a temp file) or on the
//! PostgreSQL server the test script started (`TEST_DATABASE=postgres`, `TEST_POSTGRES_URL`):
//! one database per test, cloned from a migrated template.

#![allow(dead_code)]

pub mod fixtures;
pub mod homeserver;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use annuaire::Annuaire;
use annuaire::clock::{Clock, ManualClock, SharedClock, SystemClock};
use annuaire::config::Config;
use diesel::prelude::*;
use diesel::{Connection, PgConnection, RunQueryDsl};
use tempfile::TempDir;

/// The backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// `TEST_DATABASE` (default sqlite). An unknown value fails: a run must never silently test
/// something else than asked.
pub fn backend() -> Backend {
    match std::env::var("TEST_DATABASE").as_deref() {
        Err(_) | Ok("sqlite") => Backend::Sqlite,
        Ok("postgres") => Backend::Postgres,
        Ok(other) => panic!("TEST_DATABASE={other}: expected sqlite or postgres"),
    }
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn pg_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_DATABASE=postgres needs TEST_POSTGRES_URL (scripts/test starts PostgreSQL and sets it)"
        )
    })
}

fn with_database(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if url[..i].contains('@') || url[..i].ends_with(|c: char| c.is_ascii_digit()) => {
            format!("{}/{db}", &url[..i])
        }
        _ => format!("{}/{db}", url.trim_end_matches('/')),
    }
}

static TEMPLATE: OnceLock<String> = OnceLock::new();
static TEMPLATE_LOCK: Mutex<()> = Mutex::new(());

/// The migrated template database (created once per test process, under an advisory lock so
/// that parallel test processes agree).
fn pg_template() -> &'static str {
    TEMPLATE.get_or_init(|| {
        let _guard = TEMPLATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let admin = pg_admin_url();
        let name = "annuaire_template".to_string();
        let mut conn = PgConnection::establish(&admin)
            .unwrap_or_else(|e| panic!("cannot connect to TEST_POSTGRES_URL: {e}"));
        diesel::sql_query("SELECT pg_advisory_lock(4242)")
            .execute(&mut conn)
            .unwrap();
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let exists: Count = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM pg_database WHERE datname = '{name}'"
        ))
        .get_result(&mut conn)
        .unwrap();
        if exists.n == 0 {
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .unwrap();
            let db = annuaire::store::Db::connect(
                &with_database(&admin, &name),
                1,
                Duration::from_secs(10),
            )
            .unwrap();
            db.migrate().unwrap();
            drop(db);
        }
        diesel::sql_query("SELECT pg_advisory_unlock(4242)")
            .execute(&mut conn)
            .unwrap();
        name
    })
}

/// A fresh, migrated PostgreSQL database; returns its URL.
pub fn fresh_pg_database() -> String {
    let template = pg_template();
    let admin = pg_admin_url();
    let name = format!("t_{}", annuaire::secret::random_id().to_lowercase());
    let mut conn = PgConnection::establish(&admin).unwrap();
    // Cloning fails while another session is connected to the template; retry briefly.
    let mut last = None;
    for _ in 0..50 {
        match diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut conn)
        {
            Ok(_) => return with_database(&admin, &name),
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    panic!("cannot create a test database: {last:?}");
}

/// A database URL for one test (SQLite file in `dir`, or a fresh PostgreSQL database).
pub fn database_url(dir: &Path) -> String {
    match backend() {
        Backend::Sqlite => format!("sqlite://{}", dir.join("annuaire.db").display()),
        Backend::Postgres => fresh_pg_database(),
    }
}

/// A test configuration: data in a temp dir, the backend under test, port 0.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.data_dir = dir.to_path_buf();
    config.server.name = "is.test.example".into();
    config.database.url = Some(database_url(dir));
    config.database.pool_size = 4;
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.http.workers = 2;
    config
}

/// A running server.
pub struct TestServer {
    /// `http://127.0.0.1:PORT` (or https).
    pub base: String,
    pub app: Arc<Annuaire>,
    pub client: reqwest::Client,
    pub dir: Arc<TempDir>,
    pub clock: Option<Arc<ManualClock>>,
    /// An identity access token that `get`, `post` and `post_raw` send (see
    /// [`Builder::account`]).
    pub token: Option<String>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct Builder {
    dir: Arc<TempDir>,
    config: Config,
    clock: Option<Arc<ManualClock>>,
    client: Option<reqwest::Client>,
    account: Option<String>,
    listen: Option<std::net::SocketAddr>,
}

impl Builder {
    pub fn new() -> Self {
        install_crypto();
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let config = test_config(dir.path());
        Self {
            dir,
            config,
            clock: None,
            client: None,
            account: None,
            listen: None,
        }
    }

    /// Reuse a directory (and its SQLite database) of an earlier server.
    pub fn in_dir(dir: Arc<TempDir>, config: Config) -> Self {
        install_crypto();
        Self {
            dir,
            config,
            clock: None,
            client: None,
            account: None,
            listen: None,
        }
    }

    /// Listens on `addr` rather than `http.bind` (which the server still believes it has: a
    /// configuration off loopback, tested on loopback).
    pub fn listen_on(mut self, addr: &str) -> Self {
        self.listen = Some(addr.parse().unwrap());
        self
    }

    pub fn config(mut self, f: impl FnOnce(&mut Config, &Path)) -> Self {
        f(&mut self.config, self.dir.path());
        self
    }

    pub fn manual_clock(mut self, start_ms: i64) -> Self {
        self.clock = Some(Arc::new(ManualClock::new(start_ms)));
        self
    }

    /// Gives the server an identity account for `user_id` once started, whose token the
    /// server's `get`/`post` send: the validation endpoints need one (`identity.require_auth`).
    pub fn account(mut self, user_id: &str) -> Self {
        self.account = Some(user_id.to_string());
        self
    }

    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub async fn start(self) -> TestServer {
        let Builder {
            dir,
            config,
            clock,
            client,
            account,
            listen,
        } = self;
        let shared: SharedClock = match &clock {
            Some(c) => c.clone(),
            None => Arc::new(SystemClock),
        };
        let tls = config.tls_enabled();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let listener = TcpListener::bind(listen.unwrap_or(config.http.bind)).unwrap();
                let addr = listener.local_addr().unwrap();
                let app = match Annuaire::open_with_clock(config, shared).await {
                    Ok(app) => app,
                    Err(e) => {
                        tx.send(Err(e.to_string())).unwrap();
                        return;
                    }
                };
                let server = annuaire::http::server(app.clone(), listener).unwrap();
                annuaire::runtime::start_background_jobs(&app);
                tx.send(Ok((addr, app, server.handle()))).unwrap();
                let _ = server.await;
            });
        });
        let (addr, app, handle) = tokio::task::spawn_blocking(move || rx.recv().unwrap())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("server did not start: {e}"));
        let scheme = if tls { "https" } else { "http" };
        let token = match account {
            Some(user_id) => Some(make_account(&app, &user_id).await),
            None => None,
        };
        TestServer {
            base: format!("{scheme}://{addr}"),
            app,
            client: client.unwrap_or_else(|| {
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap()
            }),
            dir,
            clock,
            token,
            handle,
            thread: Some(thread),
        }
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Builder::new().start().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Adds the server's identity token, if it has one.
    pub fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        let req = self.authorized(self.client.get(self.url(path)));
        Reply::from(req.send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        let req = self.authorized(self.client.post(self.url(path)).json(body));
        Reply::from(req.send().await.unwrap()).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let req = self.authorized(
            self.client
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body),
        );
        Reply::from(req.send().await.unwrap()).await
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            // Sends the stop command at once; the server thread then ends.
            drop(self.handle.stop(false));
            let _ = t.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub async fn from(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        Reply {
            status,
            headers,
            text,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    /// Asserts a Matrix error.
    #[track_caller]
    pub fn assert_error(&self, status: u16, errcode: &str) -> &Self {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.json()["errcode"], errcode, "{}", self.text);
        assert!(self.json()["error"].is_string(), "{}", self.text);
        self
    }

    #[track_caller]
    pub fn assert_ok(&self) -> serde_json::Value {
        assert_eq!(self.status, 200, "{}", self.text);
        self.json()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The `annuaire` binary built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_annuaire"))
}

/// An HTTP client for tests (TLS provider installed).
pub fn client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Runs the binary to completion; returns (exit code, stdout, stderr).
pub fn run_cli(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(binary());
    // The audit actor reads SUDO_USER first: a test run under sudo must not change it.
    cmd.current_dir(dir).args(args).env_remove("SUDO_USER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `f` returns true (polling), or panics after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new, empty (unmigrated) PostgreSQL database; returns its URL.
pub fn empty_pg_database() -> String {
    let admin = pg_admin_url();
    let name = format!("e_{}", annuaire::secret::random_id().to_lowercase());
    let mut conn = PgConnection::establish(&admin).unwrap();
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .unwrap();
    with_database(&admin, &name)
}

/// A database URL for a process started in `dir`: a relative SQLite path, or an empty
/// PostgreSQL database.
pub fn fresh_url_for_binary() -> Option<String> {
    match backend() {
        Backend::Sqlite => None,
        Backend::Postgres => Some(empty_pg_database()),
    }
}

/// A child `annuaire serve` process, killed on drop.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub base: String,
    pub stderr: Arc<Mutex<String>>,
}

impl ServeProcess {
    /// Starts `annuaire serve` in `dir` with `env`, on a random port; waits for its start-up line.
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ServeProcess {
        use std::io::{BufRead, BufReader};
        let mut cmd = std::process::Command::new(binary());
        cmd.current_dir(dir)
            .args(args)
            .env("ANNUAIRE_HTTP__BIND", "127.0.0.1:0")
            .env("ANNUAIRE_LOG__FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("annuaire started")
                    && let Some(tx) = tx.take()
                {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let _ = tx.send(v["listen"].as_str().unwrap().to_string());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("annuaire serve did not start:\n{}", log.lock().unwrap());
            }
        };
        ServeProcess {
            child,
            base: format!("http://{addr}"),
            stderr: log,
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn terminate(mut self) -> (i32, String) {
        unsafe_sigterm(self.child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status.code().unwrap_or(-1), self.log());
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("annuaire did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Creates (or reuses) the identity account of `user_id` with a new access token, straight
/// through the store (what `/v2/account/register` does after the homeserver vouched for the
/// user); returns the token.
pub async fn make_account(app: &Annuaire, user_id: &str) -> String {
    let token = annuaire::identity::accounts::mint_token(&mut rand::rngs::OsRng);
    let hash = annuaire::identity::accounts::token_hash(&token);
    let now = app.clock.now_ms();
    let expires = now + app.config.identity.token_lifetime.as_millis_i64();
    let user_id = user_id.to_string();
    app.db
        .run(move |conn| {
            annuaire::store::identity::insert_token(conn, &user_id, &hash, now, expires)
        })
        .await
        .unwrap();
    token
}

/// As [`make_account`], for a database that a child process serves (blocking).
pub fn make_account_in(database_url: &str, user_id: &str) -> String {
    let token = annuaire::identity::accounts::mint_token(&mut rand::rngs::OsRng);
    let hash = annuaire::identity::accounts::token_hash(&token);
    let db = annuaire::store::Db::connect(database_url, 1, Duration::from_secs(10)).unwrap();
    let mut conn = db.get().unwrap();
    let now = annuaire::clock::SystemClock.now_ms();
    annuaire::store::identity::insert_token(&mut conn, user_id, &hash, now, now + 3_600_000)
        .unwrap();
    token
}
