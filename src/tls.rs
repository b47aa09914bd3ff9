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
//! ## Rotation and revocation: the files are the allow-list
//! A certificate is accepted only if it chains to the pair's CA, carries one expected identity,
//! **and is the very certificate in the file the pair file names for that identity** (`cert` of
//! each node, `tls.admin_cert`): the end entity presented is compared byte for byte with the
//! first certificate of that file. `hotpair certs rotate` replaces a file; from then on the old
//! certificate is refused — at the TLS handshake (with a `certificate_revoked` alert), and on an
//! admin connection already open, at its next request. Nothing to distribute but the new files,
//! and no list of revoked serials to keep: a stolen admin key is dead once `admin.pem` changes.
//! The same holds the other way: a client accepts a node only with the certificate in that
//! node's file.
//!
//! Sessions are never resumed (no tickets, no session cache): a resumed TLS 1.3 session skips
//! the certificate check and carries the certificate of the session it resumes, which is how a
//! rotated-away certificate would live on. Every configuration built here reads its files again
//! when they change on disk (size, mtime or inode; the rotation replaces them by rename), so
//! running nodes take new certificates without a restart: their own identity ([`FileIdentity`], kept at the last good pair while a
//! certificate and its key do not match yet, mid-rotation), the CA bundle, and the pins.
//!
//! ## Caveats
//! - Authorisation is the caller's job: `identify_peer` says *who* connected; a node must still
//!   check that a `Peer::Node` is its peer (not itself) and that admin-only requests come from
//!   `Peer::Admin`.
//! - A second installation holding a *copy* of a node's key is the same identity to TLS; it is
//!   told apart by the incarnation id in node metadata (see `meta`), not here.
//! - Each host needs every certificate file the pair file names (the peer's and the admin's are
//!   public; only its own key is secret): a missing one refuses that identity (fail closed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::verify_server_name;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
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
    #[error(
        "the certificate presented for {who} is not the one in {} (the file the pair file names): it was replaced by `hotpair certs rotate` and is no longer accepted",
        path.display()
    )]
    NotCurrent { who: String, path: PathBuf },
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(String),
    #[error("certificate of {who} {} was not issued by the pair's CA {}: {reason}", cert.display(), ca.display())]
    NotIssuedByCa { who: String, cert: PathBuf, ca: PathBuf, reason: String },
    #[error("certificate {} is not {who}'s: {reason}", cert.display())]
    WrongIdentity { who: String, cert: PathBuf, reason: String },
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
/// pair's CA that is one of the pair's current certificates (see "Rotation and revocation").
/// Identify the client afterwards with [`identify_peer`].
pub fn server_config(pair: &PairConfig, node: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let node = pair.node(node)?;
    let provider = provider();
    let verifier = Arc::new(PinnedClientVerifier::new(pair, provider.clone())?);
    let identity =
        Arc::new(FileIdentity::new(&node.cert, &node.key, &format!("node {}", node.name), provider.clone())?);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: a resumed session skips the client certificate check and carries the
    // certificate of the session it resumes, which may have been rotated away since.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A node dialling its peer: presents `node`'s certificate, trusts only the pair's CA and, of
/// it, only the peer's current certificate.
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

/// A client certificate and key to present to data ports that ask for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The applications' certificate `hotpair init --client-tls` writes next to the pair's CA
/// (`tls/app.client.pem|key`), if both files are there.
pub fn app_client_files(pair: &PairConfig) -> Option<ClientIdentityFiles> {
    let dir = pair.tls.ca.parent()?;
    let files = ClientIdentityFiles {
        cert: dir.join(crate::admin::init::APP_CLIENT_CERT),
        key: dir.join(crate::admin::init::APP_CLIENT_KEY),
    };
    (files.cert.is_file() && files.key.is_file()).then_some(files)
}

/// A data-port client of the pair (the proxy, the drill's workload, benches): trusts only the
/// pair's CA and presents `identity` when a node asks for a client certificate — an
/// application's certificate, never the admin's (whoever holds the admin key can fail the pair
/// over, and a proxy's host needs no such power). Connect with [`data_server_name`].
pub fn data_client_config(
    pair: &PairConfig,
    identity: Option<&ClientIdentityFiles>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = ca_roots(pair)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let (certs, private_key) = load_identity(&files.cert, &files.key, "the data-port client")?;
            builder.with_client_auth_cert(certs, private_key).map_err(|e| identity_error(&files.cert, &files.key, e))?
        }
    };
    Ok(Arc::new(config))
}

