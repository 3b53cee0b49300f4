//! `chorus healthcheck`: the container image's HEALTHCHECK, which has no curl. It asks this
//! process's own probes (`/health`, or `/ready` with `--ready`) on the edge's port
//! (`edge.listen`) or the probe port (`probes.listen`) — a process serves one of them, so the
//! first that answers decides — and exits 0 for a 200, 1 for anything else, printing the answer
//! (for `/ready`, which check failed).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chorus_core::config::Config;

#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// Ask `/ready` (NATS, streams, database) instead of `/health` (alive).
    #[arg(long)]
    ready: bool,
    /// Ask this URL instead of the configured ports.
    #[arg(long)]
    url: Option<String>,
}

pub async fn run(config_file: Option<&Path>, args: HealthcheckArgs) -> anyhow::Result<()> {
    let path = if args.ready { "/ready" } else { "/health" };
    let urls = match args.url {
        Some(url) => vec![url],
        None => {
            let config = Config::load(config_file)?;
            [config.edge.listen, config.probes.listen]
                .into_iter()
                .map(|listen| format!("http://{}{path}", local(listen)))
                .collect()
        }
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let mut problems = Vec::new();
    for url in &urls {
        match client.get(url).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                anyhow::bail!("{url} answered {status}: {}", body.trim());
            }
            Err(e) => problems.push(format!("{url}: {e}")),
        }
    }
    anyhow::bail!("nothing answered: {}", problems.join("; "))
}

/// Where to reach a listen address from this host: an unspecified address (`0.0.0.0`) is the
/// loopback.
fn local(listen: SocketAddr) -> SocketAddr {
    match listen.ip().is_unspecified() {
        true => SocketAddr::from(([127, 0, 0, 1], listen.port())),
        false => listen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_asked_on_the_loopback() {
        let any: SocketAddr = "0.0.0.0:9464"
            .parse()
            .unwrap_or(SocketAddr::from(([0; 4], 0)));
        assert_eq!(local(any).to_string(), "127.0.0.1:9464");
        let bound: SocketAddr = "10.0.0.7:8080".parse().unwrap_or(any);
        assert_eq!(local(bound), bound);
    }
}
