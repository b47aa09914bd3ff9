//! The admin client: sends admin requests to a node's control port with the admin certificate
//! (mutual TLS), and renders `status` for people.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_rustls::TlsConnector;

use crate::config::PairConfig;
use crate::replication::wire::{self, AdminRequest, Envelope, Frame, Message};
use crate::Error;

/// How long one admin request may take, connection included.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one request to `node` and returns its reply body; `Err` names the node and why.
pub async fn request(pair: &PairConfig, node: &str, request: AdminRequest) -> Result<Value, String> {
    request_within(pair, node, request, ADMIN_TIMEOUT).await
}

/// [`request`] for requests that take longer than a status (waiting for a node to catch up).
pub async fn request_within(
    pair: &PairConfig,
    node: &str,
    request: AdminRequest,
    timeout: Duration,
) -> Result<Value, String> {
    Sessions::new(pair).request(node, request, timeout).await
}

/// A mutual-TLS admin connection to one node.
pub type AdminStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A fresh admin connection to `node`, for a request that streams (a backup).
pub async fn connect(pair: &PairConfig, node: &str) -> Result<AdminStream, String> {
    let connector = crate::tls::admin_client_config(pair).map(TlsConnector::from).map_err(|e| e.to_string())?;
    dial(pair, &connector, node).await
}

async fn dial(pair: &PairConfig, connector: &TlsConnector, node: &str) -> Result<AdminStream, String> {
    let config = pair.node(node).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(config.control)
        .await
        .map_err(|e| format!("cannot reach {node} at {}: {e}", config.control))?;
    let _ = tcp.set_nodelay(true);
    connector
        .connect(crate::tls::server_name(pair, node), tcp)
        .await
        .map_err(|e| explain_revoked(format!("TLS with {node} failed: {e}")))
}

/// Adds what to do to a refusal for a rotated certificate. (In TLS 1.3 the client finishes its
/// handshake before the server has checked the client's certificate, so the node's refusal
/// arrives as an alert on the first read, not at connect.)
fn explain_revoked(message: String) -> String {
    if message.contains("received fatal alert: CertificateRevoked") {
        format!("{message} (the node does not accept this admin certificate: it is not the one in the admin_cert file its pair file names; after `hotpair certs rotate --admin` use the new files)")
    } else if message.contains("Revoked") {
        format!("{message} (the node presented a certificate that is not the one in the file our pair file names for it: rotated, and this host does not have the new file yet?)")
    } else {
        crate::tls::explain_foreign(message)
    }
}

/// Admin connections kept open across requests. An orchestration sends a dozen requests in a
/// row, several inside the write outage; a fresh mutual-TLS handshake (and reading the PEM
/// files) for each would add to it.
pub struct Sessions {
    pair: PairConfig,
    connector: Result<TlsConnector, String>,
    open: tokio::sync::Mutex<std::collections::HashMap<String, AdminStream>>,
}

impl Sessions {
    pub fn new(pair: &PairConfig) -> Sessions {
        let connector = crate::tls::admin_client_config(pair).map(TlsConnector::from).map_err(|e| e.to_string());
        Sessions { pair: pair.clone(), connector, open: Default::default() }
    }

    /// Sends `request` to `node` over its open connection, or a new one. A connection that
    /// turns out broken is replaced once (the primitives are idempotent, so a request that did
    /// reach the node before the break may safely arrive twice).
    pub async fn request(&self, node: &str, request: AdminRequest, timeout: Duration) -> Result<Value, String> {
        self.request_once(node, request, timeout).await.map_err(explain_revoked)
    }

    async fn request_once(&self, node: &str, request: AdminRequest, timeout: Duration) -> Result<Value, String> {
        let reused = self.open.lock().await.remove(node);
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || format!("{node} did not answer within {}", humantime::format_duration(timeout));
        if let Some(stream) = reused {
            match tokio::time::timeout_at(deadline, exchange(stream, node, request.clone())).await {
                Ok(Ok((stream, answer))) => {
                    self.open.lock().await.insert(node.to_string(), stream);
                    return answer;
                }
                Ok(Err(_broken)) => {}
                Err(_) => return Err(timed_out()),
            }
        }
        let fresh = async {
            let stream = self.connect(node).await?;
            exchange(stream, node, request).await
        };
        match tokio::time::timeout_at(deadline, fresh).await {
            Ok(Ok((stream, answer))) => {
                self.open.lock().await.insert(node.to_string(), stream);
                answer
            }
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(timed_out()),
        }
    }

    async fn connect(&self, node: &str) -> Result<AdminStream, String> {
        let connector = self.connector.as_ref().map_err(Clone::clone)?;
        dial(&self.pair, connector, node).await
    }
}

/// One request and its answer on `stream`. `Err` is a broken connection; the inner result is
/// the node's answer (a refusal included), after which the connection is still good.
async fn exchange(
    mut stream: AdminStream,
    node: &str,
    request: AdminRequest,
) -> Result<(AdminStream, Result<Value, String>), String> {
    let envelope = Envelope { from: "admin".into(), epoch: 0, message: Message::Admin { request } };
    wire::write_frame(&mut stream, &Frame::Message(envelope)).await.map_err(|e| e.to_string())?;
    let answer = match wire::read_frame(&mut stream).await.map_err(|e| e.to_string())? {
        Some(Frame::Message(Envelope { message: Message::AdminReply { ok: true, body }, .. })) => Ok(body),
        Some(Frame::Message(Envelope { message: Message::AdminReply { ok: false, body }, .. })) => {
            Err(format!("{node} refused: {}", body.get("error").and_then(Value::as_str).unwrap_or("no reason given")))
        }
        None => return Err(format!("{node} closed the connection")),
        other => Err(format!("{node} answered something unexpected: {other:?}")),
    };
    Ok((stream, answer))
}

