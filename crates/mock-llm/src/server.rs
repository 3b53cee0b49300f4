//! The server: [`MockLlm`], a mock on a free port for a test, and [`serve`], a mock on a given
//! listener for `chorus mock-llm`; both serve the same router, whose `/_mock` endpoints script
//! and read the mock from another process.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::behaviour::Behaviour;
use crate::call::call;
use crate::record::{ModelStats, Models, RecordedRequest};
use crate::wire::Api;

/// A mock provider server on a free port of 127.0.0.1, stopped on drop.
pub struct MockLlm {
    pub(crate) addr: SocketAddr,
    models: Arc<Models>,
    server: JoinHandle<std::io::Result<()>>,
}

impl MockLlm {
    /// Starts a mock on a free port; fails only if no port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let models = Arc::new(Models::default());
        let server = tokio::spawn(axum::serve(listener, router(models.clone())).into_future());
        Ok(Self {
            addr,
            models,
            server,
        })
    }

    /// `http://127.0.0.1:<port>`; OpenAI's base URL is this plus `/v1`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces `model`'s behaviour (its queue included); its stats and requests stay.
    pub fn script(&self, model: &str, behaviour: Behaviour) {
        self.models.script(model, behaviour);
    }

    pub fn stats(&self, model: &str) -> ModelStats {
        self.models.with_model(model, |m| m.stats.clone())
    }

    /// The requests received for `model`, oldest first.
    pub fn requests(&self, model: &str) -> Vec<RecordedRequest> {
        self.models
            .with_model(model, |m| m.requests.iter().cloned().collect())
    }

    /// When each request for `model` arrived, in the order recorded; every one, however many.
    pub fn arrivals(&self, model: &str) -> Vec<SystemTime> {
        self.models.with_model(model, |m| m.arrivals.clone())
    }

    /// Forgets every behaviour, stat and request.
    pub fn reset(&self) {
        self.models.reset();
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves a fresh mock on `listener` until `shutdown` completes (for `chorus mock-llm`). Calls in
/// flight are dropped rather than waited for: a hanging call would otherwise never let it stop.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let app = router(Arc::new(Models::default()));
    tokio::select! {
        served = axum::serve(listener, app).into_future() => served,
        () = shutdown => Ok(()),
    }
}

fn router(models: Arc<Models>) -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(|s, u, h, b| call(s, Api::OpenAi, None, u, h, b)),
        )
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(|s, Path(d): Path<String>, u, h, b| call(s, Api::Azure, Some(d), u, h, b)),
        )
        .route(
            "/v1/messages",
            post(|s, u, h, b| call(s, Api::Anthropic, None, u, h, b)),
        )
        .route(
            "/api/chat",
            post(|s, u, h, b| call(s, Api::Ollama, None, u, h, b)),
        )
        .route("/_mock/models/{*model}", put(script))
        .route("/_mock/stats", get(stats))
        .route("/_mock/reset", post(reset))
        .with_state(models)
}

/// `PUT /_mock/models/{model}`: a JSON [`Behaviour`], whatever the content type says, so that
/// `curl -X PUT -d '{…}'` just works.
async fn script(
    State(models): State<Arc<Models>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<Behaviour>(&body) {
        Ok(behaviour) => {
            models.script(&model, behaviour);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("bad behaviour: {e}\n")).into_response(),
    }
}

/// `GET /_mock/stats`: every model that received a request → its [`ModelStats`].
async fn stats(State(models): State<Arc<Models>>) -> Json<BTreeMap<String, ModelStats>> {
    Json(models.stats())
}

/// `POST /_mock/reset`: forgets every behaviour, stat and request.
async fn reset(State(models): State<Arc<Models>>) -> StatusCode {
    models.reset();
    StatusCode::NO_CONTENT
}
