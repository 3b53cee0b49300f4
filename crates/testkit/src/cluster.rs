//! A JetStream cluster of `nats-server` processes on loopback for one test, killed on drop: the
//! [`NatsProcess`] of [`crate::nats`] (Chorus's server settings, a client port the server picked
//! itself, a temp store of its own) times `n`, named `n0`, `n1`, … and routed to each other in the
//! cluster `chorus`. Tests of what survives a leader failing use it to find the node that leads a
//! stream, a consumer or a KV bucket, to move that leadership onto a chosen node, and to crash
//! ([`NatsCluster::kill`], SIGKILL), restart ([`NatsCluster::restart`], same ports and store) or
//! freeze ([`NatsCluster::pause`], SIGSTOP, until [`NatsCluster::resume`]) one node.
//!
//! Every question to the cluster goes through a fresh client to one node that is up and not
//! paused, with short timeouts, and on to the next node when that one does not answer; the
//! questions are plain JetStream API requests (`$JS.API.STREAM.INFO.…`,
//! `$JS.API.STREAM.LEADER.STEPDOWN.…`), so the answers are the server's own JSON.
//!
//! Extra server configuration ([`NatsCluster::start_with_config`]) goes into every node's file
//! after Chorus's settings and the node's `server_name` and `cluster` block. A `jetstream { … }`
//! block there works alongside the `-js -sd <dir>` flags every node is started with (e.g.
//! `jetstream { sync_interval: always }`), as long as it sets no `store_dir`: the server refuses a
//! second one ("Duplicate 'store_dir' configuration").
//!
//! Waits that can fail (a leader that does not move, a replica that does not catch up) panic at
//! their deadline with what was still wrong and the end of every node's log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chorus_bus::natsd::NatsProcess;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// How long one request to one node may take before the next node is asked.
const REQUEST: Duration = Duration::from_secs(2);
/// How long a start waits for JetStream to answer through every node.
const START: Duration = Duration::from_secs(30);
/// How long a move of a leader may take.
const MOVE: Duration = Duration::from_secs(30);
/// How long a move waits for a step-down to elect someone before it steps down again.
const ELECTION: Duration = Duration::from_secs(5);
/// How many attempts a start makes (a cluster port taken in between fails one).
const START_ATTEMPTS: usize = 3;
/// How many lines of each node's log a panic message shows.
const LOG_TAIL: usize = 40;

/// One server of the cluster. The process is declared (so dropped, i.e. killed) before its
/// directory is removed.
struct Node {
    process: NatsProcess,
    _dir: tempfile::TempDir,
    name: String,
    cluster_port: u16,
    monitor_port: u16,
    /// False from a kill until the restart.
    up: bool,
    /// Between a pause (SIGSTOP) and a resume (SIGCONT).
    paused: AtomicBool,
}

/// A JetStream cluster of local `nats-server` processes; see the module docs.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

/// A node that did not start, with its server's log.
#[derive(Debug, thiserror::Error)]
#[error("node {name}: {cause}\n{log}")]
struct NodeFailed {
    name: String,
    #[source]
    cause: chorus_bus::natsd::NatsProcessError,
    log: String,
}

impl NatsCluster {
    /// Starts `n` nodes named "n0", "n1", … in cluster "chorus" and waits until JetStream has a
    /// meta leader and every node answers JetStream API requests.
    pub async fn start(n: usize) -> Self {
        Self::start_with_config(n, "").await
    }

