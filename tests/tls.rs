//! `hotpair init` (the real binary) and mutual TLS over real sockets on 127.0.0.1.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use hotpair::config::PairConfig;
use hotpair::storage::meta::{NodeMeta, Role};
use hotpair::tls::{self, Peer, TlsError};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Guard against a hung handshake; never used to wait for something to happen.
const LIMIT: Duration = Duration::from_secs(20);

fn hotpair(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hotpair")).args(args).output().expect("run hotpair")
}

/// Runs `hotpair init --dir DIR` and loads the pair it wrote.
fn init(dir: &Path) -> PairConfig {
    let out = hotpair(&["init", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
    PairConfig::load(&dir.join("pair.toml")).unwrap()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

struct Outcome {
    /// The server side: the client's certificates after a successful handshake.
    server: Result<Vec<CertificateDer<'static>>, std::io::Error>,
    /// The client side: the handshake and one byte read from the server afterwards (in TLS 1.3
    /// the client finishes before the server has checked the client's certificate).
    client: Result<Option<Vec<u8>>, std::io::Error>,
}

/// One connection over 127.0.0.1 between an acceptor with `server` and a connector with
/// `client` asking for `name`.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: ServerName<'static>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut stream = acceptor.accept(tcp).await?;
        let certs: Vec<CertificateDer<'static>> =
            stream.get_ref().1.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
        stream.write_all(b"k").await?;
        stream.shutdown().await?;
        Ok::<_, std::io::Error>(certs)
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut stream = TlsConnector::from(client).connect(name, tcp).await?;
        let alpn = stream.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        Ok::<_, std::io::Error>(alpn)
    };
    let client = tokio::time::timeout(LIMIT, client_side).await.expect("client side hung");
    let server =
        tokio::time::timeout(LIMIT, server_side).await.expect("server side hung").expect("server task panicked");
    Outcome { server, client }
}

fn assert_mode_0600(path: &Path) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
}

