//! A small etcd v3 client: the few calls the witness needs, over etcd's JSON gateway.
//!
//! ## Job
//! Grants, keeps alive and revokes leases; reads a key; writes a key only if it is absent or
//! still at the revision the caller saw (one etcd transaction each, so two nodes racing for the
//! leader key cannot both win); deletes a key only at a given revision.
//!
//! ## Why the JSON gateway
//! etcd serves its v3 API as gRPC and, on the same client port, as JSON over HTTP/1.1
//! (`POST /v3/kv/txn`, documented as the "gRPC gateway" since etcd 3.3). The calls here are one
//! small request and one small reply every few hundred milliseconds; hyper (already used for the
//! metrics endpoint) speaks HTTP/1.1, so the whole client is this file. A gRPC client would add
//! tonic, prost and a protobuf compiler at build time for nothing the witness uses.
//!
//! ## Invariants
//! - Every call is bounded by the client's timeout, across every endpoint it tries.
//! - A call that an endpoint answered (even with an error) is not sent to another. A call that
//!   timed out on one endpoint is sent to the next within the same bound, so a conditional
//!   write may land twice; the second then fails its condition and reports the key as it is,
//!   holding the caller's own value ([`Cas::Lost`] with `current` equal to what was written):
//!   callers compare values, never assume they lost.
//! - The 64-bit integers of etcd's JSON (ids, revisions, TTLs) travel as strings, as proto3's
//!   JSON mapping writes them; a field the gateway leaves out is proto3's zero value, which is
//!   why missing numbers read as 0 here (and only here).
//!
//! ## Caveats
//! - One connection per call: calls are rare (a few per second at most), and a fresh connection
//!   never carries a half-read reply of a call that timed out.
//! - `https` endpoints need `[witness] ca` (and `cert`/`key` for client authentication); the
//!   system's root certificates are never trusted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpStream;

