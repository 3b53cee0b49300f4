//! The root of the supervision tree and the process lifecycle around it.
//!
//! The root starts each role's supervisor, does not restart them (a role supervisor only fails
//! once its own restart budget is spent), and on such a failure stops everything so the process
//! exits non-zero. On shutdown it drains the HTTP servers first (the edge stops accepting and
//! answers the requests it holds, while the other roles still work for them), then every other
//! role at once: each stops pulling, finishes or gives back what it holds, and the persister
//! flushes. What one stage publishes while draining is in JetStream, for the next process to
//! take, so the order among them does not matter and a stop takes the longest drain, not their
//! sum.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::task::JoinHandle;

use crate::stage::{Handler, StageMsg, StageSpec, StageSupervisor};

/// A role the root can start: a stage, or the edge.
pub trait Role: Send + 'static {
    fn name(&self) -> &'static str;
    /// Spawns the role's supervisor linked to `root`.
    fn start(
        self: Box<Self>,
        root: ActorCell,
    ) -> BoxFuture<'static, Result<RoleHandle, ActorProcessingErr>>;
}

/// A started role: its supervisor's cell and how to drain it.
pub struct RoleHandle {
    pub name: &'static str,
    pub cell: ActorCell,
    /// Requests from outside enter the process here (an HTTP server): drained before the rest.
    pub entry: bool,
    pub drain: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}

impl<H: Handler> Role for StageSpec<H> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn start(
        self: Box<Self>,
        root: ActorCell,
    ) -> BoxFuture<'static, Result<RoleHandle, ActorProcessingErr>> {
        Box::pin(async move {
            let name = self.name;
            let timeout = self.supervision.drain_timeout;
            let (stage, _): (ActorRef<StageMsg>, _) =
                Actor::spawn_linked(None, StageSupervisor::<H>::default(), *self, root).await?;
            Ok(RoleHandle {
                name,
                cell: stage.get_cell(),
                entry: false,
                drain: Box::new(move || {
                    Box::pin(async move {
                        let wait = timeout.as_millis() as u64 + 5_000;
                        let _ = ractor::call_t!(stage, StageMsg::Drain, wait);
                    })
                }),
            })
        })
    }
}

struct Root;

struct RootArgs {
    roles: Vec<Box<dyn Role>>,
    failure: Arc<Mutex<Option<RuntimeError>>>,
}

struct RootState {
    handles: Vec<RoleHandle>,
    failure: Arc<Mutex<Option<RuntimeError>>>,
}

enum RootMsg {
    Shutdown(RpcReplyPort<()>),
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut handles = Vec::with_capacity(args.roles.len());
        for role in args.roles {
            handles.push(role.start(myself.get_cell()).await?);
        }
        Ok(RootState {
            handles,
            failure: args.failure,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        message: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RootMsg::Shutdown(reply) => {
                let (entries, stages): (Vec<_>, Vec<_>) =
                    state.handles.drain(..).partition(|handle| handle.entry);
                for group in [entries, stages] {
                    let drains = group.into_iter().map(|handle| {
                        tracing::info!(role = handle.name, "draining");
                        (handle.drain)()
                    });
                    futures::future::join_all(drains).await;
                }
                myself
                    .stop_children_and_wait(None, Some(Duration::from_secs(10)))
                    .await;
                myself.stop(None);
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let role = |cell: &ActorCell| {
            state
                .handles
                .iter()
                .find(|h| h.cell.get_id() == cell.get_id())
                .map_or("a role", |h| h.name)
        };
        let failed = match event {
            SupervisionEvent::ActorFailed(cell, source) => Some(RuntimeError::Failed {
                role: role(&cell),
                source,
            }),
            SupervisionEvent::ActorTerminated(cell, _, reason) if !state.handles.is_empty() => {
                Some(RuntimeError::Stopped {
                    role: role(&cell),
                    reason,
                })
            }
            _ => None,
        };
        if let Some(failed) = failed {
            tracing::error!(error = %failed, "stopping the process");
            if let Ok(mut failure) = state.failure.lock() {
                failure.get_or_insert(failed);
            }
            state.handles.clear();
            myself.stop_children(None);
            myself.stop(None);
        }
        Ok(())
    }
}

/// Why the supervision tree did not start, or stopped the process.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A role failed to start (its supervisor's `pre_start` failed).
    #[error("start-up failed: {source}")]
    Start {
        #[source]
        source: ractor::SpawnErr,
    },
    /// A role's supervisor failed: its restart budget is spent.
    #[error("{role} failed: {source}")]
    Failed {
        role: &'static str,
        #[source]
        source: ActorProcessingErr,
    },
    /// A role's supervisor stopped while the process was not shutting down; `reason` is the one
    /// it stopped with, if any (ractor's stop reasons are text).
    #[error("{role} failed: {}", reason.as_deref().unwrap_or("stopped unexpectedly"))]
    Stopped {
        role: &'static str,
        reason: Option<String>,
    },
}

/// A running supervision tree.
pub struct Runtime {
    root: ActorRef<RootMsg>,
    join: JoinHandle<()>,
    failure: Arc<Mutex<Option<RuntimeError>>>,
    finally: Option<BoxFuture<'static, ()>>,
}

impl Runtime {
    /// Starts the roles in the order given (start downstream roles first).
    pub async fn start(roles: Vec<Box<dyn Role>>) -> Result<Self, RuntimeError> {
        let failure = Arc::new(Mutex::new(None));
        let args = RootArgs {
            roles,
            failure: failure.clone(),
        };
        let (root, join) = Actor::spawn(None, Root, args)
            .await
            .map_err(|source| RuntimeError::Start { source })?;
        Ok(Self {
            root,
            join,
            failure,
            finally: None,
        })
    }

    /// Runs `last` once every role has stopped, before [`Runtime::run_until`] returns: where a
    /// process flushes its NATS connection, so the acks and NAKs of the drain reach the server
    /// before it exits.
    pub fn finally(mut self, last: BoxFuture<'static, ()>) -> Self {
        self.finally = Some(last);
        self
    }

    /// Runs until `signal` resolves (then shuts down gracefully) or a role fails for good.
    /// `Err` carries the failure that stopped the process.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), RuntimeError> {
        let Self {
            root,
            mut join,
            failure,
            finally,
        } = self;
        tokio::select! {
            _ = signal => {
                tracing::info!("shutting down");
                let _ = ractor::call!(root, RootMsg::Shutdown);
                let _ = (&mut join).await;
            }
            _ = &mut join => {}
        }
        if let Some(last) = finally {
            last.await;
        }
        match failure.lock().ok().and_then(|mut f| f.take()) {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}
