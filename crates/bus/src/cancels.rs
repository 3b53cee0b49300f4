//! Cancelled jobs and batches, in the `<prefix>_cancels` KV bucket, mirrored in every process.
//!
//! A cancel is one key: `job.<tenant>.<job>` or `batch.<tenant>.<batch>`. Each orchestrator and
//! llm process watches the bucket (history first, then live updates) into an in-memory set, so
//! checking "was this cancelled?" before dispatching or sending a call costs no round trip. A new
//! cancel reaches every watcher within milliseconds of being written; a call already on the wire
//! by then cannot be recalled.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv::{Operation, Store};
use chorus_core::subjects::Subjects;
use chorus_core::{JobId, Tenant};

use crate::mirror::{Mirror, mirror};
use crate::{Bus, BusError};

/// The cancels bucket, for writing cancels.
#[derive(Clone)]
pub struct Cancels {
    bus: Bus,
    kv: Store,
}

impl std::fmt::Debug for Cancels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancels")
            .field("bucket", &self.kv.name)
            .finish()
    }
}

impl Cancels {
    pub async fn open(bus: &Bus) -> Result<Self, BusError> {
        let kv = bus
            .js
            .get_key_value(bus.subjects.cancels_bucket())
            .await
            .map_err(|e| BusError::request("open the cancels bucket", e))?;
        Ok(Self {
            bus: bus.clone(),
            kv,
        })
    }

    pub async fn cancel_job(&self, tenant: &Tenant, job: JobId) -> Result<(), BusError> {
        self.put(self.bus.subjects.cancelled_job_key(tenant, job))
            .await
    }

    pub async fn cancel_batch(&self, tenant: &Tenant, batch: &str) -> Result<(), BusError> {
        self.put(self.bus.subjects.cancelled_batch_key(tenant, batch))
            .await
    }

    async fn put(&self, key: String) -> Result<(), BusError> {
        let at = chorus_core::ids::now_millis().to_string();
        self.kv
            .put(key, at.into())
            .await
            .map(drop)
            .map_err(|e| BusError::request("write a cancel", e))
    }

    /// Starts mirroring the bucket; returns once the cancels already written are loaded.
    pub async fn watch(&self) -> Result<CancelSet, BusError> {
        let keys: Arc<RwLock<HashSet<String>>> = Arc::default();
        let live = Arc::clone(&keys);
        let mirror = mirror(&self.bus, &self.kv, "cancels", move |entry| {
            let mut keys = live
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match entry.operation {
                Operation::Put => keys.insert(entry.key),
                Operation::Delete | Operation::Purge => keys.remove(&entry.key),
            };
        })
        .await?;
        Ok(CancelSet {
            subjects: self.bus.subjects.clone(),
            keys,
            _mirror: Arc::new(mirror),
        })
    }
}

/// What has been cancelled, as this process has seen it.
#[derive(Clone)]
pub struct CancelSet {
    subjects: Subjects,
    keys: Arc<RwLock<HashSet<String>>>,
    _mirror: Arc<Mirror>,
}

impl std::fmt::Debug for CancelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelSet").finish_non_exhaustive()
    }
}

impl CancelSet {
    /// Why the job must not go on: its own cancel or its batch's, if any.
    pub fn cancelled(&self, tenant: &Tenant, job: JobId, batch: Option<&str>) -> Option<String> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if keys.is_empty() {
            return None;
        }
        if keys.contains(&self.subjects.cancelled_job_key(tenant, job)) {
            return Some("the job was cancelled".into());
        }
        batch
            .filter(|batch| keys.contains(&self.subjects.cancelled_batch_key(tenant, batch)))
            .map(|batch| format!("batch {batch} was cancelled"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::definitions::Definitions;
    use chorus_testkit::nats::NatsServer;

    #[tokio::test]
    async fn cancels_reach_watchers_old_and_new() -> Result<(), Box<dyn std::error::Error>> {
        let server = NatsServer::start_new().await;
        let bus = Bus::connect(&server.url(), "chorus", "test", Duration::from_secs(5)).await?;
        Definitions::builtin("chorus", 1)?.apply(&bus).await?;
        let cancels = Cancels::open(&bus).await?;
        let tenant = Tenant::new("acme")?;
        let (early, late, other) = (JobId::new(), JobId::new(), JobId::new());
        cancels.cancel_job(&tenant, early).await?;
        cancels.cancel_batch(&tenant, "batch_1").await?;

        let set = cancels.watch().await?;
        assert!(set.cancelled(&tenant, early, None).is_some());
        assert!(set.cancelled(&tenant, other, Some("batch_1")).is_some());
        assert_eq!(set.cancelled(&tenant, other, Some("batch_2")), None);
        assert_eq!(set.cancelled(&Tenant::new("beta")?, early, None), None);

        cancels.cancel_job(&tenant, late).await?;
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            while set.cancelled(&tenant, late, None).is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            seen.is_ok(),
            "a cancel written after the watch began never arrived"
        );
        Ok(())
    }
}