/// `{"nodes": {name: status}}` for both nodes; an unreachable node shows `reachable: false`.
pub async fn status(pair: &PairConfig) -> Value {
    let names: Vec<String> = pair.nodes.iter().map(|n| n.name.clone()).collect();
    let replies = futures_join(pair, &names).await;
    let mut nodes = serde_json::Map::new();
    for (name, reply) in names.into_iter().zip(replies) {
        let value = reply.unwrap_or_else(|error| json!({ "reachable": false, "error": error }));
        nodes.insert(name, value);
    }
    json!({ "nodes": nodes })
}

async fn futures_join(pair: &PairConfig, names: &[String]) -> Vec<Result<Value, String>> {
    let mut handles = Vec::new();
    for name in names {
        let (pair, name) = (pair.clone(), name.clone());
        handles.push(tokio::spawn(async move { request(&pair, &name, AdminRequest::Status).await }));
    }
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap_or_else(|e| Err(format!("status task failed: {e}"))));
    }
    out
}

/// A table an admin reads at a glance.
pub fn render_status(status: &Value) -> String {
    let mut out = format!(
        "{:<8} {:<10} {:>5} {:>10} {:>10} {:>8} {:>8}  {:<8} {:<12} {:<12} {}\n",
        "node", "role", "epoch", "lsn", "received", "lag", "lag ms", "sync", "local", "remote", "digest"
    );
    let Some(nodes) = status.get("nodes").and_then(Value::as_object) else {
        return out;
    };
    for (name, node) in nodes {
        if node.get("reachable") != Some(&Value::Bool(true)) {
            out.push_str(&format!(
                "{name:<8} UNREACHABLE: {}\n",
                node.get("error").and_then(Value::as_str).unwrap_or("?")
            ));
            continue;
        }
        let text = |key: &str| {
            node.get(key).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).unwrap_or_default()
        };
        out.push_str(&format!(
            "{name:<8} {:<10} {:>5} {:>10} {:>10} {:>8} {:>8}  {:<8} {:<12} {:<12} {}\n",
            text("role"),
            text("epoch"),
            text("lsn"),
            text("received_lsn"),
            text("lag_records"),
            text("lag_ms"),
            text("sync"),
            text("local_journal"),
            text("remote_journal"),
            text("digest")
        ));
        let peer = &node["peer"];
        let mut notes = vec![format!(
            "peer {} {}",
            peer["name"].as_str().unwrap_or("?"),
            if peer["connected"] == Value::Bool(true) { "connected" } else { "NOT connected" }
        )];
        if let Some(ago) = peer["last_heartbeat_ms_ago"].as_u64() {
            notes.push(format!("last heard {ago} ms ago"));
        }
        if let Some(digest) = node["config_digest"].as_str() {
            notes.push(format!("pair file {}", digest.get(..12).unwrap_or(digest)));
        }
        if node["writes"]["accepting"] == Value::Bool(false) {
            notes.push(format!("writes refused: {}", node["writes"]["reason"].as_str().unwrap_or("?")));
        }
        if node["degraded"] == Value::Bool(true) {
            notes.push("DEGRADED: acknowledging without the peer".into());
        }
        if let Some(failure) = node["failure"].as_str() {
            notes.push(format!("FAILED: {failure}"));
        }
        if let Some(witness) = node["witness"].as_object() {
            let flag = |key: &str| witness.get(key) == Some(&Value::Bool(true));
            let leader = match (witness["leader"]["node"].as_str(), witness["leader"]["epoch"].as_u64()) {
                (Some(node), Some(epoch)) => format!("leader {node} (epoch {epoch})"),
                _ => "no leader".to_string(),
            };
            let lease = match witness["lease_left_ms"].as_u64() {
                Some(left) if flag("holds_lease") => format!("holds the lease ({left} ms left)"),
                _ => "holds no lease".to_string(),
            };
            let reachable = match witness.get("error").and_then(Value::as_str) {
                _ if flag("reachable") => "reachable".to_string(),
                Some(error) => format!("UNREACHABLE ({error})"),
                None => "UNREACHABLE".to_string(),
            };
            notes.push(format!(
                "witness {}{}: {reachable}, {leader}, {lease}",
                witness["mode"].as_str().unwrap_or("?"),
                if flag("paused") { " PAUSED" } else { "" },
            ));
        }
        if let Some(at) = node["diverged_at"].as_u64() {
            notes.push(format!("DIVERGED after LSN {at}: run hotpair rejoin {name}"));
        }
        out.push_str(&format!("         {}\n", notes.join("; ")));
        for incident in node["incidents"].as_array().into_iter().flatten() {
            let field = |key: &str| incident[key].as_str().unwrap_or("?").to_string();
            out.push_str(&format!(
                "         INCIDENT {} ({}, open): {}\n",
                field("kind"),
                field("severity"),
                field("message")
            ));
        }
    }
    out
}

/// Runs an async admin action on a small runtime (the CLI is otherwise synchronous).
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io { context: "starting the async runtime".into(), source })?;
    Ok(runtime.block_on(future))
}
