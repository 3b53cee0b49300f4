//! The deployment kit agrees with the code: the dashboard and alerts query only series Chorus
//! exports (and the dashboard shows them all), the Kubernetes PrometheusRule carries the alert file
//! unchanged, every KEDA trigger scales on a stream and consumer `nats/` defines, every probe asks
//! the port its role serves, the shipped configurations load, the pods' grace period outlasts
//! the drain, every NATS server shipped or started takes the largest message a stream holds, and
//! the durability decisions hold: staging and prod give every stream 3 replicas, production's NATS
//! servers fsync before acknowledging (`sync_interval: always`, read back from a real nats-server
//! for compose), development's say their 2 minutes out loud. `deploy/check.py` checks the
//! manifests' shape; this checks their meaning.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chorus_actors::roles::limited_routes;
use chorus_core::config::Config;
use chorus_core::subjects::Subjects;
use chorus_telemetry::names;
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every document of a YAML file, as JSON values.
fn yaml_documents(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

/// Every object of the Kubernetes base, by file.
fn base_objects() -> Vec<(String, Value)> {
    let kustomization = &yaml_documents("deploy/k8s/base/kustomization.yaml")[0];
    kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| format!("deploy/k8s/base/{}", r.as_str().expect("a file")))
        .flat_map(|file| {
            yaml_documents(&file)
                .into_iter()
                .map(move |o| (file.clone(), o))
        })
        .collect()
}

fn of_kind<'a>(objects: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| o["kind"] == kind)
        .collect()
}

/// The series a PromQL expression reads, histogram suffixes removed; other exporters' series
/// (kube-state-metrics) are left out.
fn series_in(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("chorus_"))
        .map(|word| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .filter(|base| names::ALL.contains(base))
                .unwrap_or(word)
                .to_owned()
        })
        .collect()
}

fn alert_groups() -> Value {
    yaml_documents("deploy/prometheus/alerts.yml")[0]["groups"].clone()
}

fn alert_rules() -> Vec<Value> {
    alert_groups()
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

#[test]
fn the_dashboard_shows_every_exported_series_and_no_other() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/chorus.json")).expect("json");
    let mut shown = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let series = series_in(expr);
            assert!(!series.is_empty(), "{expr} reads no Chorus series");
            shown.extend(series);
        }
    }
    let exported: BTreeSet<String> = names::ALL.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(shown, exported, "the dashboard's series");
}

#[test]
fn the_alerts_read_exported_series_and_link_to_runbook_sections() {
    let runbook = read("deploy/RUNBOOK.md");
    let mut fenced = false;
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter(|l| {
            fenced ^= l.starts_with("```");
            !fenced
        })
        .filter_map(|l| l.strip_prefix('#'))
        .map(|heading| github_anchor(heading.trim_start_matches('#')))
        .collect();
    let rules = alert_rules();
    assert!(rules.len() >= 5, "{} alert rules", rules.len());
    for rule in rules {
        let name = rule["alert"].as_str().expect("alert");
        let expr = rule["expr"].as_str().expect("expr");
        for series in series_in(expr) {
            assert!(
                names::ALL.contains(&series.as_str()),
                "{name} reads {series}, which Chorus does not export"
            );
        }
        let link = rule["annotations"]["runbook"].as_str().expect("runbook");
        let anchor = link
            .strip_prefix("deploy/RUNBOOK.md#")
            .unwrap_or_else(|| panic!("{name}: runbook link {link}"));
        assert!(
            anchors.contains(anchor),
            "{name}: RUNBOOK.md has no #{anchor}"
        );
    }
}

/// The anchor GitHub gives a Markdown heading.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn the_prometheus_rule_carries_the_alert_file_unchanged() {
    let objects = base_objects();
    let rules = of_kind(&objects, "PrometheusRule");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["spec"]["groups"], alert_groups());
}

