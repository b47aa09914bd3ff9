//! The witness over TLS: a real etcd on 127.0.0.1 serving https only and requiring a client
//! certificate (`--client-cert-auth`), with a throwaway CA made per test
//! (`hotpair::drill::etcd::EtcdCerts`). Without an etcd executable each test prints SKIPPED.
//!
//! What must show (issue 20, "TLS to etcd when the endpoint is https"): with `[witness] ca`,
//! `cert` and `key` the client does everything the witness needs; a server certificate of
//! another CA, or no client certificate, is an error within the call's bound that names the
//! endpoint and the TLS problem; and a pair whose witness is that etcd fails over by itself
//! after kill -9 of its primary.

mod common;

use std::time::{Duration, Instant};

use common::witness::{etcd_tls_or_skip, pair_with_options, role, witness_table, Writer};
use common::{Options, BACKUP, DEADLINE, POLL, PRIMARY};
use hotpair::config::SyncLevel;
use hotpair::drill::etcd::{EtcdCerts, LocalEtcd};
use hotpair::witness::{Cas, EtcdClient, EtcdError, EtcdTls};

const TIMEOUT: Duration = Duration::from_secs(2);

fn client(endpoint: &str, tls: &EtcdTls) -> EtcdClient {
    EtcdClient::new(&[endpoint.to_string()], tls, TIMEOUT).expect("client")
}

#[test]
fn with_its_ca_and_a_client_certificate_the_witness_calls_work_over_https() {
    let Some(witness) = etcd_tls_or_skip("with_its_ca_and_a_client_certificate_the_witness_calls_work_over_https")
    else {
        return;
    };
    let endpoint = witness.etcd.endpoint();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    let client = client(&endpoint, &witness.etcd.client_tls());
    witness.runtime.block_on(async {
        let lease = client.grant_lease(Duration::from_secs(3)).await.expect("grant over https");
        let key = b"/hotpair/test/tls";
        let put = client.put_if_absent(key, b"a", lease.id).await.expect("put over https");
        assert!(matches!(put, Cas::Written { .. }), "{put:?}");
        let held = client.get(key).await.expect("get over https").expect("the key exists");
        assert_eq!((held.value.as_slice(), held.lease), (&b"a"[..], lease.id));
        assert_eq!(client.keep_alive(lease.id).await.expect("keepalive over https"), Some(3));
        client.revoke(lease.id).await.expect("revoke over https");
        assert_eq!(client.get(key).await.expect("get"), None, "revoking the lease deleted the key");
    });
}

/// A call that must fail: it fails within the bound, as an error naming the endpoint.
fn failing_call(witness: &common::witness::Witness, client: &EtcdClient) -> String {
    let started = Instant::now();
    let err = witness.runtime.block_on(client.get(b"/nothing")).expect_err("the call must fail");
    assert!(started.elapsed() < TIMEOUT + Duration::from_millis(500), "took {:?}", started.elapsed());
    assert!(matches!(err, EtcdError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&witness.etcd.endpoint()), "names the endpoint: {text}");
    text
}

#[test]
fn a_server_certificate_of_another_ca_is_refused_clearly() {
    let Some(witness) = etcd_tls_or_skip("a_server_certificate_of_another_ca_is_refused_clearly") else { return };
    let other_dir = tempfile::tempdir().expect("temp dir");
    let other = EtcdCerts::make(other_dir.path()).expect("another CA");
    // Another CA, with that CA's own (valid) client certificate: the server is not trusted.
    let text = failing_call(&witness, &client(&witness.etcd.endpoint(), &other.client_tls()));
    assert!(text.contains("TLS: etcd's certificate is not signed by the CA in [witness] ca"), "{text}");
    assert!(text.contains(&other.ca.display().to_string()), "names the CA file: {text}");
    eprintln!("server certificate of another CA: {text}");
    // The right CA but a client certificate of another CA: etcd refuses the client.
    let tls = EtcdTls { ca: witness.etcd.client_tls().ca, ..other.client_tls() };
    let text = failing_call(&witness, &client(&witness.etcd.endpoint(), &tls));
    assert!(text.contains("TLS: etcd refused our client certificate"), "{text}");
    assert!(text.contains(&other.client_cert.display().to_string()), "names the certificate file: {text}");
    eprintln!("client certificate of another CA: {text}");
}

#[test]
fn no_client_certificate_when_etcd_requires_one_is_refused_clearly() {
    let Some(witness) = etcd_tls_or_skip("no_client_certificate_when_etcd_requires_one_is_refused_clearly") else {
        return;
    };
    let tls = EtcdTls { ca: witness.etcd.client_tls().ca, cert: None, key: None };
    let text = failing_call(&witness, &client(&witness.etcd.endpoint(), &tls));
    assert!(text.contains("TLS: etcd refused the connection: it requires a client certificate"), "{text}");
    eprintln!("no client certificate: {text}");
    // Plain http to the https port is no better, and says so within the bound too.
    let plain = witness.etcd.endpoint().replace("https://", "http://");
    let started = Instant::now();
    let err = witness.runtime.block_on(client(&plain, &EtcdTls::default()).get(b"/nothing")).expect_err("http");
    assert!(started.elapsed() < TIMEOUT + Duration::from_millis(500), "took {:?}", started.elapsed());
    eprintln!("http to the https port: {err}");
}