/// The name to ask for when connecting to `node`'s data port over TLS.
pub fn data_server_name(pair: &PairConfig, node: &str) -> ServerName<'static> {
    ServerName::try_from(data_identity(pair.cluster, node))
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::IpAddr::from([0u8, 0, 0, 0]).into()))
}

/// The admin CLI dialling a node: presents the admin certificate, trusts only the pair's CA.
pub fn admin_client_config(pair: &PairConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let config = client_config(pair, &pair.tls.admin_cert, &pair.tls.admin_key, "admin")?;
    // Checked here, not left to the node's refusal, so the admin hears which file is wrong.
    check_identity(pair, &pair.tls.admin_cert, &Peer::Admin)?;
    Ok(config)
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
    let peer = match matches.len() {
        0 => return Err(TlsError::NotOurIdentity { expected }),
        1 => matches.remove(0).0,
        _ => return Err(TlsError::Ambiguous { names: matches.into_iter().map(|(_, name)| name).collect() }),
    };
    let (who, file) = match &peer {
        Peer::Node(name) => (format!("node {name}"), pair.node(name)?.cert.clone()),
        Peer::Admin => ("the admin".to_string(), pair.tls.admin_cert.clone()),
    };
    if current_leaf(&file, &who)?.as_ref() != end_entity.as_ref() {
        return Err(TlsError::NotCurrent { who, path: file });
    }
    Ok(peer)
}

/// Whether `cert` chains to the pair's CA as the CA file is now (a certificate `certs rotate`
/// just made is checked with it before it replaces anything).
pub fn check_chain(pair: &PairConfig, cert: &CertificateDer<'_>) -> Result<(), TlsError> {
    client_verifier(pair, &provider())?
        .verify_client_cert(cert, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| TlsError::Untrusted { ca: pair.tls.ca.clone(), reason: e.to_string() })
}

/// The end-entity certificate in `path` as it is on disk now (`None` if unreadable): a session
/// authenticated with an older one ends when this changes (the peer reconnects with its new one).
pub fn current_certificate(path: &Path) -> Option<Vec<u8>> {
    current_leaf(path, "a node").ok().map(|leaf| leaf.as_ref().to_vec())
}

/// The end-entity certificate (the first) of a certificate file, as it is on disk now.
fn current_leaf(path: &Path, who: &str) -> Result<CertificateDer<'static>, TlsError> {
    let mut certs = load_certs(path, &format!("certificate of {who}"))?;
    Ok(certs.swap_remove(0))
}

/// Reads every certificate of a PEM file, refusing a file that holds none.
pub fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, what)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_pem(path, what, format!("its PEM is damaged ({e})")))?;
    if certs.is_empty() {
        let reason = if holds_private_key(&bytes) {
            "it holds a private key, not a certificate (are the certificate and key paths swapped?)"
        } else {
            "it holds no PEM `CERTIFICATE` block"
        };
        return Err(not_pem(path, what, reason.into()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, what)?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| not_pem(path, what, format!("its PEM is damaged ({e})")))?
        .ok_or_else(|| {
            let holds_certificate = rustls_pemfile::certs(&mut bytes.as_slice()).any(|c| c.is_ok());
            let reason = if holds_certificate {
                "it holds a certificate, not a private key (are the certificate and key paths swapped?)"
            } else {
                "it holds no PEM `PRIVATE KEY` block"
            };
            not_pem(path, what, reason.into())
        })
}

