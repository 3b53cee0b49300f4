//! An HTTP server as a role: an actor that owns the server, so the root supervises it like any
//! other role and drains it first on shutdown (stop accepting, finish in-flight requests). The
//! edge's API is one; a process without the edge serves its probes with another. The router comes
//! from the caller (`chorus_edge::router`, `chorus_edge::probes::probe_router`).

use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::runtime::{Role, RoleHandle};

pub struct HttpRole {
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    /// How long a drain waits for in-flight requests.
    drain_timeout: Duration,
}

impl HttpRole {
    /// The role `name` serving `router` on `listener`; a drain waits up to `drain_timeout` for
    /// the requests in flight.
    pub fn new(
        name: &'static str,
        listener: TcpListener,
        router: axum::Router,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            name,
            listener,
            router,
            drain_timeout,
        }
    }
}

struct HttpServer;

struct ServerState {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    drain_timeout: Duration,
}

enum ServerMsg {
    Failed(String),
}

impl Actor for HttpServer {
    type Msg = ServerMsg;
    type State = ServerState;
    type Arguments = (HttpRole, CancellationToken);

    async fn pre_start(
        &self,
        myself: ActorRef<ServerMsg>,
        (role, stop): (HttpRole, CancellationToken),
    ) -> Result<ServerState, ActorProcessingErr> {
        let token = stop.clone();
        let app = role.router;
        let task = tokio::spawn(async move {
            // With the peer's address, which the admin API records as the actor.
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            let served = axum::serve(role.listener, app)
                .with_graceful_shutdown(token.clone().cancelled_owned())
                .await;
            if let Err(e) = served
                && !token.is_cancelled()
            {
                let _ = myself.cast(ServerMsg::Failed(e.to_string()));
            }
        });
        Ok(ServerState {
            stop,
            task: Some(task),
            drain_timeout: role.drain_timeout,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<ServerMsg>,
        message: ServerMsg,
        _: &mut ServerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ServerMsg::Failed(reason) => Err(format!("HTTP server failed: {reason}").into()),
        }
    }

    async fn post_stop(
        &self,
        _: ActorRef<ServerMsg>,
        state: &mut ServerState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop.cancel();
        if let Some(task) = state.task.take() {
            let _ = tokio::time::timeout(state.drain_timeout, task).await;
        }
        Ok(())
    }
}

impl Role for HttpRole {
    fn name(&self) -> &'static str {
        self.name
    }

    fn start(
        self: Box<Self>,
        root: ActorCell,
    ) -> BoxFuture<'static, Result<RoleHandle, ActorProcessingErr>> {
        Box::pin(async move {
            let stop = CancellationToken::new();
            let (name, drain_timeout) = (self.name, self.drain_timeout);
            let (server, _) =
                Actor::spawn_linked(None, HttpServer, (*self, stop.clone()), root).await?;
            Ok(RoleHandle {
                name,
                cell: server.get_cell(),
                entry: true,
                drain: Box::new(move || {
                    Box::pin(async move {
                        stop.cancel();
                        let _ = server.stop_and_wait(None, Some(drain_timeout)).await;
                    })
                }),
            })
        })
    }
}