/// Largest reply body read from etcd: the witness reads one small key at a time.
const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// How long a failed call waits for its connection's own error, which names the cause.
const CONNECTION_ERROR_WAIT: Duration = Duration::from_millis(100);

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("witness endpoint `{endpoint}` is not a valid URL: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("witness endpoint `{endpoint}` is https but [witness] names no `ca` to check its certificate")]
    NoCa { endpoint: String },
    #[error("witness TLS setup failed: {0}")]
    Tls(String),
    #[error("no etcd endpoint answered within {timeout:?} ({detail})")]
    Unreachable { timeout: Duration, detail: String },
    #[error("etcd at {endpoint} answered {path} with HTTP {status}: {body}{hint}")]
    Status { endpoint: String, path: &'static str, status: u16, body: String, hint: &'static str },
    #[error("etcd at {endpoint} answered {path} with a reply that does not parse: {reason}")]
    Malformed { endpoint: String, path: &'static str, reason: String },
}

/// TLS material for `https` endpoints.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// One endpoint, parsed.
#[derive(Debug, Clone)]
struct Endpoint {
    url: String,
    https: bool,
    host: String,
    port: u16,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// The TTL etcd granted, in seconds (etcd may grant more than asked, never less than 1).
    pub ttl_seconds: i64,
}

/// A key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub value: Vec<u8>,
    /// Revision at which the key was last written (the compare-and-set token).
    pub mod_revision: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas {
    /// The write happened; the key is now at this revision.
    Written { revision: i64 },
    /// The condition failed; this is what the key holds now (`None`: absent).
    Lost { current: Option<KeyValue> },
}

/// One condition of [`EtcdClient::put_all_if`].
#[derive(Debug, Clone, Copy)]
pub enum Compare<'a> {
    /// The key does not exist.
    Absent(&'a [u8]),
    /// The key was last written at this revision.
    AtRevision(&'a [u8], i64),
}

/// The client: a list of endpoints, tried in turn from the last one that answered.
pub struct EtcdClient {
    endpoints: Vec<Endpoint>,
    /// Index of the endpoint that answered last: the next call starts there.
    preferred: AtomicUsize,
    timeout: Duration,
    tls: Option<Arc<ClientConfig>>,
    /// The files behind `tls`, named in errors.
    tls_files: EtcdTls,
}

impl EtcdClient {
    /// A client for these endpoints (`http://host:port` or `https://host:port`), each call
    /// bounded by `timeout`.
    pub fn new(endpoints: &[String], tls: &EtcdTls, timeout: Duration) -> Result<Self, EtcdError> {
        let endpoints = endpoints.iter().map(|e| parse_endpoint(e)).collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(EtcdError::BadEndpoint { endpoint: String::new(), reason: "no endpoint given".into() });
        }
        let tls_files = tls;
        let tls = match endpoints.iter().find(|e| e.https) {
            Some(endpoint) => Some(client_tls(tls_files, &endpoint.url)?),
            None => None,
        };
        Ok(EtcdClient { endpoints, preferred: AtomicUsize::new(0), timeout, tls, tls_files: tls_files.clone() })
    }

    /// The configured endpoints, for messages and `status`.
    pub fn endpoint_urls(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.url.clone()).collect()
    }

    /// Grants a lease of `ttl` (rounded up to whole seconds, at least 1).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<Lease, EtcdError> {
        let seconds = ttl.as_millis().div_ceil(1000).max(1) as i64;
        let (endpoint, reply) = self.call("/v3/lease/grant", json!({ "TTL": seconds })).await?;
        let reply: GrantReply = parse(&endpoint, "/v3/lease/grant", &reply)?;
        if reply.id.0 == 0 {
            return Err(malformed(&endpoint, "/v3/lease/grant", "no lease id"));
        }
        Ok(Lease { id: reply.id.0, ttl_seconds: reply.ttl.0 })
    }

    /// Renews a lease. `Ok(None)`: the lease no longer exists (it expired or was revoked);
    /// `Ok(Some(ttl))`: renewed, with `ttl` seconds to live from etcd's receipt of the call.
    pub async fn keep_alive(&self, lease: i64) -> Result<Option<i64>, EtcdError> {
        let (endpoint, reply) = self.call("/v3/lease/keepalive", json!({ "ID": lease.to_string() })).await?;
        let reply: KeepAliveReply = parse(&endpoint, "/v3/lease/keepalive", &reply)?;
        Ok((reply.result.ttl.0 > 0).then_some(reply.result.ttl.0))
    }

    /// Revokes a lease (and so deletes every key attached to it). Revoking a lease that is
    /// already gone is not an error.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", json!({ "ID": lease.to_string() })).await {
            Ok(_) => Ok(()),
            Err(EtcdError::Status { body, .. }) if body.contains("requested lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads one key.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let (endpoint, reply) = self.call("/v3/kv/range", json!({ "key": BASE64.encode(key) })).await?;
        let reply: RangeReply = parse(&endpoint, "/v3/kv/range", &reply)?;
        reply.kvs.into_iter().next().map(|kv| kv.decode(&endpoint, "/v3/kv/range")).transpose()
    }

    /// Writes `value` (attached to `lease`, 0 for none) if the key is absent.
    pub async fn put_if_absent(&self, key: &[u8], value: &[u8], lease: i64) -> Result<Cas, EtcdError> {
        let compare =
            json!({ "result": "EQUAL", "target": "CREATE", "key": BASE64.encode(key), "create_revision": "0" });
        self.put_if(key, value, lease, compare).await
    }

    /// Writes `value` (attached to `lease`) if the key is still at `revision`.
    pub async fn put_if_revision(&self, key: &[u8], value: &[u8], lease: i64, revision: i64) -> Result<Cas, EtcdError> {
        let compare = json!({ "result": "EQUAL", "target": "MOD", "key": BASE64.encode(key), "mod_revision": revision.to_string() });
        self.put_if(key, value, lease, compare).await
    }

    /// Deletes the key if it is still at `revision`. `Ok(true)`: deleted.
    pub async fn delete_if_revision(&self, key: &[u8], revision: i64) -> Result<bool, EtcdError> {
        let key = BASE64.encode(key);
        let body = json!({
            "compare": [{ "result": "EQUAL", "target": "MOD", "key": key, "mod_revision": revision.to_string() }],
            "success": [{ "request_delete_range": { "key": key } }],
        });
        let (endpoint, reply) = self.call("/v3/kv/txn", body).await?;
        let reply: TxnReply = parse(&endpoint, "/v3/kv/txn", &reply)?;
        Ok(reply.succeeded)
    }

    /// Writes every `(key, value, lease)` of `puts` in one transaction if every comparison
    /// holds. `Ok(true)`: written. A `false` after a timeout may hide a first attempt that
    /// landed: read the keys back and compare values.
    pub async fn put_all_if(&self, compares: &[Compare<'_>], puts: &[(&[u8], &[u8], i64)]) -> Result<bool, EtcdError> {
        let compare: Vec<serde_json::Value> = compares
            .iter()
            .map(|c| match c {
                Compare::Absent(key) => {
                    json!({ "result": "EQUAL", "target": "CREATE", "key": BASE64.encode(key), "create_revision": "0" })
                }
                Compare::AtRevision(key, revision) => json!({
                    "result": "EQUAL", "target": "MOD", "key": BASE64.encode(key), "mod_revision": revision.to_string()
                }),
            })
            .collect();
        let success: Vec<serde_json::Value> = puts
            .iter()
            .map(|(key, value, lease)| {
                json!({ "request_put": { "key": BASE64.encode(key), "value": BASE64.encode(value), "lease": lease.to_string() } })
            })
            .collect();
        let (endpoint, reply) = self.call("/v3/kv/txn", json!({ "compare": compare, "success": success })).await?;
        let reply: TxnReply = parse(&endpoint, "/v3/kv/txn", &reply)?;
        Ok(reply.succeeded)
    }

    async fn put_if(&self, key: &[u8], value: &[u8], lease: i64, compare: serde_json::Value) -> Result<Cas, EtcdError> {
        let key = BASE64.encode(key);
        let body = json!({
            "compare": [compare],
            "success": [{ "request_put": { "key": key, "value": BASE64.encode(value), "lease": lease.to_string() } }],
            "failure": [{ "request_range": { "key": key } }],
        });
        let (endpoint, reply) = self.call("/v3/kv/txn", body).await?;
        let reply: TxnReply = parse(&endpoint, "/v3/kv/txn", &reply)?;
        if reply.succeeded {
            return Ok(Cas::Written { revision: reply.header.revision.0 });
        }
        let current = reply
            .responses
            .into_iter()
            .find_map(|r| r.response_range)
            .and_then(|range| range.kvs.into_iter().next())
            .map(|kv| kv.decode(&endpoint, "/v3/kv/txn"))
            .transpose()?;
        Ok(Cas::Lost { current })
    }

    /// Sends one call, trying each endpoint in turn (from the preferred one) until one answers
    /// with HTTP 200 or the whole call's time is up. Returns the endpoint that answered.
    async fn call(&self, path: &'static str, body: serde_json::Value) -> Result<(String, Bytes), EtcdError> {
        let body = Bytes::from(body.to_string());
        let deadline = tokio::time::Instant::now() + self.timeout;
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for offset in 0..self.endpoints.len() {
            let index = (first + offset) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            // Each endpoint left gets an equal share of the time left, so one that hangs does
            // not use up the whole call.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let share = left / (self.endpoints.len() - offset) as u32;
            let attempt = tokio::time::timeout(share, self.send(endpoint, path, body.clone())).await;
            match attempt {
                Ok(Ok((StatusCode::OK, reply))) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok((endpoint.url.clone(), reply));
                }
                Ok(Ok((status, reply))) => {
                    let body: String = String::from_utf8_lossy(&reply).chars().take(300).collect();
                    let hint = status_hint(endpoint, status, &body);
                    return Err(EtcdError::Status {
                        endpoint: endpoint.url.clone(),
                        path,
                        status: status.as_u16(),
                        body,
                        hint,
                    });
                }
                Ok(Err(reason)) => failures.push(format!("{}: {reason}", endpoint.url)),
                Err(_) => failures.push(format!("{}: no answer within {share:?}", endpoint.url)),
            }
        }
        Err(EtcdError::Unreachable { timeout: self.timeout, detail: failures.join("; ") })
    }

    /// One HTTP/1.1 POST on a fresh connection.
    async fn send(&self, endpoint: &Endpoint, path: &str, body: Bytes) -> Result<(StatusCode, Bytes), String> {
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(hyper::header::HOST, format!("{}:{}", endpoint.host, endpoint.port))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        match (&self.tls, endpoint.https) {
            (Some(tls), true) => {
                let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| e.to_string())?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.tls_failure(&e))?;
                // With TLS 1.3 the server judges our certificate after the handshake: its
                // refusal arrives as an alert while the request is under way.
                exchange(TokioIo::new(stream), request).await.map_err(|e| self.tls_failure(&*e))
            }
            _ => exchange(TokioIo::new(tcp), request).await.map_err(|e| error_chain(&*e)),
        }
    }

    /// One sentence for a failure on a TLS connection: what is wrong and which setting to look
    /// at when rustls says why; else the whole chain of causes.
    fn tls_failure(&self, error: &(dyn std::error::Error + 'static)) -> String {
        let Some(tls_error) = rustls_cause(error) else { return error_chain(error) };
        let ca = self.tls_files.ca.as_ref().map_or("?".into(), |p| p.display().to_string());
        let detail = match tls_error {
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
            ) => format!("etcd's certificate is not signed by the CA in [witness] ca ({ca})"),
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            ) => "etcd's certificate is not valid for the endpoint's host (its subject alternative names)".into(),
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired
                | rustls::CertificateError::ExpiredContext { .. }
                | rustls::CertificateError::NotValidYet
                | rustls::CertificateError::NotValidYetContext { .. },
            ) => "etcd's certificate has expired or is not valid yet (or this host's clock is wrong)".into(),
            rustls::Error::AlertReceived(_) => match &self.tls_files.cert {
                None => "etcd refused the connection: it requires a client certificate \
                         (--client-cert-auth) and [witness] names none; set `cert` and `key`"
                    .into(),
                Some(cert) => format!(
                    "etcd refused our client certificate ({}): is it signed by the CA etcd trusts \
                     (--trusted-ca-file) and made for client authentication?",
                    cert.display()
                ),
            },
            _ => String::new(),
        };
        if detail.is_empty() {
            format!("TLS: {tls_error}")
        } else {
            format!("TLS: {detail} ({tls_error})")
        }
    }
}

