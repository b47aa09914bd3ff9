//! Certificate rotation on a running pair (real processes, real TLS): `hotpair certs rotate`
//! replaces an identity, the nodes take it without a restart, and the old certificate is refused
//! from then on — the stolen-admin-key case, a node's identity under a durable write load, and a
//! whole CA rotation.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::{stderr, Pair, DEADLINE, POLL};
use hotpair::config::{PairConfig, SyncLevel};
use hotpair::replication::wire::AdminRequest;
use redis::Commands;

/// Copies of an identity's files as they were before a rotation (what a thief would hold).
fn keep_copy(file: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join(file.file_name().unwrap());
    std::fs::copy(file, &copy).unwrap();
    copy
}

fn status_of(pair: &PairConfig, node: &str) -> Result<serde_json::Value, String> {
    hotpair::admin::client::block_on(hotpair::admin::client::request(pair, node, AdminRequest::Status)).unwrap()
}

/// A TLS connection to `node`'s control port presenting `client`'s identity, then one frame:
/// `Ok` when the TLS session stood (the node answers, or closes it for not being a hello),
/// `Err` when the handshake was refused.
fn connect_as(pair: &PairConfig, client: Arc<rustls::ClientConfig>, node: &str) -> Result<(), String> {
    use hotpair::replication::wire::{self, Envelope, Frame, Message};
    let address = pair.node(node).unwrap().control;
    hotpair::admin::client::block_on(async move {
        let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
        let mut stream = tokio_rustls::TlsConnector::from(client)
            .connect(hotpair::tls::server_name(pair, node), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let request =
            Envelope { from: "b".into(), epoch: 0, message: Message::Admin { request: AdminRequest::Status } };
        wire::write_frame(&mut stream, &Frame::Message(request)).await.map_err(|e| e.to_string())?;
        match wire::read_frame(&mut stream).await {
            Ok(_) => Ok(()),
            // The node took the certificate, then ended a peer session that opened with no hello
            // (without a TLS close): accepted. A refused certificate is a TLS alert instead.
            Err(e) if e.to_string().contains("close_notify") => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })
    .unwrap()
}

#[test]
fn a_rotated_admin_certificate_is_refused_by_both_running_nodes_and_the_new_one_works() {
    let pair = Pair::start(SyncLevel::Durable);
    let stolen = tempfile::tempdir().unwrap();
    let mut thief = pair.config.clone();
    thief.tls.admin_cert = keep_copy(&pair.config.tls.admin_cert, stolen.path());
    thief.tls.admin_key = keep_copy(&pair.config.tls.admin_key, stolen.path());
    // An admin connection opened with the old certificate before the rotation.
    let open = hotpair::admin::client::Sessions::new(&thief);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime
        .block_on(open.request("a", AdminRequest::Status, hotpair::admin::client::ADMIN_TIMEOUT))
        .expect("works before");

    let out = pair.hotpair_ok(&["certs", "rotate", "--admin"]);
    assert!(out.contains("rotated the admin"), "{out}");

    for node in ["a", "b"] {
        status_of(&pair.config, node).expect("the new admin certificate works at once");
        let err = status_of(&thief, node).expect_err("the old admin certificate is refused");
        assert!(err.contains("CertificateRevoked") && err.contains("certs rotate --admin"), "{node}: {err}");
    }
    // The connection opened before gets no answer to its next request.
    let err = runtime
        .block_on(open.request("a", AdminRequest::Status, hotpair::admin::client::ADMIN_TIMEOUT))
        .expect_err("an open connection with the old certificate is refused at its next request");
    assert!(err.contains("replaced by `hotpair certs rotate`") || err.contains("Revoked"), "{err}");
    // No restart: each node was started once, and the pair is still whole.
    for node in ["a", "b"] {
        assert_eq!(pair.log(node).matches(&format!("===== hotpair run {node} =====")).count(), 1);
    }
    let () = pair.redis("a").set("after-rotation", "1").unwrap();
    // The CA key is needed, and its absence is said clearly.
    let out = pair.hotpair(&["certs", "rotate", "--admin", "--ca-key", "/nonexistent/ca.key"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("kept offline") && stderr(&out).contains("--ca-key"), "{}", stderr(&out));
}

/// Durable writes from a few clients until stopped; counts acknowledged and failed writes.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Writers {
    fn start(pair: &Pair) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let threads = (0..3)
            .map(|client| {
                let mut redis = pair.redis("a");
                let (stop, acked) = (stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut failed = 0;
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        match redis.set::<_, _, ()>(format!("k{client}:{}", seq % 100), seq) {
                            Ok(()) => acked.fetch_add(1, Ordering::Relaxed),
                            Err(err) => {
                                eprintln!("write failed: {err}");
                                failed += 1;
                                0
                            }
                        };
                    }
                    failed
                })
            })
            .collect();
        Writers { stop, acked, threads }
    }

    fn wait_for_more(&self, more: u64) {
        let target = self.acked.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + DEADLINE;
        while self.acked.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "writes stopped being acknowledged");
            std::thread::sleep(POLL);
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap()).sum()
    }
}

