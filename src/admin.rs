//! The admin client: sends admin requests to a node's control port with the admin certificate
//! (mutual TLS), and renders `status` for people.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_rustls::TlsConnector;

use crate::config::PairConfig;
use crate::wire::{self, AdminRequest, Envelope, Frame, Message};
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
    let config = pair.node(node).map_err(|e| e.to_string())?;
    let connector = TlsConnector::from(crate::tls::admin_client_config(pair).map_err(|e| e.to_string())?);
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(config.control)
            .await
            .map_err(|e| format!("cannot reach {node} at {}: {e}", config.control))?;
        let mut stream = connector
            .connect(crate::tls::server_name(pair, node), tcp)
            .await
            .map_err(|e| format!("TLS with {node} failed: {e}"))?;
        let envelope = Envelope { from: "admin".into(), epoch: 0, message: Message::Admin { request } };
        wire::write_frame(&mut stream, &Frame::Message(envelope)).await.map_err(|e| e.to_string())?;
        match wire::read_frame(&mut stream).await.map_err(|e| e.to_string())? {
            Some(Frame::Message(Envelope { message: Message::AdminReply { ok: true, body }, .. })) => Ok(body),
            Some(Frame::Message(Envelope { message: Message::AdminReply { ok: false, body }, .. })) => Err(format!(
                "{node} refused: {}",
                body.get("error").and_then(Value::as_str).unwrap_or("no reason given")
            )),
            other => Err(format!("{node} answered something unexpected: {other:?}")),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("{node} did not answer within {}", humantime::format_duration(timeout))))
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
        if node["writes"]["accepting"] == Value::Bool(false) {
            notes.push(format!("writes refused: {}", node["writes"]["reason"].as_str().unwrap_or("?")));
        }
        if node["degraded"] == Value::Bool(true) {
            notes.push("DEGRADED: acknowledging without the peer".into());
        }
        if let Some(failure) = node["failure"].as_str() {
            notes.push(format!("FAILED: {failure}"));
        }
        if let Some(at) = node["diverged_at"].as_u64() {
            notes.push(format!("DIVERGED after LSN {at}: run hotpair rejoin {name}"));
        }
        out.push_str(&format!("         {}\n", notes.join("; ")));
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