/// What an https etcd's 503 "connection closed" (or "transport: …", the same refusal seen at
/// another moment of the gateway's dial) means: its JSON gateway could not reach its own gRPC
/// server. With `--client-cert-auth` the gateway presents etcd's server certificate as its
/// client certificate, which etcd refuses unless it also has extended key usage `clientAuth`
/// (etcd 3.4's log: "certificate specifies an incompatible key usage").
fn status_hint(endpoint: &Endpoint, status: StatusCode, body: &str) -> &'static str {
    let gateway_cut = body.contains("connection closed") || body.contains("transport:");
    if endpoint.https && status == StatusCode::SERVICE_UNAVAILABLE && gateway_cut {
        " (etcd's JSON gateway could not reach etcd itself: with --client-cert-auth, etcd's server \
         certificate needs extended key usage clientAuth as well as serverAuth)"
    } else {
        ""
    }
}

/// The first rustls error among `error` and its causes (rustls hands them over inside
/// `io::Error`s, which hyper wraps in turn).
fn rustls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        let inner = current.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if let Some(found) = inner.and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            return Some(found);
        }
        next = current.source();
    }
    None
}

/// An error and each of its causes, joined by ": " (hyper's own text alone is often just
/// "connection error").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        next = cause.source();
    }
    text
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

