//! `chorus mock-llm`: the tests' mock provider server ([`chorus_mock_llm`]) as a command, for
//! demos and load tests. It speaks the OpenAI, Azure OpenAI, Anthropic and Ollama wire formats
//! and is scripted over HTTP (`PUT /_mock/models/{model}`); it holds no state but memory.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;

#[derive(Debug, clap::Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9009")]
    listen: SocketAddr,
}

pub async fn run(args: MockArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    println!("Mock LLM provider on {url}. Point routes at it:");
    println!("  openai:    base_url = \"{url}/v1\"");
    println!(
        "  azure:     base_url = \"{url}/openai/deployments/<model>\", api_version = \"2024-10-21\""
    );
    println!("  anthropic: base_url = \"{url}\"");
    println!("  ollama:    base_url = \"{url}\"");
    println!("\nScript a model (see the Behaviour type for every fault):");
    println!(
        "  curl -X PUT {url}/_mock/models/gpt-4o-mini -d '{{\"latency\": \"200ms\", \"random\": \
         [{{\"probability\": 0.3, \"fault\": {{\"type\": \"status\", \"status\": 503}}}}]}}'"
    );
    println!("  curl {url}/_mock/stats");
    println!("  curl -X POST {url}/_mock/reset");
    println!("\nPress ctrl-c to stop.");
    chorus_mock_llm::serve(listener, chorus_app::shutdown_signal())
        .await
        .context("mock LLM server")
}
