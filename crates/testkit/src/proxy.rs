//! A TCP proxy a test can cut and restore: an outage of a server shared with other tests (the
//! machine's Postgres) without stopping it.
//!
//! While cut, every open connection is closed and every new one is closed as soon as it is
//! accepted, as a server that went away would; once restored, connections pass again.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    port: u16,
    /// The outage state: true while cut.
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free local port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (cut, _) = watch::channel(false);
        let outage = cut.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut outage = outage.clone();
                if *outage.borrow_and_update() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = outage.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy { port, cut, task }
    }

    /// A proxy in front of the server of `url` (`postgres://user@host:port/db` and the like),
    /// and the same URL through the proxy.
    pub async fn in_front_of(url: &str) -> (Proxy, String) {
        let mut parsed = url::Url::parse(url).expect("a server URL");
        let host = parsed.host_str().expect("the URL's host").to_owned();
        let port = parsed.port_or_known_default().expect("the URL's port");
        let target = tokio::net::lookup_host((host.as_str(), port))
            .await
            .expect("resolve the server")
            .next()
            .expect("an address of the server");
        let proxy = Proxy::start(target).await;
        parsed.set_host(Some("127.0.0.1")).expect("set the host");
        parsed.set_port(Some(proxy.port)).expect("set the port");
        (proxy, parsed.to_string())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