#[test]
fn a_pair_with_an_https_witness_fails_over_by_itself_after_kill_9() {
    let Some(witness) = etcd_tls_or_skip("a_pair_with_an_https_witness_fails_over_by_itself_after_kill_9") else {
        return;
    };
    let options = Options { on_peer_loss: Some("degrade-after:0s"), ..Options::default() };
    let mut pair = pair_with_options(&witness, SyncLevel::Durable, options);
    let shown = pair.hotpair_ok(&["witness", "show"]);
    assert!(shown.contains("leader: a (epoch 1)"), "`witness show` reads the https etcd: {shown}");
    let writer = Writer::start(&pair);
    writer.wait_count(200, "load before the kill");
    let killed = Instant::now();
    pair.kill(PRIMARY);
    pair.wait_for_node(BACKUP, "b promoted by itself", |s| role(s) == "primary" && s["epoch"] == 2);
    let deadline = Instant::now() + DEADLINE;
    while writer.first_on(BACKUP, killed).is_none() {
        assert!(Instant::now() < deadline, "no write acknowledged by b after the kill: {}", pair.node_status(BACKUP));
        std::thread::sleep(POLL);
    }
    let took = writer.first_on(BACKUP, killed).map(|at| at - killed);
    eprintln!("https witness: first write on the new primary {took:?} after kill -9");
    let count = writer.count();
    writer.wait_count(count + 50, "load on the new primary");
    let acked = writer.finish();
    common::witness::assert_all_on(&pair, BACKUP, &acked);
    let shown = pair.hotpair_ok(&["witness", "show"]);
    assert!(shown.contains("leader: b (epoch 2)"), "{shown}");
    // b's own view of the witness follows etcd's by up to a round.
    pair.wait_for_node(BACKUP, "b seeing itself as the leader", |s| {
        s["witness"]["holds_lease"] == true && s["witness"]["leader"]["node"] == "b"
    });
    // `status` exits non-zero (a is down) but shows b's view of the witness.
    let status = String::from_utf8_lossy(&pair.hotpair(&["status"]).stdout).into_owned();
    assert!(status.contains("witness automatic: reachable, leader b (epoch 2), holds the lease"), "{status}");
}

#[test]
fn a_node_whose_witness_ca_is_wrong_says_why_in_status_and_keeps_taking_writes() {
    let Some(witness) = etcd_tls_or_skip("a_node_whose_witness_ca_is_wrong_says_why_in_status_and_keeps_taking_writes")
    else {
        return;
    };
    // The pair names another CA than the one that signed etcd's certificate: a setup mistake.
    let other_dir = tempfile::tempdir().expect("temp dir");
    let other = EtcdCerts::make(other_dir.path()).expect("another CA");
    let table = witness_table(&witness)
        .replace(&witness.etcd.certs().expect("tls").ca.display().to_string(), &other.ca.display().to_string());
    assert!(table.contains(&other.ca.display().to_string()), "{table}");
    let options = Options { append: Some(table), ..Options::default() };
    let pair = common::Pair::start_with(SyncLevel::Durable, options);
    // The backup acknowledges the primary, so writes go on (the failsafe) ...
    let mut redis = pair.redis(PRIMARY);
    let _: () = redis::Commands::set(&mut redis, "k", "v").expect("a takes writes with its backup");
    // ... and each node says why it cannot use the witness.
    for node in [PRIMARY, BACKUP] {
        let s = pair.wait_for_node(node, "the witness error in status", |s| s["witness"]["error"].is_string());
        assert_eq!(s["witness"]["reachable"], false, "{s}");
        let error = s["witness"]["error"].as_str().unwrap_or_default();
        assert!(error.contains("not signed by the CA in [witness] ca"), "{node}: {error}");
    }
    let status = String::from_utf8_lossy(&pair.hotpair(&["status"]).stdout).into_owned();
    assert!(status.contains("UNREACHABLE (no etcd endpoint answered"), "{status}");
    assert!(status.contains("etcd's certificate is not signed by the CA"), "{status}");
}

#[test]
fn a_server_certificate_without_client_auth_is_named_as_the_cause() {
    if LocalEtcd::executable().is_none() {
        eprintln!("SKIPPED a_server_certificate_without_client_auth_is_named_as_the_cause: no etcd executable");
        return;
    }
    // etcd 3.4's JSON gateway presents the server certificate to etcd's own gRPC port: with
    // --client-cert-auth and no clientAuth in it, every call fails although TLS to etcd works.
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = EtcdCerts::make_with(&dir.path().join("tls"), false).expect("certificates");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let etcd = runtime.block_on(LocalEtcd::start_tls_unchecked(dir.path(), certs)).expect("start etcd");
    let client = client(&etcd.endpoint(), &etcd.client_tls());
    let deadline = Instant::now() + DEADLINE;
    let err = loop {
        // Until etcd's gRPC side is up, calls fail otherwise; then always with HTTP 503.
        match runtime.block_on(client.get(b"/nothing")) {
            Err(err @ EtcdError::Status { .. }) => break err,
            other => assert!(Instant::now() < deadline, "no HTTP error from etcd: {other:?}"),
        }
        std::thread::sleep(POLL);
    };
    let text = err.to_string();
    assert!(text.contains(&etcd.endpoint()) && text.contains("HTTP 503"), "{text}");
    assert!(text.contains("server certificate needs extended key usage clientAuth"), "{text}");
    eprintln!("server certificate without clientAuth: {text}");
}
