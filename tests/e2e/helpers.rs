//! The test harness: a [`TestApp`] runs Chorus (in this process, or as `chorus serve` children)
//! against its own nats-server and database, with request helpers and stream/table inspection.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use chorus_bus::Bus;
use chorus_core::config::{Config, RouteConfig};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use chorus_testkit::wait;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub use chorus_app::RoleName;

/// A configuration for tests: fast retries, short drains, small pools.
pub fn test_config(nats: &NatsServer, db: &TestDatabase) -> Config {
    test_config_at(&nats.url(), db)
}

/// [`test_config`] for NATS at `url` (one server, or a cluster's list).
pub fn test_config_at(url: &str, db: &TestDatabase) -> Config {
    let mut config = Config::default();
    config.nats.url = url.to_owned();
    config.database.url = db.url().to_owned();
    config.edge.listen = "127.0.0.1:0".parse().expect("addr");
    config.probes.listen = "127.0.0.1:0".parse().expect("addr");
    config.llm.workers = 64;
    config.llm.retry_min_delay = Duration::from_millis(5);
    config.llm.retry_max_delay = Duration::from_millis(50);
    config.llm.nak_delay = Duration::from_millis(50);
    config.llm.nak_max_delay = Duration::from_millis(200);
    config.orchestrator.workers = 8;
    config.supervision.drain_timeout = Duration::from_secs(5);
    config.routes = vec![RouteConfig {
        timeout: Duration::from_secs(2),
        ..RouteConfig::new("fast", "sim", "echo")
    }];
    config
}

/// Moves the edge of `config` to a free port; its base URL.
pub fn free_edge(config: &mut Config) -> String {
    let port = chorus_testkit::nats::free_port();
    config.edge.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    format!("http://127.0.0.1:{port}")
}

/// Waits until the edge at `base` answers `/ready` with 200.
pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    wait::until(Duration::from_secs(30), "the edge to be ready", || async {
        client
            .get(format!("{base}/ready"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;
}

/// Copies `nats/` into `dir` with the llm consumer's definition (`llm.json`) passed through
/// `edit`, for tests that need it to give up or redeliver sooner.
pub fn llm_consumer_with(dir: &Path, edit: impl Fn(String) -> String) {
    fn copy(from: &Path, to: &Path, edit: &dyn Fn(String) -> String) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read nats/").flatten() {
            let (source, target) = (entry.path(), to.join(entry.file_name()));
            if source.is_dir() {
                copy(&source, &target, edit);
            } else if source.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&source).expect("read");
                let text = if entry.file_name() == "llm.json" {
                    let edited = edit(text.clone());
                    assert_ne!(
                        edited,
                        text,
                        "the edit changed nothing in {}",
                        source.display()
                    );
                    edited
                } else {
                    text
                };
                std::fs::write(target, text).expect("write");
            }
        }
    }
    copy(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("nats"),
        dir,
        &edit,
    );
}

/// Makes a key with `scopes` for `tenant` in the database at `url` (migrating it first).
pub async fn create_key(url: &str, tenant: &str, scopes: &str) -> String {
    create_limited_key(url, tenant, scopes, chorus_store::KeyLimits::default()).await
}

/// [`create_key`] with the key's own limits (its rate, its highest band).
pub async fn create_limited_key(
    url: &str,
    tenant: &str,
    scopes: &str,
    limits: chorus_store::KeyLimits,
) -> String {
    let store = chorus_store::Store::connect(url, 1)
        .await
        .expect("database");
    store.migrate().await.expect("migrate");
    let scopes = chorus_core::auth::Scopes::parse(scopes).expect("scopes");
    let tenant = chorus_core::Tenant::new(tenant).expect("tenant");
    let created = store
        .create_key(&tenant, "e2e", scopes, limits)
        .await
        .expect("create a key");
    secrecy::ExposeSecret::expose_secret(&created.key).to_owned()
}

/// A client that sends `key` on every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {key}").parse().expect("header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A key with every scope for the tenant `default`, and a client that sends it.
pub async fn admin_client(database_url: &str) -> (reqwest::Client, String) {
    let key = create_key(database_url, "default", "submit,read,admin").await;
    (client_with_key(&key), key)
}

/// Chorus running in this process.
pub struct TestApp {
    pub base: String,
    /// Sends [`TestApp::key`].
    pub client: reqwest::Client,
    /// A key with every scope for the tenant `default`.
    pub key: String,
    pub bus: Bus,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), chorus_actors::RuntimeError>>>,
}

impl TestApp {
    pub async fn start(config: Config) -> TestApp {
        Self::start_roles(config, &RoleName::ALL).await
    }

