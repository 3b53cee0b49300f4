//! Streams and consumers as data: the JSON files under `nats/`, applied idempotently.
//!
//! A definition lists only the fields Chorus cares about. Applying compares exactly those fields
//! with what the server has: equal is a no-op, different is an in-place update (other fields are
//! left as an operator set them), and a change JetStream refuses in place (retention, storage, …)
//! is an error naming the fields and quoting the server. Unknown fields in a file are errors too.
//!
//! Every stream, the KV buckets' too, takes the configured replicas (`nats.replicas`); consumers
//! set none, so they follow their stream's. On a clustered server, one replica means a stream
//! lives on one node and is lost with it: [`Definitions::apply_with`] refuses that, or warns,
//! as its caller asks ([`SingleReplica`]).

use std::collections::BTreeMap;
use std::path::Path;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::{consumer, stream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::Bus;
use crate::error::{BusError, BusErrorKind};

/// The files shipped in the binary, relative to `nats/`.
const BUILTIN: &[(&str, &str)] = &[
    (
        "streams/submit.json",
        include_str!("../../../nats/streams/submit.json"),
    ),
    (
        "streams/work.json",
        include_str!("../../../nats/streams/work.json"),
    ),
    (
        "streams/events.json",
        include_str!("../../../nats/streams/events.json"),
    ),
    (
        "streams/dlq.json",
        include_str!("../../../nats/streams/dlq.json"),
    ),
    (
        "streams/jobs.json",
        include_str!("../../../nats/streams/jobs.json"),
    ),
    (
        "streams/limits.json",
        include_str!("../../../nats/streams/limits.json"),
    ),
    (
        "streams/budgets.json",
        include_str!("../../../nats/streams/budgets.json"),
    ),
    (
        "streams/cancels.json",
        include_str!("../../../nats/streams/cancels.json"),
    ),
    (
        "streams/results.json",
        include_str!("../../../nats/streams/results.json"),
    ),
    (
        "streams/advisories.json",
        include_str!("../../../nats/streams/advisories.json"),
    ),
    (
        "consumers/submit/orchestrator-submit.json",
        include_str!("../../../nats/consumers/submit/orchestrator-submit.json"),
    ),
    (
        "consumers/events/orchestrator.json",
        include_str!("../../../nats/consumers/events/orchestrator.json"),
    ),
    (
        "consumers/jobs/persister.json",
        include_str!("../../../nats/consumers/jobs/persister.json"),
    ),
    (
        "consumers/work/llm.json",
        include_str!("../../../nats/consumers/work/llm.json"),
    ),
    (
        "consumers/work/evaluator.json",
        include_str!("../../../nats/consumers/work/evaluator.json"),
    ),
    (
        "consumers/work/persister.json",
        include_str!("../../../nats/consumers/work/persister.json"),
    ),
    (
        "consumers/advisories/dlq-watcher.json",
        include_str!("../../../nats/consumers/advisories/dlq-watcher.json"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A file that is not a valid definition.
    #[error("{file}: {source}")]
    Invalid {
        file: String,
        #[source]
        source: FieldsError,
    },
    #[error(
        "{kind} {name}: the server refused to change {} in place ({source}). Revert the definition, or delete \
         the {kind} and apply again (deleting a stream deletes its messages)",
        fields.join(", ")
    )]
    Rejected {
        kind: &'static str,
        name: String,
        fields: Vec<String>,
        #[source]
        source: Box<BusError>,
    },
    /// What the server holds (merged with the definition) does not read as a configuration.
    #[error("{kind} {name}: {source}")]
    Unreadable {
        kind: &'static str,
        name: String,
        #[source]
        source: FieldsError,
    },
    /// Streams with one replica on a server that is part of a cluster: each would live on one
    /// node and be lost with it.
    #[error(
        "the NATS server is part of cluster {cluster}: streams with 1 replica lose their messages \
         with that node; set nats.replicas = 3 (CHORUS_NATS_REPLICAS=3), or pass \
         --allow-single-replica to `chorus nats apply` to keep 1"
    )]
    SingleReplicaOnCluster { cluster: String },
    /// Reading or writing the stream or consumer failed; the source's kind says whether trying
    /// again can help.
    #[error("{kind} {name}: {source}")]
    Nats {
        kind: &'static str,
        name: String,
        #[source]
        source: Box<BusError>,
    },
}