async fn exchange<T>(io: T, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), BoxError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let mut driver = tokio::spawn(connection);
    let result: Result<_, BoxError> = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_REPLY_BYTES).collect().await?.to_bytes();
        Ok((status, body))
    }
    .await;
    if result.is_err() {
        // A connection that failed says why itself (a TLS alert from etcd, say); the request's
        // own error is then only "canceled" or "connection closed". It has ended, or ends soon.
        if let Ok(Ok(Err(connection_error))) = tokio::time::timeout(CONNECTION_ERROR_WAIT, &mut driver).await {
            return Err(connection_error.into());
        }
    }
    driver.abort();
    result
}

/// Checks an endpoint as the pair file gives it; `Ok(true)` for `https`. `Err` says why not.
pub fn check_endpoint(url: &str) -> Result<bool, String> {
    match parse_endpoint(url) {
        Ok(endpoint) => Ok(endpoint.https),
        Err(EtcdError::BadEndpoint { reason, .. }) => Err(format!("is {url:?}, not a valid endpoint: {reason}")),
        Err(other) => Err(other.to_string()),
    }
}

fn parse_endpoint(url: &str) -> Result<Endpoint, EtcdError> {
    let bad = |reason: &str| EtcdError::BadEndpoint { endpoint: url.to_string(), reason: reason.to_string() };
    let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(bad("it must start with http:// or https://"));
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(bad("give only scheme, host and port (no path)"));
    }
    let (host, port) =
        authority.rsplit_once(':').ok_or_else(|| bad("it needs a port (etcd's client port, 2379 by default)"))?;
    let port: u16 = port.parse().map_err(|_| bad("its port is not a number from 1 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad("it needs a host and a non-zero port"));
    }
    Ok(Endpoint { url: url.to_string(), https, host: host.to_string(), port })
}