fn holds_private_key(bytes: &[u8]) -> bool {
    matches!(rustls_pemfile::private_key(&mut &bytes[..]), Ok(Some(_)))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    crate::bounded_read::read(path, crate::bounded_read::CREDENTIAL_LIMIT).map_err(|source| TlsError::Read {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

fn not_pem(path: &Path, what: &str, reason: String) -> TlsError {
    TlsError::NotPem { what: what.to_string(), path: path.to_path_buf(), reason }
}

fn ca_roots(pair: &PairConfig) -> Result<Arc<RootCertStore>, TlsError> {
    roots_from(&pair.tls.ca).map(Arc::new)
}

/// Every certificate of the CA file as a trust anchor (a bundle during a CA rotation).
fn roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "CA certificate")? {
        roots.add(cert).map_err(|e| TlsError::BadCa { path: path.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(roots)
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
    let provider = provider();
    let verifier = Arc::new(PinnedServerVerifier::new(pair, provider.clone())?);
    let identity = Arc::new(FileIdentity::new(cert, key, who, provider.clone())?);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(identity);
    config.alpn_protocols = vec![ALPN.to_vec()];
    // Every connection is a full handshake, checked against the files as they are now.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Checks, before a node serves anything, every file its TLS identity needs: the pair's CA,
/// the node's certificate and its key. Each must be a readable file of bounded size holding
/// what it should; the key must belong to the certificate, and the certificate must be issued
/// by the CA, currently valid and for this node's identity. The first problem is the error,
/// naming the file and what is wrong with it.
pub fn check_node_files(pair: &PairConfig, node: &str) -> Result<(), TlsError> {
    let config = pair.node(node)?;
    server_config(pair, node)?;
    check_identity(pair, &config.cert, &Peer::Node(node.to_string()))
}

/// Whether the certificate in `cert` is issued by the pair's CA, currently valid, and `expected`'s.
fn check_identity(pair: &PairConfig, cert: &Path, expected: &Peer) -> Result<(), TlsError> {
    let who = expected.to_string();
    let certs = load_certs(cert, &format!("certificate of {who}"))?;
    let wrong = |reason: String| TlsError::WrongIdentity { who: who.clone(), cert: cert.to_path_buf(), reason };
    match identify_peer(pair, &certs) {
        Ok(found) if &found == expected => Ok(()),
        Ok(other) => Err(wrong(format!("it is the certificate of {other}"))),
        Err(TlsError::Untrusted { reason, .. }) => {
            Err(TlsError::NotIssuedByCa { who: who.clone(), cert: cert.to_path_buf(), ca: pair.tls.ca.clone(), reason })
        }
        Err(TlsError::NotOurIdentity { expected }) => {
            Err(wrong(format!("it is valid for none of {}", expected.join(", "))))
        }
        Err(other) => Err(other),
    }
}

/// How a file looked on disk when it was last read: a different look means read it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { len: meta.len(), modified: meta.modified().ok(), inode: meta.ino() })
}

/// The files' stamps when a value was loaded from them, and the value.
type Loaded<T> = Option<(Vec<Option<Stamp>>, Arc<T>)>;

/// A value loaded from files, loaded again whenever one of them changes on disk.
#[derive(Debug)]
struct Reloading<T> {
    files: Vec<PathBuf>,
    state: std::sync::Mutex<Loaded<T>>,
}

impl<T> Reloading<T> {
    fn new(files: Vec<PathBuf>) -> Reloading<T> {
        Reloading { files, state: std::sync::Mutex::new(None) }
    }

    /// The value for the files as they are now. If they changed and no longer load, `keep_last`
    /// says whether the last good value stands in (an identity mid-rotation) or the error wins
    /// (a pin: refusing is the safe side).
    fn get(&self, keep_last: bool, load: impl FnOnce() -> Result<T, TlsError>) -> Result<Arc<T>, TlsError> {
        let stamps: Vec<Option<Stamp>> = self.files.iter().map(|f| stamp(f)).collect();
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((seen, value)) = &*state {
            if *seen == stamps {
                return Ok(value.clone());
            }
        }
        match load() {
            Ok(value) => {
                let value = Arc::new(value);
                *state = Some((stamps, value.clone()));
                Ok(value)
            }
            Err(err) => match &*state {
                Some((_, last)) if keep_last => {
                    tracing::warn!(error = %err, "TLS files changed but do not load (yet); keeping the last good ones");
                    Ok(last.clone())
                }
                _ => Err(err),
            },
        }
    }
}

/// A certificate and its key from two files, re-read when they change: what a node presents
/// (as server and as client) and what the admin CLI presents.
#[derive(Debug)]
pub struct FileIdentity {
    cert: PathBuf,
    key: PathBuf,
    who: String,
    provider: Arc<CryptoProvider>,
    loaded: Reloading<rustls::sign::CertifiedKey>,
}

impl FileIdentity {
    /// Loads the identity now, so that a bad file is an error at start, naming it.
    fn new(cert: &Path, key: &Path, who: &str, provider: Arc<CryptoProvider>) -> Result<FileIdentity, TlsError> {
        let identity = FileIdentity {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            who: who.to_string(),
            provider,
            loaded: Reloading::new(vec![cert.to_path_buf(), key.to_path_buf()]),
        };
        identity.current()?;
        Ok(identity)
    }

    fn current(&self) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        self.loaded.get(true, || {
            let (certs, key) = load_identity(&self.cert, &self.key, &self.who)?;
            rustls::sign::CertifiedKey::from_der(certs, key, &self.provider)
                .map_err(|e| identity_error(&self.cert, &self.key, e))
        })
    }

    fn resolve_now(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current().inspect_err(|err| tracing::error!(%err, "no TLS identity to present")).ok()
    }
}

impl rustls::server::ResolvesServerCert for FileIdentity {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.resolve_now()
    }
}

impl rustls::client::ResolvesClientCert for FileIdentity {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.resolve_now()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The pair's CA bundle, re-read when `ca.pem` changes (a CA rotation adds the new CA to it).
#[derive(Debug)]
struct Roots {
    ca: PathBuf,
    loaded: Reloading<RootCertStore>,
}

impl Roots {
    fn new(pair: &PairConfig) -> Result<Roots, TlsError> {
        let roots = Roots { ca: pair.tls.ca.clone(), loaded: Reloading::new(vec![pair.tls.ca.clone()]) };
        roots.current()?;
        Ok(roots)
    }

    fn current(&self) -> Result<Arc<RootCertStore>, TlsError> {
        self.loaded.get(true, || roots_from(&self.ca))
    }
}

/// One identity's certificate file, for comparing what a peer presents with it.
#[derive(Debug)]
struct Pin {
    who: String,
    /// The identity name the certificate carries (`<node>.<cluster>.hotpair`).
    name: String,
    file: PathBuf,
    loaded: Reloading<CertificateDer<'static>>,
}

impl Pin {
    fn new(who: String, name: String, file: &Path) -> Pin {
        Pin { who, name, file: file.to_path_buf(), loaded: Reloading::new(vec![file.to_path_buf()]) }
    }

    /// Whether `presented` is the certificate in the file now (an unreadable file matches nothing).
    fn matches(&self, presented: &[u8]) -> bool {
        match self.loaded.get(false, || current_leaf(&self.file, &self.who)) {
            Ok(leaf) => leaf.as_ref().as_ref() == presented,
            Err(err) => {
                tracing::warn!(%err, "cannot read a certificate the pair file names; that identity is refused");
                false
            }
        }
    }
}

fn pins(pair: &PairConfig) -> Vec<Pin> {
    let mut pins: Vec<Pin> = pair
        .nodes
        .iter()
        .map(|n| Pin::new(format!("node {}", n.name), node_identity(pair.cluster, &n.name), &n.cert))
        .collect();
    pins.push(Pin::new("the admin".into(), admin_identity(pair.cluster), &pair.tls.admin_cert));
    pins
}

/// A certificate that chains to the CA but is not a current one: rotated away, or minted with
/// `ca.key` and never installed.
fn revoked(presented_for: &str) -> rustls::Error {
    tracing::warn!(
        "refused a certificate that is not the current one for {presented_for} (replaced by `hotpair certs rotate`, or never installed)"
    );
    rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
}

/// The listener's check of a client: the CA (re-read on change), then one of the current files.
#[derive(Debug)]
struct PinnedClientVerifier {
    roots: Roots,
    pins: Vec<Pin>,
    provider: Arc<CryptoProvider>,
}

impl PinnedClientVerifier {
    fn new(pair: &PairConfig, provider: Arc<CryptoProvider>) -> Result<PinnedClientVerifier, TlsError> {
        let verifier = PinnedClientVerifier { roots: Roots::new(pair)?, pins: pins(pair), provider };
        verifier.inner().map_err(|e| TlsError::BadCa { path: pair.tls.ca.clone(), reason: e.to_string() })?;
        Ok(verifier)
    }

    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let roots = self.roots.current().map_err(|e| rustls::Error::General(e.to_string()))?;
        WebPkiClientVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))
    }
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // Every hotpair client has exactly one certificate to offer: no hints needed.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self.inner()?.verify_client_cert(end_entity, intermediates, now)?;
        if self.pins.iter().any(|pin| pin.matches(end_entity.as_ref())) {
            return Ok(verified);
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let claims: Vec<&str> = self
            .pins
            .iter()
            .filter(|pin| {
                ServerName::try_from(pin.name.as_str()).is_ok_and(|n| verify_server_name(&parsed, &n).is_ok())
            })
            .map(|pin| pin.who.as_str())
            .collect();
        Err(revoked(&if claims.is_empty() { "no identity of this pair".to_string() } else { claims.join(", ") }))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client's check of a node: the CA (re-read on change), the name it asked for, and that
/// node's current certificate file.
#[derive(Debug)]
struct PinnedServerVerifier {
    roots: Roots,
    pins: Vec<Pin>,
    provider: Arc<CryptoProvider>,
}

impl PinnedServerVerifier {
    fn new(pair: &PairConfig, provider: Arc<CryptoProvider>) -> Result<PinnedServerVerifier, TlsError> {
        let verifier = PinnedServerVerifier { roots: Roots::new(pair)?, pins: pins(pair), provider };
        verifier.inner().map_err(|e| TlsError::BadCa { path: pair.tls.ca.clone(), reason: e.to_string() })?;
        Ok(verifier)
    }

    fn inner(&self) -> Result<Arc<rustls::client::WebPkiServerVerifier>, rustls::Error> {
        let roots = self.roots.current().map_err(|e| rustls::Error::General(e.to_string()))?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))
    }
}