/// What is wrong with the fields of a definition.
#[derive(Debug, thiserror::Error)]
pub enum FieldsError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("unknown field(s): {}", fields.join(", "))]
    Unknown { fields: Vec<String> },
    #[error("a definition must be a JSON object")]
    NotAnObject,
    #[error("`durable_name` is required")]
    NoDurableName,
    #[error("expected streams/<name>.json or consumers/<stream>/<name>.json")]
    Misplaced,
    #[error("there is no streams/{stream}.json for this consumer")]
    NoStream { stream: String },
}

/// One stream definition and the consumers defined on it.
#[derive(Clone, Debug)]
pub struct StreamDef {
    pub file: String,
    pub fields: Map<String, Value>,
    pub consumers: Vec<ConsumerDef>,
}

#[derive(Clone, Debug)]
pub struct ConsumerDef {
    pub file: String,
    pub fields: Map<String, Value>,
}

impl StreamDef {
    pub fn name(&self) -> &str {
        self.fields
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

impl ConsumerDef {
    pub fn name(&self) -> &str {
        self.fields
            .get("durable_name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// A consumer made from this one: another name and filter, the same settings.
    pub fn derive(&self, name: &str, filter_subject: &str) -> ConsumerDef {
        let mut fields = self.fields.clone();
        fields.insert("durable_name".into(), name.into());
        fields.insert("filter_subject".into(), filter_subject.into());
        fields.remove("filter_subjects");
        ConsumerDef {
            file: format!("{} (as {name})", self.file),
            fields,
        }
    }

    /// Creates or updates this consumer on `stream`, like [`Definitions::apply`].
    pub async fn apply(&self, bus: &Bus, stream: &str) -> Result<Applied, DefinitionError> {
        apply_consumer(bus, stream, self).await
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Created,
    Unchanged,
    Updated(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub kind: &'static str,
    pub name: String,
    pub change: Change,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.change {
            Change::Created => write!(f, "{} {}: created", self.kind, self.name),
            Change::Unchanged => write!(f, "{} {}: unchanged", self.kind, self.name),
            Change::Updated(fields) => {
                write!(
                    f,
                    "{} {}: updated {}",
                    self.kind,
                    self.name,
                    fields.join(", ")
                )
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Definitions {
    pub streams: Vec<StreamDef>,
}

/// What applying does with streams of one replica on a clustered server
/// ([`DefinitionError::SingleReplicaOnCluster`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SingleReplica {
    /// Fail with the error, applying nothing (`chorus nats apply`).
    Refuse,
    /// Log the error as a warning and apply (processes applying at start-up).
    Warn,
    /// Apply without a word (`chorus nats apply --allow-single-replica`).
    Allow,
}

impl Definitions {
    /// The definitions a configuration names: its `nats.definitions` directory, else the built-in.
    pub fn configured(config: &chorus_core::config::NatsConfig) -> Result<Self, DefinitionError> {
        match &config.definitions {
            Some(dir) => Self::from_dir(dir, &config.prefix, config.replicas),
            None => Self::builtin(&config.prefix, config.replicas),
        }
    }

    /// The definitions built into the binary.
    pub fn builtin(prefix: &str, replicas: usize) -> Result<Self, DefinitionError> {
        Self::from_files(
            BUILTIN
                .iter()
                .map(|(file, text)| (file.to_string(), text.to_string())),
            prefix,
            replicas,
        )
    }

    /// The definitions in a directory laid out like `nats/`.
    pub fn from_dir(dir: &Path, prefix: &str, replicas: usize) -> Result<Self, DefinitionError> {
        let mut files = Vec::new();
        let read_dir = |path: &Path| {
            std::fs::read_dir(path).map_err(|source| DefinitionError::Read {
                file: path.display().to_string(),
                source,
            })
        };
        let json_files = |path: &Path| -> Result<Vec<std::path::PathBuf>, DefinitionError> {
            Ok(read_dir(path)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect())
        };
        let relative = |path: &Path| {
            path.strip_prefix(dir)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned()
        };
        for path in json_files(&dir.join("streams"))? {
            files.push((relative(&path), read(&path)?));
        }
        let consumers = dir.join("consumers");
        if consumers.is_dir() {
            for stream_dir in read_dir(&consumers)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
            {
                for path in json_files(&stream_dir)? {
                    files.push((relative(&path), read(&path)?));
                }
            }
        }
        files.sort();
        Self::from_files(files.into_iter(), prefix, replicas)
    }

    fn from_files(
        files: impl Iterator<Item = (String, String)>,
        prefix: &str,
        replicas: usize,
    ) -> Result<Self, DefinitionError> {
        let names = chorus_core::subjects::Subjects::new(prefix);
        let mut streams: BTreeMap<String, StreamDef> = BTreeMap::new();
        let mut consumers = Vec::new();
        for (file, text) in files {
            let text = names.fill(&text);
            let invalid = |source: FieldsError| DefinitionError::Invalid {
                file: file.clone(),
                source,
            };
            let fields: Map<String, Value> =
                serde_json::from_str(&text).map_err(|e| invalid(e.into()))?;
            let parts: Vec<&str> = file.trim_end_matches(".json").split('/').collect();
            match parts.as_slice() {
                ["streams", stem] => {
                    let mut fields = fields;
                    fields.insert("num_replicas".into(), replicas.into());
                    check::<stream::Config>(&fields).map_err(invalid)?;
                    streams.insert(
                        stem.to_string(),
                        StreamDef {
                            file: file.clone(),
                            fields,
                            consumers: Vec::new(),
                        },
                    );
                }
                ["consumers", stem, _] => {
                    check::<consumer::pull::Config>(&fields).map_err(invalid)?;
                    if fields.get("durable_name").and_then(Value::as_str).is_none() {
                        return Err(invalid(FieldsError::NoDurableName));
                    }
                    consumers.push((
                        stem.to_string(),
                        ConsumerDef {
                            file: file.clone(),
                            fields,
                        },
                    ));
                }
                _ => {
                    return Err(invalid(FieldsError::Misplaced));
                }
            }
        }
        for (stem, def) in consumers {
            let file = def.file.clone();
            streams
                .get_mut(&stem)
                .ok_or_else(|| DefinitionError::Invalid {
                    file,
                    source: FieldsError::NoStream { stream: stem },
                })?
                .consumers
                .push(def);
        }
        Ok(Self {
            streams: streams.into_values().collect(),
        })
    }

    /// The consumer named `name` and the stream it is on.
    pub fn consumer(&self, name: &str) -> Option<(&StreamDef, &ConsumerDef)> {
        self.streams.iter().find_map(|s| {
            s.consumers
                .iter()
                .find(|c| c.name() == name)
                .map(|c| (s, c))
        })
    }

    /// The smallest replica count of the streams (`None` without streams).
    pub fn replicas(&self) -> Option<u64> {
        self.streams
            .iter()
            .map(|s| {
                s.fields
                    .get("num_replicas")
                    .and_then(Value::as_u64)
                    .unwrap_or(1)
            })
            .min()
    }

    /// [`DefinitionError::SingleReplicaOnCluster`] when a stream has one replica and the server
    /// `bus` is connected to is part of a cluster (it names one in its `INFO`; nats-server refuses
    /// to run JetStream in a cluster without routes, so a name means peers).
    pub fn check_replicas(&self, bus: &Bus) -> Result<(), DefinitionError> {
        let cluster = bus
            .client
            .server_info()
            .cluster
            .filter(|name| !name.is_empty());
        match (cluster, self.replicas()) {
            (Some(cluster), Some(replicas)) if replicas <= 1 => {
                Err(DefinitionError::SingleReplicaOnCluster { cluster })
            }
            _ => Ok(()),
        }
    }

    /// Creates, updates or leaves alone every stream and consumer; reports what it did. Streams
    /// of one replica on a clustered server are applied with a warning
    /// ([`SingleReplica::Warn`]).
    pub async fn apply(&self, bus: &Bus) -> Result<Vec<Applied>, DefinitionError> {
        self.apply_with(bus, SingleReplica::Warn).await
    }

    /// [`Definitions::apply`], with `single` deciding about streams of one replica on a
    /// clustered server.
    pub async fn apply_with(
        &self,
        bus: &Bus,
        single: SingleReplica,
    ) -> Result<Vec<Applied>, DefinitionError> {
        if let Err(e) = self.check_replicas(bus) {
            match single {
                SingleReplica::Refuse => return Err(e),
                SingleReplica::Warn => tracing::warn!("{e}"),
                SingleReplica::Allow => {}
            }
        }
        let mut applied = Vec::new();
        for def in &self.streams {
            applied.push(apply_stream(bus, def).await?);
            for consumer in &def.consumers {
                applied.push(apply_consumer(bus, def.name(), consumer).await?);
            }
        }
        Ok(applied)
    }
}

fn read(path: &Path) -> Result<String, DefinitionError> {
    std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
        file: path.display().to_string(),
        source,
    })
}

/// Deserializes `fields` over `T`'s defaults, failing on any field `T` does not have.
fn check<T: DeserializeOwned + Serialize + Default>(
    fields: &Map<String, Value>,
) -> Result<T, FieldsError> {
    let mut merged = to_map(&T::default());
    merged.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut unknown = Vec::new();
    let value: T =
        serde_ignored::deserialize(Value::Object(merged), |path| unknown.push(path.to_string()))?;
    match unknown.is_empty() {
        true => Ok(value),
        false => Err(FieldsError::Unknown { fields: unknown }),
    }
}

/// The desired fields after a round trip through the client's types, so they compare with what
/// the server reports in the same normal form.
fn normalized<T: DeserializeOwned + Serialize + Default>(
    fields: &Map<String, Value>,
) -> Result<Map<String, Value>, FieldsError> {
    let value: T = check(fields)?;
    match serde_json::to_value(value)? {
        Value::Object(map) => Ok(map),
        _ => Err(FieldsError::NotAnObject),
    }
}

/// A failed update: refused by the server (an in-place change it does not allow), else a
/// failure to reach it.
fn refused(
    kind: &'static str,
    name: String,
    fields: Vec<String>,
    source: BusError,
) -> DefinitionError {
    let refused = matches!(
        source.kind(),
        BusErrorKind::Refused | BusErrorKind::Conflict
    );
    let source = Box::new(source);
    match refused {
        true => DefinitionError::Rejected {
            kind,
            name,
            fields,
            source,
        },
        false => DefinitionError::Nats { kind, name, source },
    }
}

/// Fields of `desired` whose value differs from `current` (a missing field is the default).
fn differences(
    keys: &Map<String, Value>,
    desired: &Map<String, Value>,
    current: &Map<String, Value>,
) -> Vec<String> {
    keys.keys()
        .filter(|k| desired.get(*k) != current.get(*k))
        .cloned()
        .collect()
}

/// `current` with the listed fields replaced by their desired values.
fn overlay(
    current: &Map<String, Value>,
    desired: &Map<String, Value>,
    fields: &[String],
) -> Map<String, Value> {
    let mut merged = current.clone();
    for field in fields {
        match desired.get(field) {
            Some(v) => merged.insert(field.clone(), v.clone()),
            None => merged.remove(field),
        };
    }
    merged
}

fn to_map<T: Serialize>(value: &T) -> Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

async fn apply_stream(bus: &Bus, def: &StreamDef) -> Result<Applied, DefinitionError> {
    let name = def.name().to_owned();
    let nats = |source: BusError| DefinitionError::Nats {
        kind: "stream",
        name: name.clone(),
        source: Box::new(source),
    };
    let unreadable = |source: FieldsError| DefinitionError::Unreadable {
        kind: "stream",
        name: name.clone(),
        source,
    };
    let desired = normalized::<stream::Config>(&def.fields).map_err(unreadable)?;
    let config: stream::Config = check(&desired).map_err(unreadable)?;
    let current = match bus.js.get_stream(&name).await {
        Ok(mut stream) => to_map(
            &stream
                .info()
                .await
                .map_err(|e| nats(BusError::request("read the stream", e)))?
                .config,
        ),
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            bus.js
                .create_stream(config)
                .await
                .map_err(|e| nats(BusError::request("create the stream", e)))?;
            return Ok(Applied {
                kind: "stream",
                name,
                change: Change::Created,
            });
        }
        Err(e) => return Err(nats(BusError::request("read the stream", e))),
    };
    let changed = differences(&def.fields, &desired, &current);
    if changed.is_empty() {
        return Ok(Applied {
            kind: "stream",
            name,
            change: Change::Unchanged,
        });
    }
    let merged: stream::Config =
        check(&overlay(&current, &desired, &changed)).map_err(unreadable)?;
    match bus.js.update_stream(merged).await {
        Ok(_) => Ok(Applied {
            kind: "stream",
            name,
            change: Change::Updated(changed),
        }),
        Err(e) => Err(refused(
            "stream",
            name,
            changed,
            BusError::request("update the stream", e),
        )),
    }
}

async fn apply_consumer(
    bus: &Bus,
    stream: &str,
    def: &ConsumerDef,
) -> Result<Applied, DefinitionError> {
    let name = def.name().to_owned();
    let full_name = format!("{stream}/{name}");
    let nats = |source: BusError| DefinitionError::Nats {
        kind: "consumer",
        name: full_name.clone(),
        source: Box::new(source),
    };
    let unreadable = |source: FieldsError| DefinitionError::Unreadable {
        kind: "consumer",
        name: full_name.clone(),
        source,
    };
    let desired = normalized::<consumer::pull::Config>(&def.fields).map_err(unreadable)?;
    let handle = bus
        .js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| nats(BusError::request("find the consumer's stream", e)))?;
    let current = match handle.consumer_info(&name).await {
        Ok(info) => to_map(&info.config),
        Err(e)
            if e.kind() == ConsumerInfoErrorKind::NotFound
                || matches!(e.kind(), ConsumerInfoErrorKind::JetStream(j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND) =>
        {
            let config: consumer::pull::Config = check(&desired).map_err(unreadable)?;
            handle
                .create_consumer(config)
                .await
                .map_err(|e| nats(BusError::request("create the consumer", e)))?;
            return Ok(Applied {
                kind: "consumer",
                name: full_name,
                change: Change::Created,
            });
        }
        Err(e) => return Err(nats(BusError::request("read the consumer", e))),
    };
    // Filters are always managed: removing one from a file must remove it from the server.
    let mut managed = def.fields.clone();
    for filter in ["filter_subject", "filter_subjects"] {
        managed.entry(filter).or_insert(Value::Null);
    }
    let changed = differences(&managed, &desired, &current);
    if changed.is_empty() {
        return Ok(Applied {
            kind: "consumer",
            name: full_name,
            change: Change::Unchanged,
        });
    }
    let merged: consumer::pull::Config =
        check(&overlay(&current, &desired, &changed)).map_err(unreadable)?;
    match handle.update_consumer(merged).await {
        Ok(_) => Ok(Applied {
            kind: "consumer",
            name: full_name,
            change: Change::Updated(changed),
        }),
        Err(e) => Err(refused(
            "consumer",
            full_name,
            changed,
            BusError::request("update the consumer", e),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stream_and_bucket_takes_the_configured_replicas_and_consumers_follow() {
        let definitions = Definitions::builtin("chorus", 3).expect("the built-in definitions");
        let buckets: Vec<&str> = definitions
            .streams
            .iter()
            .map(StreamDef::name)
            .filter(|name| name.starts_with("KV_"))
            .collect();
        assert_eq!(
            buckets,
            [
                "KV_chorus_budgets",
                "KV_chorus_cancels",
                "KV_chorus_jobs",
                "KV_chorus_limits"
            ]
        );
        for stream in &definitions.streams {
            assert_eq!(
                stream.fields.get("num_replicas"),
                Some(&Value::from(3)),
                "{}",
                stream.file
            );
            // A consumer without replicas of its own has its stream's.
            for consumer in &stream.consumers {
                assert!(
                    !consumer.fields.contains_key("num_replicas"),
                    "{} sets its own replicas",
                    consumer.file
                );
            }
        }
        assert_eq!(definitions.replicas(), Some(3));
        assert_eq!(
            Definitions::builtin("chorus", 1).expect("defs").replicas(),
            Some(1)
        );
    }
}