/// The definition of a consumer a KEDA trigger names, from `nats/`.
fn consumer_definition(config: &Config, stream: &str, consumer: &str) -> Option<Value> {
    let names = Subjects::new(&config.nats.prefix);
    let dir = std::fs::read_dir(repo("nats/streams"))
        .expect("nats/streams")
        .map(|entry| entry.expect("entry").path())
        .find(|path| {
            let stream_file: Value =
                serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
            names.fill(stream_file["name"].as_str().expect("name")) == stream
        })?
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    let text =
        std::fs::read_to_string(repo(&format!("nats/consumers/{dir}/{consumer}.json"))).ok()?;
    Some(serde_json::from_str(&text).expect("json"))
}

/// The Prometheus queries the worker roles that pull flows scale on, by ScaledObject: the
/// messages waiting in their consumers and flows, as chorus_consumer_pending sums each flow set
/// under its name ([`flow_sets`]).
const BACKLOGS: [(&str, &str); 3] = [
    (
        "chorus-llm",
        r#"sum(max by (consumer) (chorus_consumer_pending{stream="CHORUS_WORK",consumer=~"llm|llm-.+"}))"#,
    ),
    (
        "chorus-orchestrator",
        r#"sum(max by (stream, consumer) (chorus_consumer_pending{stream=~"CHORUS_SUBMIT|CHORUS_EVENTS",consumer=~"orchestrator|orchestrator-submit"}))"#,
    ),
    (
        "chorus-evaluator",
        r#"max(chorus_consumer_pending{stream="CHORUS_WORK",consumer="evaluator"})"#,
    ),
];

/// Checks the triggers of a ScaledObject against `config`; gives the consumers it scales on
/// (`flows` for a Prometheus trigger of [`BACKLOGS`]).
fn check_triggers(object: &Value, config: &Config) -> BTreeSet<String> {
    let target = object["spec"]["scaleTargetRef"]["name"]
        .as_str()
        .or(object["metadata"]["name"].as_str())
        .expect("target");
    let mut consumers = BTreeSet::new();
    for trigger in object["spec"]["triggers"].as_array().expect("triggers") {
        if trigger["type"] == "prometheus" {
            let (_, query) = BACKLOGS
                .iter()
                .find(|(name, _)| *name == target)
                .unwrap_or_else(|| panic!("{target} scales on a query of no flow set"));
            assert_eq!(trigger["metadata"]["query"], *query, "{target}");
            let threshold: u64 = trigger["metadata"]["threshold"]
                .as_str()
                .expect("threshold")
                .parse()
                .expect("a number");
            assert!(threshold >= 1, "{target}");
            consumers.insert("flows".to_owned());
            continue;
        }
        assert_eq!(trigger["type"], "nats-jetstream", "{target}");
        let stream = trigger["metadata"]["stream"].as_str().expect("stream");
        let consumer = trigger["metadata"]["consumer"].as_str().expect("consumer");
        let definition = consumer_definition(config, stream, consumer)
            .unwrap_or_else(|| panic!("{target} scales on {stream}/{consumer}, which nats/ lacks"));
        let lag: u64 = trigger["metadata"]["lagThreshold"]
            .as_str()
            .expect("lagThreshold")
            .parse()
            .expect("a number");
        let max_ack_pending = definition["max_ack_pending"]
            .as_u64()
            .expect("max_ack_pending");
        assert!(
            lag < max_ack_pending,
            "{target}: lagThreshold {lag} must be below {consumer}'s max_ack_pending {max_ack_pending}"
        );
        consumers.insert(consumer.to_owned());
    }
    consumers
}

/// The flow sets of the llm role under `config`, as chorus_consumer_pending names them: `llm`,
/// and `llm-<route>` per route with shared limits.
fn llm_flow_sets(config: &Config) -> BTreeSet<String> {
    let subjects = Subjects::new(&config.nats.prefix);
    let (tenant, band) = flow_of_acme();
    limited_routes(config)
        .into_keys()
        .map(|route| {
            subjects
                .limited_llm_flows(&route)
                .subject(None, band, &tenant)
        })
        .chain([subjects.llm_flows().subject(Some("any"), band, &tenant)])
        .map(|subject| subjects.flow_set_of(&subject).expect("a flow set"))
        .collect()
}

fn flow_of_acme() -> (chorus_core::Tenant, chorus_core::fair::Band) {
    let tenant = chorus_core::Tenant::new("acme").expect("tenant");
    (tenant, chorus_core::fair::Band::Batch)
}

