//! Every file a node's TLS identity needs is checked before it serves anything (issue 18,
//! item 5): a missing, unreadable or misplaced certificate, key or CA, a key that does not
//! match, a certificate from another CA or of another node — each stops `hotpair run` with a
//! non-zero exit naming the file and what is wrong. Files the pair file names are read with a
//! bound (`cert = "/dev/zero"` used to be read until memory ran out).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Pair, DEADLINE, POLL, PRIMARY};
use hotpair::config::SyncLevel;

/// One bad start: what is wrong, the pair-file lines replaced, what the refusal must say.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<String>);

/// A bad start must end at once: well within this.
const QUICK: Duration = Duration::from_secs(10);

/// The pair file with `key = "…"` lines of `[nodes.a]` / `[tls]` replaced, written beside it.
fn variant(pair: &Pair, name: &str, replacements: &[(&str, String)]) -> PathBuf {
    let mut text = std::fs::read_to_string(&pair.pair_file).unwrap();
    for (line, value) in replacements {
        assert!(text.contains(line), "the pair file has no line {line:?}");
        text = text.replacen(line, &format!("{} = \"{value}\"", line.split(" =").next().unwrap()), 1);
    }
    let path = pair.dir().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `hotpair --pair FILE ARGS`; returns its exit code and stderr once it ended.
fn run(pair_file: &Path, args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hotpair"))
        .arg("--pair")
        .arg(pair_file)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hotpair");
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("hotpair {args:?} still runs after {DEADLINE:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(POLL);
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text, started.elapsed())
}

fn assert_refused(pair_file: &Path, what: &str, needles: &[&str]) {
    let (code, output, took) = run(pair_file, &["run", PRIMARY]);
    assert_eq!(code, Some(1), "{what}: `run a` exit code {code:?}: {output}");
    for needle in needles {
        assert!(output.contains(needle), "{what}: the refusal does not say {needle:?}: {output}");
    }
    // The banner is printed once the ports are bound; nothing may be served.
    assert!(!output.contains("hotpair node a ("), "{what}: a started serving: {output}");
    assert!(!output.contains("panicked"), "{what}: {output}");
    assert!(took < QUICK, "{what}: the refusal took {took:?}");
}

/// Another cluster's files: a CA, and node a's certificate and key issued by it.
fn foreign_files(dir: &Path) -> PathBuf {
    let other = dir.join("other");
    let out = Command::new(env!("CARGO_BIN_EXE_hotpair"))
        .args(["init", "--dir"])
        .arg(&other)
        .args(["--nodes", "a=127.0.0.1:1,b=127.0.0.1:4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    other.join("tls")
}

#[test]
fn a_node_with_a_bad_identity_file_exits_naming_the_file_before_serving() {
    let mut pair = Pair::start(SyncLevel::Durable);
    pair.stop(PRIMARY);
    let tls = pair.dir().join("tls");
    let (cert, key, ca) = (tls.join("a.pem"), tls.join("a.key"), tls.join("ca.pem"));
    let show = |p: &Path| p.display().to_string();
    let foreign = foreign_files(pair.dir());
    let a_directory = pair.dir().join("a-directory.pem");
    std::fs::create_dir(&a_directory).unwrap();
    let missing = pair.dir().join("missing.pem");
    let cert_line = "cert = \"tls/a.pem\"";
    let key_line = "key = \"tls/a.key\"";
    let ca_line = "ca = \"tls/ca.pem\"";

    let cases: Vec<Case> = vec![
        ("missing certificate", vec![(cert_line, show(&missing))], vec![show(&missing), "No such file".into()]),
        (
            "certificate is a directory",
            vec![(cert_line, show(&a_directory))],
            vec![show(&a_directory), "is a directory".into()],
        ),
        (
            "key in place of the certificate",
            vec![(cert_line, show(&key))],
            vec![show(&key), "holds a private key, not a certificate".into()],
        ),
        (
            "certificate in place of the key",
            vec![(key_line, show(&cert))],
            vec![show(&cert), "holds a certificate, not a private key".into()],
        ),
        (
            "key of another certificate",
            vec![(key_line, show(&tls.join("b.key")))],
            vec![show(&tls.join("b.key")), "does not belong to certificate".into()],
        ),
        (
            "certificate of another CA",
            vec![(cert_line, show(&foreign.join("a.pem"))), (key_line, show(&foreign.join("a.key")))],
            vec![show(&foreign.join("a.pem")), "was not issued by the pair's CA".into(), show(&ca)],
        ),
        (
            "certificate of the other node",
            vec![(cert_line, show(&tls.join("b.pem"))), (key_line, show(&tls.join("b.key")))],
            vec![show(&tls.join("b.pem")), "is not node a's".into(), "node b".into()],
        ),
        ("missing CA", vec![(ca_line, show(&missing))], vec![show(&missing), "CA certificate".into()]),
        (
            "CA of another cluster",
            vec![(ca_line, show(&foreign.join("ca.pem")))],
            vec![show(&cert), "was not issued by the pair's CA".into()],
        ),
        (
            "endless certificate",
            vec![(cert_line, "/dev/zero".into())],
            vec!["/dev/zero".into(), "is larger than".into()],
        ),
        ("endless key", vec![(key_line, "/dev/zero".into())], vec!["/dev/zero".into(), "is larger than".into()]),
    ];
    for (i, (what, replacements, needles)) in cases.iter().enumerate() {
        let file = variant(&pair, &format!("case{i}"), replacements);
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        assert_refused(&file, what, &needles);
    }
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).unwrap();
        assert_refused(&pair.pair_file, "unreadable key", &[&show(&key), "Permission denied"]);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    } else {
        eprintln!("running as root: an unreadable key cannot be made; that case is not checked");
    }
    // The good files still start the node, and the pair is whole again.
    pair.restart(PRIMARY);
    pair.wait_ready();
}

#[test]
fn a_pair_file_or_playbook_that_never_ends_is_refused_at_once() {
    let started = Instant::now();
    let (code, output, _) = run(Path::new("/dev/zero"), &["status"]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("/dev/zero") && output.contains("is larger than"), "{output}");
    let dir = tempfile::tempdir().unwrap();
    let (code, output, _) = run(&dir.path().join("pair.toml"), &["drill", "/dev/zero"]);
    assert_ne!(code, Some(0), "{output}");
    assert!(output.contains("/dev/zero") && output.contains("is larger than"), "{output}");
    let (code, output, _) = run(dir.path(), &["status"]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("is a directory"), "{output}");
    assert!(started.elapsed() < QUICK, "took {:?}", started.elapsed());
}

#[test]
fn an_admin_certificate_from_another_ca_is_named_by_the_cli() {
    let pair = Pair::start(SyncLevel::Durable);
    let foreign = foreign_files(pair.dir());
    let show = |p: &Path| p.display().to_string();
    let file = variant(
        &pair,
        "foreign-admin",
        &[
            ("admin_cert = \"tls/admin.pem\"", show(&foreign.join("admin.pem"))),
            ("admin_key = \"tls/admin.key\"", show(&foreign.join("admin.key"))),
        ],
    );
    let (code, output, _) = run(&file, &["status"]);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains(&show(&foreign.join("admin.pem"))) && output.contains("was not issued by the pair's CA"),
        "{output}"
    );
}
