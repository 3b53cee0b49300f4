//! A KV bucket mirrored in a process: its history loaded first, then every live change, so
//! reading what the bucket holds costs no round trip. The cancels and the budgets use it.

use std::time::Duration;

use async_nats::jetstream::kv::{Entry, Store};
use chorus_core::subjects::Subjects;
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::{Bus, BusError, BusErrorKind};

/// The task that keeps a mirror current; stops it when the last handle is dropped.
pub struct Mirror(JoinHandle<()>);

impl Drop for Mirror {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Feeds `apply` every entry of `kv`: the values already written (returning once they are
/// applied), then each change as it happens. `what` names the bucket in errors and logs.
pub async fn mirror(
    bus: &Bus,
    kv: &Store,
    what: &'static str,
    apply: impl Fn(Entry) + Send + 'static,
) -> Result<Mirror, BusError> {
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| BusError::request(format!("watch the {what} bucket"), e))?;
    // Fresh stream info (the KV handle's status is cached from when it was opened).
    let pending = bus
        .js
        .get_stream(Subjects::bucket_stream(&kv.name))
        .await
        .map_err(|e| BusError::request(format!("read the {what} stream"), e))?
        .cached_info()
        .state
        .messages;
    // The history: until the entry with nothing left behind it (none when the bucket is empty).
    if pending > 0 {
        let loaded = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(entry) = watch.next().await {
                let entry =
                    entry.map_err(|e| BusError::request(format!("load the {what} bucket"), e))?;
                let last = entry.delta == 0;
                apply(entry);
                if last {
                    break;
                }
            }
            Ok::<_, BusError>(())
        })
        .await;
        loaded.map_err(|elapsed| {
            BusError::new(
                format!("load the {what} bucket"),
                BusErrorKind::Unavailable,
                elapsed,
            )
        })??;
    }
    let task = tokio::spawn(async move {
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(entry) => apply(entry),
                Err(e) => tracing::warn!(error = %e, "watching the {what} bucket"),
            }
        }
        tracing::warn!("the {what} bucket watch ended");
    });
    Ok(Mirror(task))
}
