//! Mutual TLS for the control port: who may talk to a node, and who they are.
//!
//! ## Job
//! Builds the rustls configurations every control-port connection uses, from the files the pair
//! file names, and tells a server *which* identity the client certificate belongs to:
//! - [`server_config`]: a node's listener. Presents the node's certificate and **requires** a
//!   client certificate chaining to the pair's CA; a client without one, or with one from any
//!   other CA, fails the handshake.
//! - [`node_client_config`] / [`admin_client_config`]: a node dialling its peer, or the admin CLI
//!   dialling a node. Presents the node's (or the admin's) certificate and trusts only the
//!   pair's CA — never the system roots. Connect with [`server_name`]`(pair, target)` so the
//!   client also checks it reached the node it meant to reach.
//! - [`identify_peer`]: after the handshake, maps the client's certificate to [`Peer::Node`] or
//!   [`Peer::Admin`].
//! - [`data_server_config`] / [`data_client_config`]: the data port with `[clients] tls = true`
//!   (server-authenticated TLS for Redis clients, client certificates as `tls_auth_clients`
//!   says). Its certificates carry names no control-port identity has
//!   ([`data_identity`], [`app_client_identity`]) and only the EKU their side needs.
//!
//! ## Identities
//! Each cluster has its own private CA (made by `hotpair init`). Every certificate carries its
//! identity as one DNS subject-alternative name: `<node>.<cluster-uuid>.hotpair` for a node,
//! `admin.<cluster-uuid>.hotpair` for the admin ([`node_identity`], [`admin_identity`]). Both
//! kinds are valid for server and client authentication. The cluster id is inside the name, so a
//! certificate of another cluster is refused twice over: its CA is not trusted, and its name is
//! not one this pair expects.
//!
//! ## Invariants (DESIGN.md invariant 7: nobody unauthenticated gets in)
//! - No configuration built here accepts a peer without a certificate chaining to the pair's CA.
//! - TLS 1.3 only, with the ring provider; both ends are hotpair, so there is nothing older to
//!   talk to. ALPN `hotpair/1` is offered by both sides, so a client of another protocol (or a
//!   future incompatible hotpair) is refused during the handshake.
//! - [`identify_peer`] re-verifies the chain against the CA itself (it does not trust its caller
//!   to have done so), then requires the certificate to be valid for **exactly one** expected
//!   name; a wildcard or multi-name certificate that could pass as two identities is refused.
//!
//! ## Caveats
//! - Authorisation is the caller's job: `identify_peer` says *who* connected; a node must still
//!   check that a `Peer::Node` is its peer (not itself) and that admin-only requests come from
//!   `Peer::Admin`.
//! - A second installation holding a *copy* of a node's key is the same identity to TLS; it is
//!   told apart by the incarnation id in node metadata (see `meta`), not here.
//! - There is no revocation and no rotation yet: certificates minted by `init` are valid for ten
//!   years; re-running `init` in a new directory makes a new cluster.
//! - Each call reads the PEM files again (they are small and connections are few); a changed
//!   file takes effect for the next configuration built.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::verify_server_name;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use uuid::Uuid;

use crate::config::{ClientCertificates, ConfigError, PairConfig};

/// The application protocol both ends announce.
pub const ALPN: &[u8] = b"hotpair/1";
/// The DNS suffix of every hotpair identity.
pub const IDENTITY_SUFFIX: &str = "hotpair";

/// Who is on the other end of a verified control connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A node of this cluster, by name (it may be the peer, or — wrongly — this node's own name).
    Node(String),
    /// The admin CLI.
    Admin,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Node(name) => write!(f, "node {name}"),
            Peer::Admin => f.write_str("admin"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read {what} {}: {source}; check the path in the pair file, or run `hotpair init` to create the files", path.display())]
    Read { what: String, path: PathBuf, source: std::io::Error },
    #[error("{what} {} is not usable: {reason}", path.display())]
    NotPem { what: String, path: PathBuf, reason: String },
    #[error(
        "private key {} does not belong to certificate {}; they must be the pair that `hotpair init` wrote together",
        key.display(), cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot use certificate {} with key {}: {reason}", cert.display(), key.display())]
    BadIdentity { cert: PathBuf, key: PathBuf, reason: String },
    #[error("CA certificate {} cannot be used as a trust anchor: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("the client presented no certificate; control connections need a certificate from the pair's CA")]
    NoClientCertificate,
    #[error("client certificate is not trusted by the pair's CA {}: {reason}", ca.display())]
    Untrusted { ca: PathBuf, reason: String },
    #[error("client certificate is not a certificate hotpair can read: {reason}")]
    BadCertificate { reason: String },
    #[error("client certificate chains to the pair's CA but is valid for none of {}", expected.join(", "))]
    NotOurIdentity { expected: Vec<String> },
    #[error("client certificate is valid for several identities at once ({}); refusing it", names.join(", "))]
    Ambiguous { names: Vec<String> },
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(String),
}