fn client_tls(tls: &EtcdTls, endpoint: &str) -> Result<Arc<ClientConfig>, EtcdError> {
    let ca = tls.ca.as_ref().ok_or_else(|| EtcdError::NoCa { endpoint: endpoint.to_string() })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::tls::load_certs(ca, "etcd CA certificate").map_err(|e| EtcdError::Tls(e.to_string()))? {
        roots.add(cert).map_err(|e| EtcdError::Tls(format!("{}: {e}", ca.display())))?;
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| EtcdError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs =
                crate::tls::load_certs(cert, "etcd client certificate").map_err(|e| EtcdError::Tls(e.to_string()))?;
            let key = crate::tls::load_key(key, "etcd client key").map_err(|e| EtcdError::Tls(e.to_string()))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| EtcdError::Tls(e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(EtcdError::Tls("[witness] needs both `cert` and `key`, or neither".into())),
    };
    Ok(Arc::new(config))
}

fn parse<T: for<'de> Deserialize<'de>>(endpoint: &str, path: &'static str, reply: &[u8]) -> Result<T, EtcdError> {
    serde_json::from_slice(reply).map_err(|e| malformed(endpoint, path, &e.to_string()))
}

fn malformed(endpoint: &str, path: &'static str, reason: &str) -> EtcdError {
    EtcdError::Malformed { endpoint: endpoint.to_string(), path, reason: reason.to_string() }
}

/// A 64-bit integer as proto3's JSON mapping writes it (a string; a number is accepted too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
struct Int64(i64);

impl<'de> Deserialize<'de> for Int64 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Number(i64),
        }
        match Either::deserialize(deserializer)? {
            Either::Number(n) => Ok(Int64(n)),
            Either::Text(s) => s.parse().map(Int64).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default)]
    revision: Int64,
}

#[derive(Debug, Deserialize)]
struct GrantReply {
    #[serde(rename = "ID", default)]
    id: Int64,
    #[serde(rename = "TTL", default)]
    ttl: Int64,
}

#[derive(Debug, Deserialize)]
struct KeepAliveReply {
    #[serde(default)]
    result: KeepAliveResult,
}

#[derive(Debug, Default, Deserialize)]
struct KeepAliveResult {
    #[serde(rename = "TTL", default)]
    ttl: Int64,
}

#[derive(Debug, Deserialize)]
struct RawKeyValue {
    #[serde(default)]
    value: String,
    #[serde(default)]
    mod_revision: Int64,
    #[serde(default)]
    lease: Int64,
}

impl RawKeyValue {
    fn decode(self, endpoint: &str, path: &'static str) -> Result<KeyValue, EtcdError> {
        let value =
            BASE64.decode(&self.value).map_err(|e| malformed(endpoint, path, &format!("value is not base64: {e}")))?;
        Ok(KeyValue { value, mod_revision: self.mod_revision.0, lease: self.lease.0 })
    }
}

#[derive(Debug, Deserialize)]
struct RangeReply {
    #[serde(default)]
    kvs: Vec<RawKeyValue>,
}

#[derive(Debug, Deserialize)]
struct TxnReply {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<TxnResponse>,
}

#[derive(Debug, Deserialize)]
struct TxnResponse {
    #[serde(default)]
    response_range: Option<RangeReply>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_or_say_why_not() {
        let ok = parse_endpoint("http://127.0.0.1:2379").unwrap();
        assert_eq!((ok.https, ok.host.as_str(), ok.port), (false, "127.0.0.1", 2379));
        let ok = parse_endpoint("https://[::1]:2379/").unwrap();
        assert_eq!((ok.https, ok.host.as_str(), ok.port), (true, "::1", 2379));
        for bad in ["127.0.0.1:2379", "http://127.0.0.1", "http://h:99999", "http://h:1/v3", "http://:1", "http://h:0"]
        {
            let err = parse_endpoint(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn https_without_a_ca_is_refused_at_construction() {
        let err = EtcdClient::new(&["https://127.0.0.1:2379".into()], &EtcdTls::default(), Duration::from_secs(1));
        assert!(matches!(err, Err(EtcdError::NoCa { .. })));
    }

    #[test]
    fn int64_reads_strings_and_numbers_and_missing_fields_are_zero() {
        let reply: GrantReply = serde_json::from_str(r#"{"ID":"7","TTL":5}"#).unwrap();
        assert_eq!((reply.id.0, reply.ttl.0), (7, 5));
        let reply: KeepAliveReply = serde_json::from_str(r#"{"result":{"ID":"7"}}"#).unwrap();
        assert_eq!(reply.result.ttl.0, 0);
        assert!(serde_json::from_str::<GrantReply>(r#"{"ID":"x"}"#).is_err());
    }
}