#[test]
fn a_node_rotated_under_durable_writes_reconnects_with_its_new_identity_and_no_write_fails() {
    let mut pair = Pair::start(SyncLevel::Durable);
    let old = tempfile::tempdir().unwrap();
    let mut old_b = pair.config.clone();
    old_b.nodes[1].cert = keep_copy(&pair.config.nodes[1].cert, old.path());
    old_b.nodes[1].key = keep_copy(&pair.config.nodes[1].key, old.path());
    let old_client = hotpair::tls::node_client_config(&old_b, "b").unwrap();
    connect_as(&pair.config, old_client.clone(), "a").expect("b's certificate is accepted before the rotation");

    let writers = Writers::start(&pair);
    writers.wait_for_more(200);
    pair.hotpair_ok(&["certs", "rotate", "--node", "b"]);
    pair.wait_log(
        "a",
        "the peer's certificate file changed",
        "a ends b's session authenticated with the old certificate",
    );
    writers.wait_for_more(500);
    let failed = writers.stop();
    assert_eq!(failed, 0, "no durable write failed across the rotation");
    pair.wait_caught_up();

    // b is connected again, so it presented its new certificate; the old one is refused.
    let err = connect_as(&pair.config, old_client, "a").expect_err("the old certificate of b is refused");
    assert!(err.contains("CertificateRevoked"), "{err}");
    assert!(pair.log("a").contains("refused a certificate that is not the current one for node b"), "a says why");
}

#[test]
fn a_ca_rotation_on_a_running_pair_ends_with_only_the_new_ca_trusted() {
    let mut pair = Pair::start(SyncLevel::Durable);
    let tls_dir = pair.config.tls.ca.parent().unwrap().to_path_buf();
    let old_ca = std::fs::read(&pair.config.tls.ca).unwrap();
    let out = pair.hotpair_ok(&["certs", "rotate", "--ca"]);
    assert!(out.contains("bundled with the old one"), "{out}");
    assert!(tls_dir.join("ca.key.old").is_file());
    // While an identity still comes from the old CA, finishing is refused.
    let out = pair.hotpair(&["certs", "finish-ca"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("still chain(s) to the old CA"), "{}", stderr(&out));
    status_of(&pair.config, "a").expect("the pair works mid-rotation");

    pair.hotpair_ok(&["certs", "rotate"]);
    let out = pair.hotpair_ok(&["certs", "finish-ca"]);
    assert!(out.contains("only the new CA"), "{out}");
    assert!(!tls_dir.join("ca.key.old").exists());
    assert_ne!(std::fs::read(&pair.config.tls.ca).unwrap(), old_ca);
    let () = pair.redis("a").set("after-ca-rotation", "1").expect("durable writes work: b follows");
    pair.wait_caught_up();
    for node in ["a", "b"] {
        status_of(&pair.config, node).expect("admin works with the new CA's certificate");
    }
}
