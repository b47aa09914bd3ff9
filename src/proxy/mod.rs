//! `hotpair proxy --listen ADDR`: a primary-following proxy for clients without Sentinel
//! support (redis-cli, redis-benchmark, legacy applications).
//!
//! ## Job
//! Accepts Redis clients on ADDR and forwards each one's requests to the current primary's data
//! port, its replies back, byte for byte. It learns where the primary is, and when a switchover
//! drains it, from the nodes' Sentinel ports ([`follow`]: a subscription to `+hotpair-view` on
//! each node — pushed, not polled per request). During a planned switchover it holds requests
//! instead of failing them, and sends them to the new primary once promoted, as PgBouncer's
//! PAUSE/RESUME does; which in-flight requests can still get an error is in [`session`] and
//! docs/clients.md.
//!
//! ## Invariants
//! - A client sees replies in the order of its requests, always.
//! - A request is sent again only when it was certainly not executed (answered `-TRYAGAIN`,
//!   held and never sent) or changes nothing (a read). A write whose outcome is unknown gets an
//!   error that says so, never a silent second execution.
//! - The proxy decides nothing about roles: it follows the nodes' views.
//!
//! ## Bounds
//! `--max-connections` clients (one more is answered `-ERR max number of clients reached`),
//! `--hold-timeout` per held request, and per client [`session::MAX_QUEUED_BYTES`].
//!
//! ## Caveats
//! - One upstream connection per client: a client's requests keep their order on it.
//! - Passwords pass through: the proxy forwards a client's `AUTH` (or `HELLO … AUTH`) to the
//!   primary and replays it on each new upstream, so the data port checks it, as without the
//!   proxy. The proxy itself takes no `AUTH` of its own: run it where only the application
//!   reaches it (its host's loopback).
//! - With `[clients] tls = true` the proxy speaks TLS to the data ports (trusting only the pair's
//!   CA, presenting the applications' certificate (never the admin's) if the nodes ask for one); its own clients connect to
//!   it in plain TCP, so it belongs on the application's host.

pub mod follow;
pub mod scan;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::PairConfig;
use crate::Error;

pub use follow::Target;

/// Defaults of `hotpair proxy`'s options.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// How long a request may be held (no primary, or a drain) before it is answered `-TRYAGAIN`.
    pub hold_timeout: Duration,
    pub max_connections: usize,
    /// Worker threads (`--threads`, default 1).
    pub threads: usize,
    /// The certificate to present to data ports that ask for one (`--client-cert`/`--client-key`);
    /// `None`: the applications' certificate next to the pair's CA, if there is one.
    pub client_identity: Option<crate::tls::ClientIdentityFiles>,
}

/// How the proxy reaches data ports that take TLS only (`[clients] tls = true`).
pub struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    pair: PairConfig,
}

impl UpstreamTls {
    /// The name `node`'s data-port certificate carries.
    fn server_name(&self, node: &str) -> rustls::pki_types::ServerName<'static> {
        crate::tls::data_server_name(&self.pair, node)
    }
}

/// The client certificate the proxy presents to TLS data ports: the one it was given, else the
/// applications' one beside the pair's CA. Refuses to start, saying what to pass, when the
/// nodes require a client certificate and there is none — rather than fail every connection.
fn upstream_identity(
    pair: &PairConfig,
    given: Option<crate::tls::ClientIdentityFiles>,
) -> Result<Option<crate::tls::ClientIdentityFiles>, Error> {
    let identity = given.or_else(|| crate::tls::app_client_files(pair));
    if identity.is_none() && pair.clients.tls_auth_clients == crate::config::ClientCertificates::Required {
        return Err(Error::Usage(format!(
            "the data ports require a client certificate ([clients] tls_auth_clients = \"yes\") and {} holds no applications' certificate (app.client.pem/.key): pass --client-cert and --client-key (a certificate from the pair's CA, as `hotpair init --client-tls` writes)",
            pair.tls.ca.parent().map_or_else(|| pair.tls.ca.display().to_string(), |d| d.display().to_string())
        )));
    }
    Ok(identity)
}

/// Runs the proxy in the foreground until SIGINT or SIGTERM.
pub fn main(pair: PairConfig, options: Options) -> Result<(), Error> {
    // One thread by default: a client's bytes and its upstream's are handled in one task, and
    // with one thread no request is handed between threads (docs/benchmarks.md, "hotpair proxy").
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads.max(1))
        .enable_all()
        .build()
        .map_err(|source| Error::Io { context: "starting the async runtime".into(), source })?;
    let tls = match pair.clients.tls {
        true => {
            let identity = upstream_identity(&pair, options.client_identity.clone())?;
            Some(Arc::new(UpstreamTls {
                connector: tokio_rustls::TlsConnector::from(crate::tls::data_client_config(&pair, identity.as_ref())?),
                pair: pair.clone(),
            }))
        }
        false => None,
    };
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen).await.map_err(|source| Error::Io {
            context: format!("binding the proxy's address {}", options.listen),
            source,
        })?;
        let nodes = pair.nodes.iter().map(|n| (n.name.clone(), n.sentinel)).collect();
        let target = follow::start(pair.name.clone(), nodes);
        eprintln!(
            "hotpair proxy on {} for pair {} (master name {:?}), following {}",
            options.listen,
            pair.path.display(),
            pair.name,
            pair.nodes
                .iter()
                .map(|n| format!("{} (sentinel {})", n.name, n.sentinel))
                .collect::<Vec<_>>()
                .join(" and ")
        );
        tokio::select! {
            () = serve(listener, target, options, tls) => {}
            () = wait_for_signal() => tracing::info!("proxy: stopping"),
        }
        Ok(())
    })
}

/// Accepts clients for ever.
pub async fn serve(
    listener: tokio::net::TcpListener,
    target: tokio::sync::watch::Receiver<Target>,
    options: Options,
    tls: Option<Arc<UpstreamTls>>,
) {
    let permits = Arc::new(Semaphore::new(options.max_connections.min(Semaphore::MAX_PERMITS)));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => {
                    let session = session::Session::new(stream, target.clone(), options.hold_timeout, tls.clone());
                    tokio::spawn(async move {
                        if let Err(error) = session.run().await {
                            tracing::debug!(%peer, %error, "proxy: client connection ended");
                        }
                        drop(permit);
                    });
                }
                Err(_) => {
                    tracing::warn!(%peer, limit = options.max_connections, "proxy: max connections reached; refusing a client");
                    let _ = stream.try_write(b"-ERR max number of clients reached\r\n");
                }
            },
            Err(error) => {
                tracing::warn!(%error, "proxy: accept failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