    pub async fn start_roles(config: Config, roles: &[RoleName]) -> TestApp {
        // `TEST_LOG=<filter>` logs what runs in this process too (to stderr, every test's alike),
        // as it does for the `chorus` children.
        if let Ok(level) = std::env::var("TEST_LOG") {
            chorus_telemetry::init(&chorus_core::config::LogConfig {
                level,
                ..config.log.clone()
            });
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let bus = Bus::connect_config(&config.nats, "test")
            .await
            .expect("connect to NATS");
        let database_url = config.database.url.clone();
        let runtime = chorus_app::start(config, roles, Some(listener))
            .await
            .expect("start chorus");
        let (client, key) = admin_client(&database_url).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(runtime.run_until(async {
            let _ = stopped.await;
        }));
        TestApp {
            base,
            client,
            key,
            bus,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// Graceful shutdown; the runtime's outcome.
    pub async fn shutdown(mut self) -> Result<(), chorus_actors::RuntimeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.done.take() {
            Some(done) => done.await.expect("runtime task"),
            None => Ok(()),
        }
    }

    pub async fn post_job(&self, body: &Value, query: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/jobs{query}", self.base))
            .json(body)
            .send()
            .await
            .expect("POST /v1/jobs")
    }

    pub async fn get_job(&self, id: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}/v1/jobs/{id}", self.base))
            .send()
            .await
            .expect("GET /v1/jobs/{id}");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Polls `GET /v1/jobs/{id}` until the job is committed in a final state.
pub async fn wait_done(base: &str, client: &reqwest::Client, id: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    // The last answer seen, shown if the job never finishes.
    let mut last = Value::Null;
    loop {
        let response = client.get(format!("{base}/v1/jobs/{id}")).send().await;
        if let Ok(response) = response
            && let Ok(body) = response.json::<Value>().await
        {
            if matches!(
                body["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return body;
            }
            last = body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for job {id} to finish; it was {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the pipeline is quiet: the submit, work and events streams hold nothing, and no
/// durable consumer awaits an ack. From then on nothing moves unless something new is published,
/// so what a test counts then is final.
pub async fn wait_quiet(bus: &Bus) {
    wait::until(
        Duration::from_secs(60),
        "the pipeline to be quiet",
        || async {
            for name in ["submit", "work", "events"] {
                let mut stream = bus.js.get_stream(bus.subjects.stream(name)).await.ok()?;
                if stream.info().await.ok()?.state.messages > 0 {
                    return None;
                }
                let mut consumers = stream.consumers();
                while let Some(info) = futures::StreamExt::next(&mut consumers).await {
                    if info.ok()?.num_ack_pending > 0 {
                        return None;
                    }
                }
            }
            Some(())
        },
    )
    .await;
}

/// Waits until a durable consumer of `stream` (or, for a flow set's name such as `llm`, one of
/// its flows' consumers) has delivered messages it still awaits acks for: work is in flight.
pub async fn wait_in_flight(bus: &Bus, stream: &str, consumer: &str) {
    wait::until(Duration::from_secs(30), "work in flight", || async {
        let stream = bus.js.get_stream(bus.subjects.stream(stream)).await.ok()?;
        let mut consumers = stream.consumers();
        while let Some(Ok(info)) = futures::StreamExt::next(&mut consumers).await {
            let named = bus.subjects.flow_set_of(&info.config.filter_subject);
            let ours = named.as_deref().unwrap_or(&info.name) == consumer;
            if ours && info.num_ack_pending > 0 {
                return Some(());
            }
        }
        None
    })
    .await;
}

/// Messages a stream holds now and the last sequence it ever assigned.
pub async fn stream_state(bus: &Bus, name: &str) -> (u64, u64) {
    let mut stream = bus
        .js
        .get_stream(bus.subjects.stream(name))
        .await
        .expect("stream");
    let info = stream.info().await.expect("stream info");
    (info.state.messages, info.state.last_sequence)
}

/// Every dead letter in the DLQ stream, decoded.
pub async fn dead_letters(bus: &Bus) -> Vec<chorus_core::messages::DeadLetter> {
    let stream = bus
        .js
        .get_stream(bus.subjects.stream("dlq"))
        .await
        .expect("dlq stream");
    let last = stream.cached_info().state.last_sequence;
    let mut entries = Vec::new();
    for seq in 1..=last {
        if let Ok(message) = stream.get_raw_message(seq).await {
            let kind = message
                .headers
                .get(chorus_core::codec::headers::TYPE)
                .map(|v| v.as_str().to_owned());
            if let Ok(entry) = chorus_core::codec::decode(kind.as_deref(), &message.payload) {
                entries.push(entry);
            }
        }
    }
    entries
}

/// The persona-roundtable job: three personas, a synthesis step, two assertions.
pub fn roundtable(model: &str) -> Value {
    json!({
        "model": model,
        "prompt": "Review this proposal from your role: {{ proposal }}",
        "input": {"proposal": "Move support triage to LLM-drafted replies."},
        "personas": [
            {"name": "cfo", "system": "You are the CFO."},
            {"name": "support-lead", "system": "You lead the support team."},
            {"name": "security-officer", "system": "You are the security officer."}
        ],
        "synthesis": {"prompt": "Say go or no-go.{% for a in answers %}\n[{{ a.persona }}] {{ a.text }}{% endfor %}"},
        "evaluate": {"threshold": 0.5, "assertions": [
            {"type": "length", "min": 40, "metric": "substance"},
            {"type": "icontains", "value": "support-lead", "weight": 2, "metric": "coverage"}
        ]},
        "metadata": {"workload": "persona-roundtable"}
    })
}

/// A route to `model` on the mock, through the OpenAI-compatible provider.
pub fn mock_route(name: &str, mock: &chorus_mock_llm::MockLlm, model: &str) -> RouteConfig {
    RouteConfig {
        base_url: Some(format!("{}/v1", mock.url())),
        timeout: Duration::from_millis(800),
        ..RouteConfig::new(name, "openai", model)
    }
}

/// Whether `python3` can import `module`; a missing one is a skip (with a loud warning), or a
/// failure where `TEST_REQUIRE_PYTHON` is set.
pub async fn python_has(module: &str) -> bool {
    let found = tokio::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("TEST_REQUIRE_PYTHON").is_err(),
            "TEST_REQUIRE_PYTHON is set but python3 cannot import {module}"
        );
        eprintln!(
            "WARNING: skipping a test: python3 cannot import {module} (pip install {module})"
        );
    }
    found
}

/// Chorus with every role but llm in this process, and three `chorus serve --roles llm` children.
pub async fn three_llm_pods(config: Config) -> (TestApp, Vec<Chorus>, Processes) {
    let roles = [
        RoleName::Edge,
        RoleName::Orchestrator,
        RoleName::Evaluator,
        RoleName::Persister,
    ];
    let processes = Processes::new(&config);
    let app = TestApp::start_roles(config, &roles).await;
    let pods = (0..3)
        .map(|_| processes.spawn(&["serve", "--roles", "llm"]))
        .collect();
    (app, pods, processes)
}

/// A simple one-call job.
pub fn single(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// `chorus` processes with a configuration file, for tests that kill or signal them.
pub struct Processes {
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Processes {
    pub fn new(config: &Config) -> Processes {
        let dir = tempfile::tempdir().expect("dir");
        let config_path = dir.path().join("chorus.toml");
        std::fs::write(
            &config_path,
            toml::to_string(config).expect("config as TOML"),
        )
        .expect("write config");
        Processes {
            config_path,
            _dir: dir,
        }
    }

    pub fn spawn(&self, args: &[&str]) -> Chorus {
        self.spawn_with(args, &[])
    }

    /// `chorus <args>` with environment variables over the configuration file.
    pub fn spawn_with(&self, args: &[&str], env: &[(&str, String)]) -> Chorus {
        let child = Command::new(env!("CARGO_BIN_EXE_chorus"))
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn chorus");
        Chorus(child)
    }

    /// `chorus <args>` as a [`Running`] child, its output read by the test.
    pub fn running(&self, args: &[&str]) -> Running {
        Running::spawn(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
                .arg("--config")
                .arg(&self.config_path)
                .args(args),
        )
    }

    /// Runs `chorus <args>` to completion. Async, so Chorus running in the test's own runtime
    /// keeps going meanwhile (a blocked runtime could hold SQLite's write lock the child needs).
    pub async fn run(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()
            .await
            .expect("run chorus")
    }
}

/// A `chorus` child whose output lines (stdout and stderr, logging at `info`) the test reads;
/// killed when dropped.
pub struct Running {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Running {
    pub fn spawn(command: &mut tokio::process::Command) -> Running {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chorus");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for pipe in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut pipe = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = pipe.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        Running { child, lines }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// Reads output until a line contains `needle`.
    pub async fn wait_for(&mut self, needle: &str) {
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(found, Ok(true)), "chorus never printed {needle:?}");
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        self.child.wait().await.expect("wait")
    }

    /// SIGKILL, and reap it.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL");
    }
}

/// A `chorus` child process, killed when dropped so a failing test leaves nothing running.
pub struct Chorus(Child);

impl Chorus {
    /// SIGTERM: a graceful stop.
    pub fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reaped");
    }

    /// Waits for the process to exit by itself.
    pub async fn exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = &mut self.0;
        wait::until(timeout, "the process to exit", || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        })
        .await
    }
}

impl Drop for Chorus {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `SELECT COUNT(*) …` on the database.
pub async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .expect("query")
        .expect("a row");
    row.try_get_by_index::<i64>(0).expect("a count")
}

/// Submits `n` roundtable jobs of two personas on `model` to the edge at `base`; their ids.
pub async fn submit_roundtables(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    n: usize,
) -> Vec<String> {
    let mut job = roundtable(model);
    job["personas"]
        .as_array_mut()
        .expect("personas")
        .truncate(2);
    let mut ids = Vec::new();
    for _ in 0..n {
        let body: Value = client
            .post(format!("{base}/v1/jobs"))
            .json(&job)
            .send()
            .await
            .expect("submit")
            .json()
            .await
            .expect("json");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    ids
}