#[test]
fn every_keda_trigger_scales_on_a_defined_consumer() {
    let base = kubernetes_config();
    let objects = base_objects();
    let scaled = of_kind(&objects, "ScaledObject");
    assert_eq!(scaled.len(), 4, "one ScaledObject per worker role");
    for object in scaled {
        let consumers = check_triggers(object, &base);
        let name = object["metadata"]["name"].as_str().expect("name");
        if BACKLOGS.iter().any(|(pulls_flows, _)| *pulls_flows == name) {
            assert_eq!(consumers, BTreeSet::from(["flows".to_owned()]), "{name}");
        }
    }
    // The orchestrator's and the evaluator's flows are counted under the names their queries
    // ask for.
    let subjects = Subjects::new(&base.nats.prefix);
    let (tenant, band) = flow_of_acme();
    let flow = chorus_core::subjects::Flow {
        lane: None,
        band,
        tenant,
    };
    for (flows, set) in [
        (subjects.submit_flows(), "orchestrator-submit"),
        (subjects.event_flows(), "orchestrator"),
        (subjects.evaluator_flows(), "evaluator"),
    ] {
        let filter = flows.filter(&flow);
        assert_eq!(
            subjects.flow_set_of(&filter).as_deref(),
            Some(set),
            "{filter}"
        );
    }
    // Production's routes have shared limits, so their calls wait in flows of their own: the
    // llm role's query must count those too, or a backlog there would never add a pod. Its
    // patch keeps the base's trigger.
    let prod = Config::load(Some(&repo("deploy/k8s/overlays/prod/chorus.toml"))).expect("loads");
    let sets = llm_flow_sets(&prod);
    assert!(sets.len() > 1, "prod has limited routes: {sets:?}");
    for set in &sets {
        assert!(set == "llm" || set.starts_with("llm-"), "{set} is counted");
    }
    let patch = &yaml_documents("deploy/k8s/overlays/prod/llm-scaling.yaml")[0];
    assert_eq!(patch["kind"], "ScaledObject");
    assert!(patch["spec"]["triggers"].is_null(), "the base's trigger");
}

/// `ENV` values of the image, which set the listen addresses the probes must ask.
fn image_env(key: &str) -> String {
    let dockerfile = read("deploy/docker/Dockerfile");
    dockerfile
        .split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the Dockerfile sets no {key}"))
        .to_owned()
}

fn port_of(listen: &str) -> u64 {
    listen
        .rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("a port")
}

#[test]
fn every_probe_asks_the_port_and_paths_its_role_serves() {
    let edge_port = port_of(&image_env("CHORUS_EDGE_LISTEN"));
    let probes_port = port_of(&image_env("CHORUS_PROBES_LISTEN"));
    let objects = base_objects();
    let deployments = of_kind(&objects, "Deployment");
    assert_eq!(deployments.len(), 5, "the edge and four worker roles");
    for deployment in deployments {
        let name = deployment["metadata"]["name"].as_str().expect("name");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("arg"))
            .collect();
        let role = match args.as_slice() {
            ["serve", "--roles", role] => *role,
            other => panic!("{name} runs {other:?}, not one role"),
        };
        assert_eq!(name, format!("chorus-{role}"));
        // The edge serves its probes and /metrics on the API port; workers on the probes port.
        let (port_name, port) = if role == "edge" {
            ("http", edge_port)
        } else {
            ("metrics", probes_port)
        };
        let ports = container["ports"].as_array().expect("ports");
        assert!(
            ports
                .iter()
                .any(|p| p["name"] == port_name && p["containerPort"] == port),
            "{name} must expose {port_name} on {port}: {ports:?}"
        );
        for (probe, path) in [
            ("readinessProbe", "/ready"),
            ("livenessProbe", "/health"),
            ("startupProbe", "/health"),
        ] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{name} {probe}");
            assert_eq!(get["port"], port_name, "{name} {probe}");
        }
    }
}