/// The identity name of node `node` in cluster `cluster`: `<node>.<cluster>.hotpair`.
pub fn node_identity(cluster: Uuid, node: &str) -> String {
    format!("{node}.{}.{IDENTITY_SUFFIX}", cluster.hyphenated())
}

/// The identity name of the admin of cluster `cluster`: `admin.<cluster>.hotpair`.
pub fn admin_identity(cluster: Uuid) -> String {
    node_identity(cluster, "admin")
}

/// The name a client must ask for when connecting to `node`: `<node>.<cluster>.hotpair`.
///
/// `node` should be a name from the pair file (those are checked at load to form a DNS label).
/// Any other string that cannot form a DNS name gives the address `0.0.0.0`, which no hotpair
/// certificate is valid for, so the handshake fails with a name mismatch instead of this
/// function panicking.
pub fn server_name(pair: &PairConfig, node: &str) -> ServerName<'static> {
    ServerName::try_from(node_identity(pair.cluster, node))
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::IpAddr::from([0u8, 0, 0, 0]).into()))
}

/// A node's listener: presents `node`'s certificate, requires a client certificate from the
/// pair's CA. Identify the client afterwards with [`identify_peer`].
pub fn server_config(pair: &PairConfig, node: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let node = pair.node(node)?;
    let provider = provider();
    let verifier = client_verifier(pair, &provider)?;
    let (certs, key) = load_identity(&node.cert, &node.key, &format!("node {}", node.name))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| identity_error(&node.cert, &node.key, e))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A node dialling its peer: presents `node`'s certificate, trusts only the pair's CA.
pub fn node_client_config(pair: &PairConfig, node: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let node = pair.node(node)?;
    client_config(pair, &node.cert, &node.key, &format!("node {}", node.name))
}

/// The identity name in a node's data-port certificate: `<node>.data.<cluster>.hotpair`. It is
/// never one [`identify_peer`] accepts (node names hold no dot), so a data-port key cannot pass
/// for the node on the control port.
pub fn data_identity(cluster: Uuid, node: &str) -> String {
    format!("{node}.data.{}.{IDENTITY_SUFFIX}", cluster.hyphenated())
}

/// The identity name of the applications' client certificate that `init --client-tls` writes:
/// `app.client.<cluster>.hotpair` (not a control-port identity either).
pub fn app_client_identity(cluster: Uuid) -> String {
    format!("app.client.{}.{IDENTITY_SUFFIX}", cluster.hyphenated())
}

/// A node's data port with `[clients] tls = true`: presents the node's `data_cert`; asks TLS
/// clients for a certificate from the pair's CA as `tls_auth_clients` says. TLS 1.2 and 1.3, no
/// ALPN: Redis clients speak plain RESP inside.
pub fn data_server_config(pair: &PairConfig, node: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let config = pair.node(node)?;
    let missing = |key: &str| {
        TlsError::Config(ConfigError::Invalid {
            path: pair.path.clone(),
            key: format!("nodes.{node}.{key}"),
            reason: "is missing; [clients] tls = true needs it".into(),
        })
    };
    let cert = config.data_cert.as_ref().ok_or_else(|| missing("data_cert"))?;
    let key = config.data_key.as_ref().ok_or_else(|| missing("data_key"))?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let verifier = match pair.clients.tls_auth_clients {
        ClientCertificates::No => None,
        ClientCertificates::Optional => {
            Some(WebPkiClientVerifier::builder_with_provider(ca_roots(pair)?, provider).allow_unauthenticated())
        }
        ClientCertificates::Required => Some(WebPkiClientVerifier::builder_with_provider(ca_roots(pair)?, provider)),
    };
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(
            verifier.build().map_err(|e| TlsError::BadCa { path: pair.tls.ca.clone(), reason: e.to_string() })?,
        ),
    };
    let (certs, private_key) = load_identity(cert, key, &format!("node {node}'s data port"))?;
    let config = builder.with_single_cert(certs, private_key).map_err(|e| identity_error(cert, key, e))?;
    Ok(Arc::new(config))
}

/// The repository's own data-port clients (drill, benches): trust only the pair's CA, and
/// present the admin certificate when a node asks for one. Connect with [`data_server_name`].
pub fn data_client_config(pair: &PairConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = ca_roots(pair)?;
    let (certs, private_key) = load_identity(&pair.tls.admin_cert, &pair.tls.admin_key, "admin")?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, private_key)
        .map_err(|e| identity_error(&pair.tls.admin_cert, &pair.tls.admin_key, e))?;
    Ok(Arc::new(config))
}