impl rustls::client::danger::ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.inner()?.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let asked = server_name.to_str();
        match self.pins.iter().find(|pin| pin.name == asked.as_ref()) {
            Some(pin) if pin.matches(end_entity.as_ref()) => Ok(verified),
            Some(pin) => Err(revoked(&pin.who)),
            None => Err(revoked(asked.as_ref())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Adds what happened and what to do to a handshake failure that means the other end is not of
/// this pair (rustls names only the check that failed: `UnknownIssuer`, `UnknownCA`).
pub fn explain_foreign(message: String) -> String {
    if message.contains("UnknownIssuer") {
        format!("{message} (its certificate was not issued by this pair's CA: the address reaches another pair's node, or its certificates come from a CA this host does not have yet; check the address in the pair file, and after a CA rotation copy tls/ca.pem to every host: docs/runbook.md procedure 9)")
    } else if message.contains("UnknownCA") || message.contains("BadCertificate") {
        format!("{message} (it does not trust this side's certificate: the address reaches another pair's node, or it runs with another CA; check the address in the pair file and that both hosts have the same tls/ca.pem)")
    } else {
        message
    }
}

/// A connection to a data port: plain TCP, or TLS over it (`[clients] tls = true`). What the
/// repository's own data-port clients hold (the drill's, `hotpair proxy`'s upstreams).
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => std::pin::Pin::new(stream).poll_read(cx, buf),
            ClientStream::Tls(stream) => std::pin::Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => std::pin::Pin::new(stream).poll_write(cx, buf),
            ClientStream::Tls(stream) => std::pin::Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => std::pin::Pin::new(stream).poll_flush(cx),
            ClientStream::Tls(stream) => std::pin::Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => std::pin::Pin::new(stream).poll_shutdown(cx),
            ClientStream::Tls(stream) => std::pin::Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