#[test]
fn the_shipped_configurations_load() {
    for path in [
        "deploy/k8s/base/chorus.toml",
        "deploy/k8s/overlays/staging/chorus.toml",
        "deploy/k8s/overlays/prod/chorus.toml",
        "deploy/compose/chorus.toml",
    ] {
        if let Err(e) = Config::load(Some(&repo(path))) {
            panic!("{path}: {e}");
        }
    }
}

/// `terminationGracePeriodSeconds` of every Chorus pod on Kubernetes.
pub fn grace_period() -> Duration {
    let defaults = &yaml_documents("deploy/k8s/base/pod-defaults.yaml")[0];
    let seconds = defaults["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    Duration::from_secs(seconds)
}

/// The configuration of the Kubernetes base.
pub fn kubernetes_config() -> Config {
    Config::load(Some(&repo("deploy/k8s/base/chorus.toml"))).expect("the base configuration")
}

#[test]
fn the_grace_period_outlasts_the_drain() {
    let grace = grace_period().as_secs();
    let objects = base_objects();
    let edge = of_kind(&objects, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "chorus-edge")
        .expect("chorus-edge");
    let pre_stop = edge["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]
        ["seconds"]
        .as_u64()
        .unwrap_or(0);
    for path in [
        "deploy/k8s/base/chorus.toml",
        "deploy/k8s/overlays/staging/chorus.toml",
        "deploy/k8s/overlays/prod/chorus.toml",
    ] {
        let config = Config::load(Some(&repo(path))).expect("loads");
        let needed = config.supervision.drain_timeout + Duration::from_secs(pre_stop);
        assert!(
            needed < Duration::from_secs(grace),
            "{path}: a drain of {:?} after a preStop of {pre_stop}s does not fit in {grace}s",
            config.supervision.drain_timeout
        );
    }
}

/// docker-compose.yml, its merge keys applied.
fn compose() -> Value {
    let text = read("docker-compose.yml");
    let mut compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("yaml");
    compose.apply_merge().expect("merge keys");
    serde_json::to_value(compose).expect("json")
}

#[test]
fn compose_gives_every_role_time_to_drain() {
    let compose = compose();
    let drain = Config::load(Some(&repo("deploy/compose/chorus.toml")))
        .expect("loads")
        .supervision
        .drain_timeout;
    let mut roles = 0;
    for (name, service) in compose["services"].as_object().expect("services") {
        if service["command"][0] != "serve" {
            continue;
        }
        roles += 1;
        let grace = service["stop_grace_period"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no stop_grace_period (docker's default is 10s)"));
        let grace = grace
            .strip_suffix('s')
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name}: stop_grace_period {grace} is not in seconds"));
        assert!(
            drain < Duration::from_secs(grace),
            "{name}: a drain of {drain:?} does not fit in {grace}s"
        );
    }
    assert_eq!(roles, 5, "the edge and four worker roles");
}

/// `max_payload` of Chorus's server settings, `nats/server/chorus.conf`.
fn max_payload() -> u64 {
    chorus_bus::natsd::SERVER_CONFIG
        .lines()
        .find_map(|l| l.trim().strip_prefix("max_payload:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("max_payload in nats/server/chorus.conf")
}

#[test]
fn every_shipped_nats_takes_the_largest_message_a_stream_holds() {
    let payload = max_payload();
    let mut largest = 0;
    for entry in std::fs::read_dir(repo("nats/streams"))
        .expect("nats/streams")
        .flatten()
    {
        let stream: Value =
            serde_json::from_str(&std::fs::read_to_string(entry.path()).expect("read"))
                .expect("json");
        largest = largest.max(stream["max_msg_size"].as_u64().unwrap_or(0));
    }
    assert!(
        largest > 1_000_000,
        "the streams take more than the default 1 MB"
    );
    assert!(
        payload >= largest,
        "max_payload {payload} < the largest stream message {largest}"
    );

    let nats = &compose()["services"]["nats"];
    let command: Vec<&str> = nats["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        command
            .windows(2)
            .any(|w| w == ["-c", "/etc/nats/chorus.conf"]),
        "{command:?}"
    );
    assert!(
        nats["volumes"]
            .as_array()
            .expect("volumes")
            .contains(&Value::from(
                "./nats/server/chorus.conf:/etc/nats/chorus.conf:ro"
            )),
        "{nats}"
    );
    let values = &yaml_documents("deploy/k8s/nats/values.yaml")[0];
    assert_eq!(
        values["config"]["merge"]["max_payload"].as_u64(),
        Some(payload)
    );
    assert!(
        read("nats/server/tenants.conf")
            .lines()
            .any(|l| l.trim() == "include chorus.conf")
    );
}

#[tokio::test]
async fn the_nats_servers_chorus_starts_take_the_largest_message() {
    // `chorus dev`, `chorus bench` and the testkit start the same NatsProcess.
    let payload = usize::try_from(max_payload()).expect("fits");
    let mut server = chorus_testkit::nats::NatsServer::start_new().await;
    let client = async_nats::connect(server.url()).await.expect("connect");
    assert_eq!(client.server_info().max_payload, payload);
    drop(client);

    // A restart keeps the port the server picked and the settings.
    let port = server.port();
    server.stop().await;
    server.start().await;
    assert_eq!(server.port(), port);
    let client = async_nats::connect(server.url()).await.expect("reconnect");
    assert_eq!(client.server_info().max_payload, payload);
}

#[test]
fn staging_and_prod_give_every_stream_three_replicas() {
    // The chart runs a JetStream cluster of three.
    let values = &yaml_documents("deploy/k8s/nats/values.yaml")[0];
    assert_eq!(values["config"]["cluster"]["enabled"], true);
    assert_eq!(values["config"]["cluster"]["replicas"], 3);
    for overlay in ["staging", "prod"] {
        let kustomization =
            &yaml_documents(&format!("deploy/k8s/overlays/{overlay}/kustomization.yaml"))[0];
        let generators = kustomization["configMapGenerator"]
            .as_array()
            .unwrap_or_else(|| panic!("{overlay} generates no ConfigMap"));
        assert!(
            generators.iter().any(|g| g["name"] == "chorus-config"
                && g["behavior"] == "replace"
                && g["files"] == serde_json::json!(["chorus.toml"])),
            "{overlay} must replace chorus-config with its chorus.toml: {generators:?}"
        );
        let path = format!("deploy/k8s/overlays/{overlay}/chorus.toml");
        let config = Config::load(Some(&repo(&path))).expect("loads");
        assert_eq!(config.nats.replicas, 3, "{path}");
        // Every stream and KV bucket it defines takes them.
        let definitions =
            chorus_bus::definitions::Definitions::configured(&config.nats).expect("definitions");
        assert_eq!(definitions.replicas(), Some(3), "{path}");
    }
}

#[test]
fn production_nats_fsyncs_before_acknowledging_and_development_says_its_interval() {
    // Kubernetes: the chart merges it into the server's `jetstream` block.
    let values = &yaml_documents("deploy/k8s/nats/values.yaml")[0];
    assert_eq!(
        values["config"]["jetstream"]["merge"]["sync_interval"], "always",
        "deploy/k8s/nats/values.yaml"
    );
    // Development (and the tests, and `chorus dev`): nats-server's default, written down, and
    // quoted (an unquoted 2m is 2,000,000 seconds).
    assert!(
        chorus_bus::natsd::SERVER_CONFIG
            .lines()
            .any(|l| l.trim() == r#"sync_interval: "2m""#),
        "nats/server/chorus.conf"
    );
    // Compose production: the overrides run NATS on nats-prod.conf.
    let (conf, _) = compose_nats(&prod_compose());
    assert_eq!(conf, "/etc/nats/nats-prod.conf");
}

/// docker-compose.yml with the production overrides over it (compose's merge: a service's
/// command replaced, its volumes added).
fn prod_compose() -> Value {
    let mut merged = compose();
    let text = read("deploy/compose/docker-compose.prod.yml");
    let prod: Value = serde_yaml_ng::from_str(&text).expect("yaml");
    let nats = &prod["services"]["nats"];
    if !nats["command"].is_null() {
        merged["services"]["nats"]["command"] = nats["command"].clone();
    }
    if let Some(volumes) = nats["volumes"].as_array() {
        merged["services"]["nats"]["volumes"]
            .as_array_mut()
            .expect("volumes")
            .extend(volumes.iter().cloned());
    }
    merged
}

/// The configuration file (`-c`, as the container sees it) of a compose file's NATS service and
/// its bind-mounted files: the container path and the file here.
fn compose_nats(compose: &Value) -> (String, Vec<(String, PathBuf)>) {
    let nats = &compose["services"]["nats"];
    let command: Vec<&str> = nats["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let conf = command
        .windows(2)
        .find(|w| w[0] == "-c")
        .map(|w| w[1].to_owned())
        .expect("nats runs with -c");
    let mounts = nats["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|volume| {
            let mut parts = volume.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            source
                .strip_prefix("./")
                .map(|source| (target.to_owned(), repo(source)))
        })
        .collect();
    (conf, mounts)
}

/// The `jetstream.config` a real nats-server reports (`/varz`) when run as `compose` runs it: its
/// configuration files laid out as the container sees them, JetStream and a store directory from
/// the command line.
async fn jetstream_as_compose_runs_it(compose: &Value) -> Value {
    let (conf, mounts) = compose_nats(compose);
    let dir = tempfile::tempdir().expect("dir");
    for (target, source) in &mounts {
        // Every file sits in the container's /etc/nats, so includes resolve beside each other.
        let name = target
            .strip_prefix("/etc/nats/")
            .unwrap_or_else(|| panic!("{target} is not in /etc/nats"));
        std::fs::copy(source, dir.path().join(name))
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    }
    let conf = dir
        .path()
        .join(conf.strip_prefix("/etc/nats/").expect("in /etc/nats"));
    let binary = chorus_bus::natsd::locate().expect("nats-server");
    let ports = dir.path().join("ports");
    std::fs::create_dir(&ports).expect("ports dir");
    let mut server = tokio::process::Command::new(binary)
        .arg("-c")
        .arg(&conf)
        .args(["-js", "-sd"])
        .arg(dir.path().join("data"))
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            "-1",
            "-m",
            "-1",
            "--ports_file_dir",
        ])
        .arg(&ports)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start nats-server");
    let monitoring =
        chorus_testkit::wait::until(Duration::from_secs(15), "nats-server's ports file", || {
            let ports = ports.clone();
            async move {
                let file = std::fs::read_dir(&ports).ok()?.flatten().next()?;
                let text = std::fs::read_to_string(file.path()).ok()?;
                let ports: Value = serde_json::from_str(&text).ok()?;
                ports["monitoring"][0].as_str().map(str::to_owned)
            }
        })
        .await;
    let varz: Value = reqwest::get(format!("{monitoring}/varz"))
        .await
        .expect("/varz")
        .json()
        .await
        .expect("json");
    server.kill().await.expect("stop nats-server");
    let mut stderr = String::new();
    if let Some(mut pipe) = server.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = pipe.read_to_string(&mut stderr).await;
    }
    // nats-server warns on stderr about a value it reads oddly (an unquoted duration).
    assert!(!stderr.contains("sync_interval"), "{stderr}");
    assert_eq!(
        varz["max_payload"].as_u64(),
        Some(max_payload()),
        "{}",
        conf.display()
    );
    assert_eq!(
        varz["jetstream"]["config"]["store_dir"],
        dir.path()
            .join("data")
            .join("jetstream")
            .display()
            .to_string(),
        "the command line's store directory"
    );
    varz["jetstream"]["config"].clone()
}

#[tokio::test]
async fn compose_nats_servers_run_with_the_decided_sync_interval() {
    // Development: an fsync every 2 minutes (nats-server reports nanoseconds), not on every write.
    let dev = jetstream_as_compose_runs_it(&compose()).await;
    assert_eq!(
        dev["sync_interval"].as_u64(),
        Some(120_000_000_000),
        "{dev}"
    );
    assert_eq!(dev["sync_always"], Value::Null, "{dev}");
    // Production: an fsync before every acknowledgement.
    let prod = jetstream_as_compose_runs_it(&prod_compose()).await;
    assert_eq!(prod["sync_always"], true, "{prod}");
}