/// The name to ask for when connecting to `node`'s data port over TLS.
pub fn data_server_name(pair: &PairConfig, node: &str) -> ServerName<'static> {
    ServerName::try_from(data_identity(pair.cluster, node))
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::IpAddr::from([0u8, 0, 0, 0]).into()))
}

/// The admin CLI dialling a node: presents the admin certificate, trusts only the pair's CA.
pub fn admin_client_config(pair: &PairConfig) -> Result<Arc<ClientConfig>, TlsError> {
    client_config(pair, &pair.tls.admin_cert, &pair.tls.admin_key, "admin")
}

/// Which expected identity — a node of this cluster, or its admin — the client certificate
/// chain `certs` (end entity first, as `ServerConnection::peer_certificates` gives it) is valid
/// for. The chain is verified against the pair's CA again here; anything else is an error that
/// says why.
pub fn identify_peer(pair: &PairConfig, certs: &[CertificateDer<'_>]) -> Result<Peer, TlsError> {
    let Some((end_entity, intermediates)) = certs.split_first() else {
        return Err(TlsError::NoClientCertificate);
    };
    let provider = provider();
    let verifier = client_verifier(pair, &provider)?;
    verifier
        .verify_client_cert(end_entity, intermediates, UnixTime::now())
        .map_err(|e| TlsError::Untrusted { ca: pair.tls.ca.clone(), reason: e.to_string() })?;
    let parsed =
        ParsedCertificate::try_from(end_entity).map_err(|e| TlsError::BadCertificate { reason: e.to_string() })?;

    let mut candidates: Vec<(Peer, String)> =
        pair.nodes.iter().map(|n| (Peer::Node(n.name.clone()), node_identity(pair.cluster, &n.name))).collect();
    candidates.push((Peer::Admin, admin_identity(pair.cluster)));
    let expected: Vec<String> = candidates.iter().map(|(_, name)| name.clone()).collect();
    let mut matches: Vec<(Peer, String)> = candidates
        .into_iter()
        .filter(|(_, name)| {
            ServerName::try_from(name.as_str()).is_ok_and(|server| verify_server_name(&parsed, &server).is_ok())
        })
        .collect();
    match matches.len() {
        0 => Err(TlsError::NotOurIdentity { expected }),
        1 => Ok(matches.remove(0).0),
        _ => Err(TlsError::Ambiguous { names: matches.into_iter().map(|(_, name)| name).collect() }),
    }
}

/// Reads every certificate of a PEM file, refusing a file that holds none.
pub fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, what)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_pem(path, what, format!("its PEM is damaged ({e})")))?;
    if certs.is_empty() {
        return Err(not_pem(path, what, "it holds no PEM `CERTIFICATE` block".into()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, what)?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| not_pem(path, what, format!("its PEM is damaged ({e})")))?
        .ok_or_else(|| not_pem(path, what, "it holds no PEM `PRIVATE KEY` block".into()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what: what.to_string(), path: path.to_path_buf(), source })
}

fn not_pem(path: &Path, what: &str, reason: String) -> TlsError {
    TlsError::NotPem { what: what.to_string(), path: path.to_path_buf(), reason }
}

fn ca_roots(pair: &PairConfig) -> Result<Arc<RootCertStore>, TlsError> {
    let path = &pair.tls.ca;
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "CA certificate")? {
        roots.add(cert).map_err(|e| TlsError::BadCa { path: path.clone(), reason: e.to_string() })?;
    }
    Ok(Arc::new(roots))
}

fn client_verifier(pair: &PairConfig, provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(ca_roots(pair)?, provider.clone())
        .build()
        .map_err(|e| TlsError::BadCa { path: pair.tls.ca.clone(), reason: e.to_string() })
}

fn load_identity(
    cert: &Path,
    key: &Path,
    who: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    Ok((load_certs(cert, &format!("certificate of {who}"))?, load_key(key, &format!("private key of {who}"))?))
}

fn identity_error(cert: &Path, key: &Path, err: rustls::Error) -> TlsError {
    match err {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch { cert: cert.to_path_buf(), key: key.to_path_buf() }
        }
        other => TlsError::BadIdentity { cert: cert.to_path_buf(), key: key.to_path_buf(), reason: other.to_string() },
    }
}

fn client_config(pair: &PairConfig, cert: &Path, key: &Path, who: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = ca_roots(pair)?;
    let (certs, private_key) = load_identity(cert, key, who)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, private_key)
        .map_err(|e| identity_error(cert, key, e))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}