#[test]
fn init_writes_a_whole_pair_with_private_keys_and_refuses_a_second_run() {
    let tmp = tempdir();
    let dir = tmp.path().join("pair");
    let pair = init(&dir);

    let tls_dir = dir.join("tls");
    for file in ["ca.pem", "ca.key", "a.pem", "a.key", "b.pem", "b.key", "admin.pem", "admin.key"] {
        assert!(tls_dir.join(file).is_file(), "{file} missing");
    }
    for key in ["ca.key", "a.key", "b.key", "admin.key"] {
        assert_mode_0600(&tls_dir.join(key));
    }
    assert_eq!(pair.nodes[0].dir, dir.join("a"));
    assert_eq!(pair.nodes[0].data.port(), pair.nodes[0].control.port() + 1);
    assert_eq!(pair.tls.ca, tls_dir.join("ca.pem"));
    let header = std::fs::read_to_string(dir.join("pair.toml")).unwrap();
    assert!(header.starts_with('#') && header.contains("# sync_timeout"), "no comment header:\n{header}");

    let a = NodeMeta::load(&dir.join("a")).unwrap();
    let b = NodeMeta::load(&dir.join("b")).unwrap();
    assert_eq!((a.role, b.role), (Role::Primary, Role::Backup));
    assert_eq!((a.epoch, b.epoch), (1, 1));
    assert_eq!(a.cluster, pair.cluster);
    assert_eq!(b.history, a.history);
    assert_eq!(a.history.len(), 1);
    assert_eq!((a.history[0].epoch, a.history[0].first_lsn, a.history[0].primary.as_str()), (1, 1, "a"));
    assert_ne!(a.incarnation, b.incarnation);

    // The second run refuses with exit 1 and changes nothing.
    let before: Vec<(PathBuf, Vec<u8>)> = ["pair.toml", "tls/ca.pem", "tls/ca.key", "tls/a.key", "a/meta.json"]
        .iter()
        .map(|f| (dir.join(f), std::fs::read(dir.join(f)).unwrap()))
        .collect();
    let out = hotpair(&["init", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing") && stderr.contains("pair.toml"), "{stderr}");
    for (path, bytes) in before {
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{} changed", path.display());
    }

    // Even one leftover node directory is enough to refuse, and nothing is written.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("b")).unwrap();
    let out = hotpair(&["init", "--dir", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!other.join("tls").exists() && !other.join("pair.toml").exists());

    // Bad arguments are usage errors.
    let out = hotpair(&["init", "--dir", other.to_str().unwrap(), "--nodes", "a=127.0.0.1:7401"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = hotpair(&["init", "--dir", other.to_str().unwrap(), "--sync", "sometimes"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn init_takes_node_names_addresses_and_sync_level() {
    let tmp = tempdir();
    let dir = tmp.path().join("p");
    let out = hotpair(&[
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--nodes",
        "east=127.0.0.1:9100,west=127.0.0.2:9100",
        "--sync",
        "applied",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pair = PairConfig::load(&dir.join("pair.toml")).unwrap();
    assert_eq!(pair.sync, hotpair::config::SyncLevel::Applied);
    assert_eq!(pair.preferred_primary().name, "east");
    assert_eq!(pair.peer_of("east").unwrap().data, "127.0.0.2:9101".parse().unwrap());
    assert_eq!(pair.peer_of("east").unwrap().sentinel, "127.0.0.2:9102".parse().unwrap(), "Sentinel port + 2, written");
    assert_eq!(pair.name, "hotpair");
    let text = std::fs::read_to_string(dir.join("pair.toml")).unwrap();
    assert!(text.contains("sentinel = \"127.0.0.1:9102\"") && text.contains("name = \"hotpair\""), "{text}");
    // Control ports 2 apart leave no room for the Sentinel port: refused, saying so.
    let out = hotpair(&[
        "init",
        "--dir",
        tmp.path().join("q").to_str().unwrap(),
        "--nodes",
        "a=127.0.0.1:9200,b=127.0.0.1:9202",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Sentinel"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(NodeMeta::load(&dir.join("west")).unwrap().history[0].primary, "east");
}

#[tokio::test]
async fn a_node_of_the_pair_gets_in_and_is_identified() {
    let tmp = tempdir();
    let pair = init(tmp.path());
    let out = handshake(
        tls::server_config(&pair, "a").unwrap(),
        tls::node_client_config(&pair, "b").unwrap(),
        tls::server_name(&pair, "a"),
    )
    .await;
    assert_eq!(out.client.unwrap(), Some(tls::ALPN.to_vec()));
    let certs = out.server.unwrap();
    assert_eq!(tls::identify_peer(&pair, &certs).unwrap(), Peer::Node("b".into()));
    assert_eq!(tls::server_name(&pair, "a"), ServerName::try_from(format!("a.{}.hotpair", pair.cluster)).unwrap());
}

#[tokio::test]
async fn the_admin_gets_in_and_is_identified_as_admin() {
    let tmp = tempdir();
    let pair = init(tmp.path());
    let out = handshake(
        tls::server_config(&pair, "b").unwrap(),
        tls::admin_client_config(&pair).unwrap(),
        tls::server_name(&pair, "b"),
    )
    .await;
    out.client.unwrap();
    assert_eq!(tls::identify_peer(&pair, &out.server.unwrap()).unwrap(), Peer::Admin);
}

#[tokio::test]
async fn a_client_checks_it_reached_the_node_it_asked_for() {
    let tmp = tempdir();
    let pair = init(tmp.path());
    // b dials a's listener but asks for b: a's certificate is not valid for that name.
    let out = handshake(
        tls::server_config(&pair, "a").unwrap(),
        tls::node_client_config(&pair, "b").unwrap(),
        tls::server_name(&pair, "b"),
    )
    .await;
    let err = out.client.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("not valid for name"), "{err}");
    assert!(out.server.is_err());
}

#[tokio::test]
async fn a_certificate_of_another_cluster_is_refused_at_the_handshake() {
    let tmp = tempdir();
    let ours = init(&tmp.path().join("ours"));
    let theirs = init(&tmp.path().join("theirs"));

    // Their node with their own configuration: neither side trusts the other's CA.
    let out = handshake(
        tls::server_config(&ours, "a").unwrap(),
        tls::node_client_config(&theirs, "b").unwrap(),
        tls::server_name(&ours, "a"),
    )
    .await;
    assert!(out.client.is_err());
    assert!(out.server.is_err());

    // Their node's certificate presented by a client that does trust our CA: our server is the
    // one that must refuse it.
    let mut roots = RootCertStore::empty();
    for cert in tls::load_certs(&ours.tls.ca, "CA").unwrap() {
        roots.add(cert).unwrap();
    }
    let their_b = theirs.node("b").unwrap();
    let impostor = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            tls::load_certs(&their_b.cert, "cert").unwrap(),
            tls::load_key(&their_b.key, "key").unwrap(),
        )
        .unwrap();
    let out =
        handshake(tls::server_config(&ours, "a").unwrap(), Arc::new(impostor), tls::server_name(&ours, "a")).await;
    let err = out.server.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("unknownissuer") || err.to_lowercase().contains("unknown issuer"), "{err}");
    assert!(out.client.is_err(), "the client must not get a byte through");

    // identify_peer does not take the caller's word for the chain either.
    let their_certs = tls::load_certs(&their_b.cert, "cert").unwrap();
    assert!(matches!(tls::identify_peer(&ours, &their_certs), Err(TlsError::Untrusted { .. })));
    assert!(matches!(tls::identify_peer(&ours, &[]), Err(TlsError::NoClientCertificate)));
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let tmp = tempdir();
    let pair = init(tmp.path());
    let mut roots = RootCertStore::empty();
    for cert in tls::load_certs(&pair.tls.ca, "CA").unwrap() {
        roots.add(cert).unwrap();
    }
    let anonymous = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let out =
        handshake(tls::server_config(&pair, "a").unwrap(), Arc::new(anonymous), tls::server_name(&pair, "a")).await;
    let err = out.server.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(out.client.is_err(), "the client must not get a byte through");
}

#[tokio::test]
async fn garbage_fails_the_handshake_without_panicking() {
    let tmp = tempdir();
    let pair = init(tmp.path());
    let acceptor = TlsAcceptor::from(tls::server_config(&pair, "a").unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inputs: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00],
        b"", // connect and hang up at once
    ];
    for input in inputs {
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let accepted = tokio::time::timeout(LIMIT, tokio::spawn(acceptor.clone().accept(tcp)))
            .await
            .expect("acceptor hung on garbage")
            .expect("acceptor panicked on garbage");
        assert!(accepted.is_err(), "garbage {input:?} was accepted");
    }
}

#[test]
fn load_failures_name_the_file() {
    let tmp = tempdir();
    let pair = init(tmp.path());

    let mut missing = pair.clone();
    missing.nodes[0].cert = tmp.path().join("tls/nope.pem");
    let err = tls::server_config(&missing, "a").unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nope.pem"), "{err}");

    let not_pem = tmp.path().join("tls/garbage.pem");
    std::fs::write(&not_pem, "hello, not a certificate\n").unwrap();
    let mut bad = pair.clone();
    bad.tls.ca = not_pem.clone();
    let err = tls::node_client_config(&bad, "a").unwrap_err();
    assert!(matches!(err, TlsError::NotPem { .. }) && err.to_string().contains("garbage.pem"), "{err}");
    let mut bad = pair.clone();
    bad.nodes[1].key = not_pem;
    let err = tls::node_client_config(&bad, "b").unwrap_err();
    assert!(err.to_string().contains("garbage.pem") && err.to_string().contains("PRIVATE KEY"), "{err}");

    let mut swapped = pair.clone();
    swapped.nodes[0].key = pair.nodes[1].key.clone();
    let err = tls::server_config(&swapped, "a").unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("b.key") && err.to_string().contains("a.pem"), "{err}");

    let err = tls::server_config(&pair, "c").unwrap_err();
    assert!(err.to_string().contains("\"c\""), "{err}");
}

/// Mints a certificate for `names` with the pair's own CA key (as someone holding `ca.key` could).
fn mint(pair: &PairConfig, names: &[&str]) -> CertificateDer<'static> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pair.tls.ca.with_file_name("ca.key")).unwrap()).unwrap();
    // Re-create the issuer with the CA's subject and key: enough to sign as that CA.
    let mut issuer = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hotpair");
    dn.push(DnType::CommonName, format!("hotpair CA for cluster {}", pair.cluster));
    issuer.distinguished_name = dn;
    issuer.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let issuer = issuer.self_signed(&ca_key).unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    params.signed_by(&key, &issuer, &ca_key).unwrap().der().clone()
}

#[test]
fn a_trusted_certificate_must_carry_exactly_one_expected_identity() {
    let tmp = tempdir();
    let pair = init(tmp.path());
    let c = pair.cluster;

    let installed = tls::load_certs(&pair.nodes[1].cert, "b").unwrap();
    assert_eq!(tls::identify_peer(&pair, &installed).unwrap(), Peer::Node("b".into()));
    // Right CA, right name, but not the certificate in b's file (minted with ca.key and never
    // installed, or rotated away): refused, naming the file.
    let minted = mint(&pair, &[&format!("b.{c}.hotpair")]);
    let err = tls::identify_peer(&pair, &[minted]).unwrap_err();
    assert!(matches!(err, TlsError::NotCurrent { .. }) && err.to_string().contains("b.pem"), "{err}");

    let stranger = mint(&pair, &[&format!("c.{c}.hotpair")]);
    let err = tls::identify_peer(&pair, &[stranger]).unwrap_err();
    assert!(matches!(err, TlsError::NotOurIdentity { .. }), "{err}");

    let other_cluster = mint(&pair, &[&format!("b.{}.hotpair", uuid::Uuid::new_v4())]);
    assert!(matches!(tls::identify_peer(&pair, &[other_cluster]), Err(TlsError::NotOurIdentity { .. })));

    let wildcard = mint(&pair, &[&format!("*.{c}.hotpair")]);
    let err = tls::identify_peer(&pair, &[wildcard]).unwrap_err();
    assert!(matches!(err, TlsError::Ambiguous { .. }), "{err}");

    let two_faced = mint(&pair, &[&format!("a.{c}.hotpair"), &format!("admin.{c}.hotpair")]);
    assert!(matches!(tls::identify_peer(&pair, &[two_faced]), Err(TlsError::Ambiguous { .. })));
}