    /// Same, with `extra` server configuration appended to every node's (after its
    /// `server_name` and `cluster` block). A `jetstream { … }` block works alongside the `-js -sd`
    /// flags, but must not set `store_dir`; see the module docs.
    pub async fn start_with_config(n: usize, extra: &str) -> Self {
        assert!(n > 0, "a cluster needs at least one node");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(n, extra).await {
                Ok(cluster) => {
                    for node in 0..n {
                        cluster.wait_jetstream(node, START).await;
                    }
                    cluster.wait_placement(START).await;
                    return cluster;
                }
                // A cluster port taken by someone else between `free_port` and the server's bind
                // fails a node at start-up; new ports for all nodes make a new attempt.
                Err(failure) => failures.push(failure.to_string()),
            }
        }
        panic!(
            "a {n}-node NATS cluster did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n\n")
        );
    }

    async fn try_start(n: usize, extra: &str) -> Result<Self, NodeFailed> {
        let cluster_ports: Vec<u16> = (0..n).map(|_| crate::nats::free_port()).collect();
        let mut nodes = Vec::with_capacity(n);
        for (i, &cluster_port) in cluster_ports.iter().enumerate() {
            let name = format!("n{i}");
            let routes = cluster_ports
                .iter()
                .filter(|&&p| p != cluster_port)
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(", ");
            let monitor_port = crate::nats::free_port();
            let config = format!(
                "server_name: {name}\nhttp: 127.0.0.1:{monitor_port}\n\
                 cluster {{\n  name: chorus\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{routes}]\n}}\n\
                 {extra}\n"
            );
            let dir = tempfile::tempdir().expect("temp dir for a NATS node");
            let process = NatsProcess::start(dir.path(), &config, Vec::new())
                .await
                .map_err(|cause| NodeFailed {
                    log: std::fs::read_to_string(dir.path().join("nats-server.log"))
                        .unwrap_or_default(),
                    name: name.clone(),
                    cause,
                })?;
            nodes.push(Node {
                process,
                _dir: dir,
                name,
                cluster_port,
                monitor_port,
                up: true,
                paused: AtomicBool::new(false),
            });
        }
        Ok(Self { nodes })
    }

    /// Every node's client URL, comma-separated: "nats://127.0.0.1:p0,nats://127.0.0.1:p1,…"
    /// (what `nats.url` takes; `async_nats::connect` takes [`Self::url_list`] instead, it does not
    /// split a string at commas).
    pub fn urls(&self) -> String {
        self.url_list().join(",")
    }

    /// Every node's client URL.
    pub fn url_list(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.process.url()).collect()
    }

    pub fn url(&self, node: usize) -> String {
        self.node(node).process.url()
    }

    /// The node's server name: "n0", "n1", …
    pub fn name(&self, node: usize) -> &str {
        &self.node(node).name
    }

    /// The node a server name (as JetStream reports leaders and replicas) belongs to.
    pub fn node_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == server_name)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The port the node listens on for routes from the others.
    pub fn cluster_port(&self, node: usize) -> u16 {
        self.node(node).cluster_port
    }

    /// The node's process id, while it runs.
    pub fn pid(&self, node: usize) -> Option<u32> {
        self.node(node).process.pid()
    }

    /// The node's monitoring endpoint (`/varz`, `/jsz`, `/healthz`, …): "http://127.0.0.1:p".
    pub fn monitor_url(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.node(node).monitor_port)
    }

    /// A monitoring endpoint of the node (`path` such as "/varz" or "/jsz?acc=1"), as JSON; `None`
    /// if the node is down, paused or does not answer within 2 s.
    pub async fn monitor(&self, node: usize, path: &str) -> Option<Value> {
        let n = self.node(node);
        if !n.up || n.paused.load(Ordering::SeqCst) {
            return None;
        }
        let get = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", n.monitor_port))
                .await
                .ok()?;
            let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.ok()?;
            let response = String::from_utf8(response).ok()?;
            let (head, body) = response.split_once("\r\n\r\n")?;
            if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
                return None;
            }
            serde_json::from_str(body).ok()
        };
        tokio::time::timeout(REQUEST, get).await.ok().flatten()
    }

    pub fn log_path(&self, node: usize) -> std::path::PathBuf {
        self.node(node).process.log_path()
    }

    /// Whether the node runs (it was not killed, or was restarted since); a paused node runs.
    pub fn is_up(&self, node: usize) -> bool {
        self.node(node).up
    }

    pub fn is_paused(&self, node: usize) -> bool {
        self.node(node).paused.load(Ordering::SeqCst)
    }

    /// A client given every node's URL, as Chorus connects to a cluster.
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(self.url_list())
            .await
            .unwrap_or_else(|e| panic!("connecting to the NATS cluster {}: {e}", self.urls()))
    }

    /// The node leading the stream, asked through any node that is up and not paused; `None`
    /// while there is none (an election), while the leader is paused, or when no node answers.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        let info = self
            .api(&format!("$JS.API.STREAM.INFO.{stream}"), "")
            .await?;
        self.leader_in(&info)
    }

    /// The node leading the durable consumer `consumer` of `stream`; see [`Self::stream_leader`].
    pub async fn consumer_leader(&self, stream: &str, consumer: &str) -> Option<usize> {
        let info = self
            .api(&format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"), "")
            .await?;
        self.leader_in(&info)
    }

    /// The node leading the KV bucket (its stream `KV_<bucket>`); see [`Self::stream_leader`].
    pub async fn bucket_leader(&self, bucket: &str) -> Option<usize> {
        self.stream_leader(&format!("KV_{bucket}")).await
    }

    /// Moves the stream's leader onto `node`: a leader step-down with `node` as the preferred
    /// placement (nats-server 2.11 and later), repeated until `node` leads; panics after 30 s.
    pub async fn move_stream_leader(&self, stream: &str, node: usize) {
        self.move_leader(
            &format!("stream {stream}"),
            &format!("$JS.API.STREAM.INFO.{stream}"),
            &format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
            node,
        )
        .await;
    }

    /// Moves the consumer's leader onto `node`; see [`Self::move_stream_leader`].
    pub async fn move_consumer_leader(&self, stream: &str, consumer: &str, node: usize) {
        self.move_leader(
            &format!("consumer {consumer} of stream {stream}"),
            &format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
            &format!("$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}"),
            node,
        )
        .await;
    }

    /// Moves the KV bucket's leader onto `node`; see [`Self::move_stream_leader`].
    pub async fn move_bucket_leader(&self, bucket: &str, node: usize) {
        self.move_stream_leader(&format!("KV_{bucket}"), node).await;
    }

    async fn move_leader(&self, what: &str, info_subject: &str, stepdown: &str, node: usize) {
        let target = self.name(node).to_owned();
        let body = serde_json::json!({ "placement": { "preferred": target } }).to_string();
        let deadline = Instant::now() + MOVE;
        let mut last = String::from("no step-down sent");
        loop {
            let info = self.api(info_subject, "").await;
            let leader = info.as_ref().and_then(|i| self.leader_in(i));
            if leader == Some(node) {
                return;
            }
            if Instant::now() >= deadline {
                let info = info.map_or_else(|| "no node answered".to_owned(), |i| i.to_string());
                panic!(
                    "the leader of {what} did not move to {target} within {MOVE:?}: it is {}; \
                     last step-down answer: {last}; info: {info}\n{}",
                    leader.map_or("none", |l| self.name(l)),
                    self.log_tails()
                );
            }
            let Some(from) = leader else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let answer = self.api(stepdown, &body).await;
            last = answer
                .as_ref()
                .map_or_else(|| "no node answered".to_owned(), Value::to_string);
            if answer.is_some_and(|a| a.get("error").is_some()) {
                // Refused (the preferred node not current yet, say): no election to wait for.
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            // Wait for the election the step-down started (or for nothing, if it was refused).
            let elected = Instant::now() + ELECTION;
            while Instant::now() < elected.min(deadline) {
                let now = match self.api(info_subject, "").await {
                    Some(info) => self.leader_in(&info),
                    None => None,
                };
                if now.is_some() && now != Some(from) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Kills the node at once (SIGKILL, also when it is paused), as a crash would; its store is
    /// kept for [`Self::restart`].
    pub async fn kill(&mut self, node: usize) {
        let n = self.node_mut(node);
        n.process.kill().await;
        n.up = false;
        n.paused.store(false, Ordering::SeqCst);
    }

    /// Restarts a killed node on the same ports and store; returns once it accepts clients
    /// (JetStream may answer through it only later: [`Self::wait_jetstream`]).
    pub async fn restart(&mut self, node: usize) {
        let n = self.node_mut(node);
        assert!(
            !n.up,
            "NATS node {} is running: kill it before a restart",
            n.name
        );
        if let Err(e) = n.process.restart().await {
            let log = std::fs::read_to_string(n.process.log_path()).unwrap_or_default();
            panic!(
                "restarting NATS node {}: {e}\n{}",
                n.name,
                tail(&log, LOG_TAIL)
            );
        }
        n.up = true;
    }

    /// Freezes the node (SIGSTOP): its connections stay open but it answers nothing, as a node
    /// stalled by its disk or a long pause would.
    pub fn pause(&self, node: usize) {
        self.signal(node, nix::sys::signal::Signal::SIGSTOP);
        self.node(node).paused.store(true, Ordering::SeqCst);
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&self, node: usize) {
        self.signal(node, nix::sys::signal::Signal::SIGCONT);
        self.node(node).paused.store(false, Ordering::SeqCst);
    }

    fn signal(&self, node: usize, signal: nix::sys::signal::Signal) {
        let n = self.node(node);
        let pid = n
            .process
            .pid()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_else(|| panic!("NATS node {} is not running", n.name));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .unwrap_or_else(|e| panic!("sending {signal} to NATS node {}: {e}", n.name));
    }

    /// Waits until each named stream has a leader and every replica is current (none offline,
    /// none lagging), e.g. until a restarted node has caught up; panics after `timeout` with what
    /// was still behind.
    pub async fn wait_caught_up(&self, streams: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut behind = Vec::new();
            for stream in streams {
                if let Some(problem) = self.behind(stream).await {
                    behind.push(format!("stream {stream}: {problem}"));
                }
            }
            if behind.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "streams not caught up after {timeout:?}:\n{}\n{}",
                    behind.join("\n"),
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What keeps the stream from being caught up, or `None` when it is.
    async fn behind(&self, stream: &str) -> Option<String> {
        let Some(info) = self.api(&format!("$JS.API.STREAM.INFO.{stream}"), "").await else {
            return Some("no node answered".to_owned());
        };
        if let Some(error) = info.get("error") {
            return Some(format!("error {error}"));
        }
        let Some(leader) = self.leader_in(&info) else {
            return Some(format!("no leader: {}", info["cluster"]));
        };
        let replicas = info["config"]["num_replicas"].as_u64().unwrap_or(1);
        let peers = info["cluster"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut problems = Vec::new();
        if peers.len() as u64 + 1 != replicas {
            problems.push(format!(
                "{} replicas besides the leader {}, want {}",
                peers.len(),
                self.name(leader),
                replicas - 1
            ));
        }
        for peer in &peers {
            let current = peer["current"].as_bool().unwrap_or(false);
            let offline = peer["offline"].as_bool().unwrap_or(false);
            let lag = peer["lag"].as_u64().unwrap_or(0);
            if !current || offline || lag > 0 {
                problems.push(format!("replica {peer}"));
            }
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// Waits until JetStream answers through `node`: the node knows a meta leader (its `/jsz`)
    /// and the account info request through it succeeds; panics after `timeout`.
    pub async fn wait_jetstream(&self, node: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let meta_leader = self
                .monitor(node, "/jsz")
                .await
                .and_then(|jsz| jsz["meta_cluster"]["leader"].as_str().map(str::to_owned))
                .filter(|leader| !leader.is_empty());
            // Asked only once a meta leader is known: without one the request goes unanswered
            // until the node notices, then fails ("JetStream system temporarily unavailable").
            let last = match meta_leader {
                None => "no meta leader in its /jsz".to_owned(),
                Some(_) => match self.api_via(node, "$JS.API.INFO", "").await {
                    Some(info) if info.get("error").is_none() => return,
                    Some(info) => info.to_string(),
                    None => "no answer to $JS.API.INFO".to_owned(),
                },
            };
            if Instant::now() >= deadline {
                panic!(
                    "JetStream did not answer through NATS node {} within {timeout:?}; last answer: \
                     {last}\n{}",
                    self.name(node),
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the meta leader can place a stream on every node (or on 5, the most a stream
    /// takes): it knows each server only some time after the election, and until then creating a
    /// stream with that many replicas fails with "no suitable peers for placement". Creates and
    /// deletes a probe stream to find out; panics after `timeout`.
    async fn wait_placement(&self, timeout: Duration) {
        const PROBE: &str = "TESTKIT_CLUSTER_PROBE";
        let config = serde_json::json!({
            "name": PROBE,
            "subjects": ["testkit-cluster-probe"],
            "num_replicas": self.nodes.len().min(5),
        })
        .to_string();
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        loop {
            match self
                .api(&format!("$JS.API.STREAM.CREATE.{PROBE}"), &config)
                .await
            {
                Some(answer) if answer.get("error").is_none() => break,
                Some(answer) => last = answer.to_string(),
                None => {}
            }
            if Instant::now() >= deadline {
                panic!(
                    "the NATS cluster could not place a stream on {} nodes within {timeout:?}; last \
                     answer: {last}\n{}",
                    self.nodes.len().min(5),
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        loop {
            match self
                .api(&format!("$JS.API.STREAM.DELETE.{PROBE}"), "")
                .await
            {
                Some(answer) if answer.get("error").is_none() => return,
                Some(answer) => last = answer.to_string(),
                None => {}
            }
            if Instant::now() >= deadline {
                panic!(
                    "the NATS cluster did not delete the probe stream within {timeout:?}; last \
                     answer: {last}\n{}",
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node named as leader in a stream or consumer info, if it is up and not paused (a
    /// paused leader leads nothing, even before the others have elected a new one).
    fn leader_in(&self, info: &Value) -> Option<usize> {
        let name = info.get("cluster")?.get("leader")?.as_str()?;
        self.node_of(name)
            .filter(|&n| self.nodes[n].up && !self.nodes[n].paused.load(Ordering::SeqCst))
    }

    /// A JetStream API request answered through the first node that is up, not paused, and
    /// answers; `None` when none does.
    async fn api(&self, subject: &str, body: &str) -> Option<Value> {
        for node in 0..self.nodes.len() {
            if let Some(answer) = self.api_via(node, subject, body).await {
                return Some(answer);
            }
        }
        None
    }

    /// A JetStream API request through `node`, if it is up, not paused and answers in time.
    async fn api_via(&self, node: usize, subject: &str, body: &str) -> Option<Value> {
        let n = self.node(node);
        if !n.up || n.paused.load(Ordering::SeqCst) {
            return None;
        }
        let ask = async {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(REQUEST)
                .request_timeout(Some(REQUEST))
                .ignore_discovered_servers()
                .connect(n.process.url())
                .await
                .ok()?;
            let answer = client
                .request(subject.to_owned(), body.to_owned().into())
                .await
                .ok();
            drop(client);
            serde_json::from_slice(&answer?.payload).ok()
        };
        tokio::time::timeout(REQUEST * 2, ask).await.ok().flatten()
    }

    /// The last lines of every node's log, for panic messages.
    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let path = n.process.log_path();
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                format!(
                    "--- {} ({}{}), {}:\n{}",
                    n.name,
                    if n.up { "up" } else { "killed" },
                    if n.paused.load(Ordering::SeqCst) {
                        ", paused"
                    } else {
                        ""
                    },
                    path.display(),
                    tail(&log, LOG_TAIL)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn node(&self, node: usize) -> &Node {
        self.nodes
            .get(node)
            .unwrap_or_else(|| panic!("no NATS node {node} in a cluster of {}", self.nodes.len()))
    }

    fn node_mut(&mut self, node: usize) -> &mut Node {
        let len = self.nodes.len();
        self.nodes
            .get_mut(node)
            .unwrap_or_else(|| panic!("no NATS node {node} in a cluster of {len}"))
    }
}

impl Drop for NatsCluster {
    /// Kills every node at once, paused ones too (SIGKILL ends a stopped process as well); each
    /// [`NatsProcess`] would kill its own on drop too, but one after the other.
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(pid) = node.process.pid().and_then(|p| i32::try_from(p).ok()) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
