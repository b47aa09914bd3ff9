//! The pair file: what loads, and that every refusal names the key and the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hotpair::config::{ConfigError, FailoverMode, Limits, PairConfig, PeerLossPolicy, SyncLevel};

const CLUSTER: &str = "6f1c1f0e-8a43-4d2b-9b1e-3c2a7d5e9f10";

/// The example from INTERFACE.md, with a real cluster id.
fn good() -> String {
    format!(
        r#"
cluster = "{CLUSTER}"
sync = "durable"
sync_timeout = "5s"
on_peer_loss = "block"
heartbeat = "200ms"

[tls]
ca = "tls/ca.pem"
admin_cert = "tls/admin.pem"
admin_key = "tls/admin.key"

[nodes.a]
control = "127.0.0.1:7401"
data = "127.0.0.1:7402"
dir = "a"
cert = "tls/a.pem"
key = "tls/a.key"

[nodes.b]
control = "127.0.0.1:7501"
data = "127.0.0.1:7502"
dir = "b"
cert = "tls/b.pem"
key = "tls/b.key"

[notify]
commands = []
incident_log = "incidents.jsonl"
"#
    )
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("pair.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Loads `text` from a fresh file; returns the error and the file's path.
fn refused(text: &str) -> (ConfigError, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), text);
    let err = PairConfig::load(&path).expect_err("the pair file should be refused");
    (err, path)
}

fn assert_names(err: &ConfigError, path: &Path, words: &[&str]) {
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "does not name the file: {message}");
    for word in words {
        assert!(message.contains(word), "does not mention {word:?}: {message}");
    }
}

#[test]
fn the_interface_example_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &good());
    let pair = PairConfig::load(&path).unwrap();
    assert_eq!(pair.path, path);
    assert_eq!(pair.cluster.to_string(), CLUSTER);
    assert_eq!(pair.sync, SyncLevel::Durable);
    assert_eq!(pair.sync_timeout, Duration::from_secs(5));
    assert_eq!(pair.on_peer_loss, PeerLossPolicy::Block);
    assert_eq!(pair.heartbeat, Duration::from_millis(200));
    assert_eq!(pair.tls.ca, dir.path().join("tls/ca.pem"));
    assert_eq!(pair.tls.admin_key, dir.path().join("tls/admin.key"));
    let names: Vec<&str> = pair.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let b = pair.node("b").unwrap();
    assert_eq!(b.control, "127.0.0.1:7501".parse().unwrap());
    assert_eq!(b.data, "127.0.0.1:7502".parse().unwrap());
    assert_eq!(b.dir, dir.path().join("b"));
    assert_eq!(b.cert, dir.path().join("tls/b.pem"));
    assert_eq!(pair.peer_of("a").unwrap().name, "b");
    assert_eq!(pair.peer_of("b").unwrap().name, "a");
    assert_eq!(pair.preferred_primary().name, "a");
    assert_eq!(pair.notify.incident_log, dir.path().join("incidents.jsonl"));
    assert!(pair.notify.commands.is_empty());
    assert_eq!(pair.limits, Limits::default());
    assert_eq!(pair.limits.max_value_bytes, 16 * 1024 * 1024);

    let err = pair.node("c").unwrap_err();
    assert_names(&err, &path, &["\"c\"", "a and b"]);
    assert!(pair.peer_of("c").is_err());
}

#[test]
fn node_order_is_the_file_order_and_optional_keys_take_defaults() {
    let text = format!(
        r#"
cluster = "{CLUSTER}"
on_peer_loss = "degrade-after:1m 30s"
[tls]
ca = "/etc/hotpair/ca.pem"
admin_cert = "../admin.pem"
admin_key = "../admin.key"
[nodes.zulu]
control = "10.0.0.2:7000"
dir = "data/zulu"
cert = "z.pem"
key = "z.key"
[nodes.alpha]
control = "10.0.0.1:7000"
dir = "data/alpha"
cert = "a.pem"
key = "a.key"
[limits]
max_connections = 10
admin_idle_timeout = "90s"
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let pair = PairConfig::load(&write(dir.path(), &text)).unwrap();
    assert_eq!(pair.preferred_primary().name, "zulu");
    assert_eq!(pair.nodes[1].name, "alpha");
    // data port defaults to control + 1
    assert_eq!(pair.nodes[0].data, "10.0.0.2:7001".parse().unwrap());
    assert_eq!(pair.sync, SyncLevel::Durable);
    assert_eq!(pair.sync_timeout, Duration::from_secs(5));
    assert_eq!(pair.heartbeat, Duration::from_millis(200));
    assert_eq!(pair.on_peer_loss, PeerLossPolicy::DegradeAfter(Duration::from_secs(90)));
    assert_eq!(pair.limits.max_connections, 10);
    assert_eq!(pair.limits.max_args, Limits::default().max_args);
    assert_eq!(pair.limits.admin_idle_timeout, Duration::from_secs(90));
    // relative paths are relative to the pair file, absolute ones are kept
    assert_eq!(pair.tls.ca, Path::new("/etc/hotpair/ca.pem"));
    assert_eq!(pair.tls.admin_cert, dir.path().join("../admin.pem"));
    assert_eq!(pair.nodes[0].dir, dir.path().join("data/zulu"));
    assert!(pair.nodes.iter().all(|n| n.dir.is_absolute() && n.cert.is_absolute() && n.key.is_absolute()));
}

#[test]
fn relative_paths_follow_the_pair_file_not_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("elsewhere/deeper");
    std::fs::create_dir_all(&sub).unwrap();
    let path = write(&sub, &good());
    let pair = PairConfig::load(&path).unwrap();
    assert_eq!(pair.nodes[0].dir, sub.join("a"));
    assert_eq!(pair.tls.ca, sub.join("tls/ca.pem"));
    // A relative pair-file path is made absolute too.
    let pair = PairConfig::from_toml_str(&good(), Path::new("some/pair.toml")).unwrap();
    assert!(pair.path.is_absolute());
    assert_eq!(pair.nodes[1].dir, std::env::current_dir().unwrap().join("some/b"));
}

#[test]
fn unknown_keys_are_refused_with_their_name_anywhere() {
    let cases = [("colour = \"red\"\n", "colour"), ("sync_timout = \"5s\"\n", "sync_timout")];
    for (line, key) in cases {
        let (err, path) = refused(&format!("{line}{}", good()));
        assert_names(&err, &path, &[key, "unknown"]);
    }
    let in_table = [
        ("[tls]\n", "[tls]\nca_file = \"x\"\n", "ca_file"),
        ("[nodes.b]\n", "[nodes.b]\nport = 1\n", "port"),
        ("[notify]\n", "[notify]\nemail = \"ops@example.com\"\n", "email"),
    ];
    for (anchor, replacement, key) in in_table {
        let (err, path) = refused(&good().replace(anchor, replacement));
        assert_names(&err, &path, &[key, "unknown"]);
    }
    let (err, path) = refused(&format!("{}\n[limits]\nmax_keys = 3\n", good()));
    assert_names(&err, &path, &["max_keys"]);
    let (err, path) = refused(&format!("{}\n[extra]\nx = 1\n", good()));
    assert_names(&err, &path, &["extra"]);
}

#[test]
fn ill_typed_values_name_their_key() {
    let cases = [
        ("heartbeat = \"200ms\"", "heartbeat = \"fast\"", "heartbeat"),
        ("sync_timeout = \"5s\"", "sync_timeout = \"5 parsecs\"", "sync_timeout"),
        ("sync_timeout = \"5s\"", "sync_timeout = \"0s\"", "sync_timeout"),
        ("sync = \"durable\"", "sync = \"fast\"", "sync"),
        ("on_peer_loss = \"block\"", "on_peer_loss = \"degrade-after:soon\"", "on_peer_loss"),
        ("on_peer_loss = \"block\"", "on_peer_loss = \"panic\"", "on_peer_loss"),
        ("control = \"127.0.0.1:7501\"", "control = \"nowhere:7501\"", "nodes.b.control"),
        ("data = \"127.0.0.1:7402\"", "data = \"127.0.0.1\"", "nodes.a.data"),
        ("data = \"127.0.0.1:7402\"", "data = \"127.0.0.1:0\"", "nodes.a.data"),
        (CLUSTER, "not-a-uuid", "cluster"),
    ];
    for (from, to, key) in cases {
        let text = good().replacen(from, to, 1);
        assert_ne!(text, good(), "{from} not found in the example");
        let (err, path) = refused(&text);
        assert_eq!(err.key(), Some(key), "{err}");
        assert_names(&err, &path, &[&format!("`{key}`")]);
    }
    // A value of the wrong TOML type is caught by the parser, which names the line.
    let (err, path) = refused(&good().replace("heartbeat = \"200ms\"", "heartbeat = 5"));
    assert_names(&err, &path, &["heartbeat = 5", "line"]);
}

#[test]
fn a_pair_is_exactly_two_well_formed_distinct_nodes() {
    let b_table_start = good().find("[nodes.b]").unwrap();
    let b_table_end = good().find("[notify]").unwrap();
    let one_node = format!("{}{}", &good()[..b_table_start], &good()[b_table_end..]);
    let (err, path) = refused(&one_node);
    assert_eq!(err.key(), Some("nodes"));
    assert_names(&err, &path, &["exactly two", "1 node"]);

    let three = format!(
        "{}\n[nodes.c]\ncontrol = \"127.0.0.1:7601\"\ndir = \"c\"\ncert = \"c.pem\"\nkey = \"c.key\"\n",
        good()
    );
    let (err, _) = refused(&three);
    assert_eq!(err.key(), Some("nodes"));

    let (err, path) = refused(&good().replace("[nodes.b]", "[nodes.B]"));
    assert_eq!(err.key(), Some("nodes.B"));
    assert_names(&err, &path, &["not a valid node name"]);

    let (err, path) = refused(&good().replace("[nodes.b]", "[nodes.admin]"));
    assert_eq!(err.key(), Some("nodes.admin"));
    assert_names(&err, &path, &["admin's identity"]);

    let (err, _) = refused(&good().replace("[nodes.b]", "[nodes.-b]"));
    assert_eq!(err.key(), Some("nodes.-b"));

    let clash = good().replace("data = \"127.0.0.1:7502\"", "data = \"127.0.0.1:7401\"");
    let (err, path) = refused(&clash);
    assert_eq!(err.key(), Some("nodes.b.data"));
    assert_names(&err, &path, &["nodes.a.control", "clashes"]);

    let wildcard = good().replace("control = \"127.0.0.1:7501\"", "control = \"0.0.0.0:7402\"");
    let (err, _) = refused(&wildcard);
    assert_eq!(err.key(), Some("nodes.b.control"));

    let same_dir = good().replace("dir = \"b\"", "dir = \"./a/../a\"").replace("dir = \"a\"", "dir = \"./a/../a\"");
    let (err, _) = refused(&same_dir);
    assert_eq!(err.key(), Some("nodes.b.dir"));

    let (err, path) = refused(&good().replace("dir = \"b\"\n", ""));
    assert_eq!(err.key(), Some("nodes.b.dir"));
    assert_names(&err, &path, &["missing"]);

    let (err, _) = refused(&good().replacen(&format!("cluster = \"{CLUSTER}\""), "", 1));
    assert_eq!(err.key(), Some("cluster"));
}

#[test]
fn a_missing_file_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let err = PairConfig::load(&path).unwrap_err();
    assert_names(&err, &path, &["hotpair init", "--pair", "HOTPAIR_PAIR"]);
}

#[test]
fn locate_prefers_the_flag_then_the_environment_then_the_working_directory() {
    // The only test in this binary that touches HOTPAIR_PAIR.
    assert_eq!(PairConfig::locate(Some(Path::new("/x/p.toml"))), Path::new("/x/p.toml"));
    std::env::set_var("HOTPAIR_PAIR", "/from/env.toml");
    assert_eq!(PairConfig::locate(Some(Path::new("/x/p.toml"))), Path::new("/x/p.toml"));
    assert_eq!(PairConfig::locate(None), Path::new("/from/env.toml"));
    std::env::set_var("HOTPAIR_PAIR", "");
    assert_eq!(PairConfig::locate(None), Path::new("pair.toml"));
    std::env::remove_var("HOTPAIR_PAIR");
    assert_eq!(PairConfig::locate(None), Path::new("pair.toml"));
}

#[test]
fn the_monitor_table_takes_durations_off_and_counts_and_refuses_the_rest_by_key() {
    use hotpair::config::MonitorConfig;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &good());
    assert_eq!(PairConfig::load(&path).unwrap().monitor, MonitorConfig::default());

    let text = format!(
        "{}\n[monitor]\nlag_alert = \"2s\"\nlag_alert_records = 500\ncanary_interval = \"off\"\ndigest_interval = \"30s\"\nretention_alert = \"1h\"\n",
        good()
    );
    let path = write(dir.path(), &text);
    let monitor = PairConfig::load(&path).unwrap().monitor;
    assert_eq!(monitor.lag_alert, Duration::from_secs(2));
    assert_eq!(monitor.lag_alert_records, 500);
    assert_eq!(monitor.canary_interval, None);
    assert_eq!(monitor.digest_interval, Some(Duration::from_secs(30)));
    assert_eq!(monitor.retention_alert, Duration::from_secs(3600));

    for (line, key) in [
        ("canary_interval = \"soon\"", "monitor.canary_interval"),
        ("lag_alert = \"0s\"", "monitor.lag_alert"),
        ("lag_alert = \"off\"", "monitor.lag_alert"),
        ("lag_alert_records = 0", "monitor.lag_alert_records"),
        ("digest_intreval = \"1m\"", "digest_intreval"),
    ] {
        let (err, path) = refused(&format!("{}\n[monitor]\n{line}\n", good()));
        assert_names(&err, &path, &[key]);
    }
}

#[test]
fn the_metrics_address_is_optional_per_node_and_refused_by_its_key_when_bad() {
    let with_metrics =
        |value: &str| good().replacen("key = \"tls/b.key\"\n", &format!("key = \"tls/b.key\"\nmetrics = {value}\n"), 1);
    let dir = tempfile::tempdir().unwrap();
    let pair = PairConfig::load(&write(dir.path(), &with_metrics("\"127.0.0.1:9101\""))).unwrap();
    assert_eq!(pair.node("b").unwrap().metrics, Some("127.0.0.1:9101".parse().unwrap()));
    assert_eq!(pair.node("a").unwrap().metrics, None, "absent: no endpoint");

    for bad in ["\"nowhere:9101\"", "\"127.0.0.1\"", "\"127.0.0.1:0\"", "\"\""] {
        let (err, path) = refused(&with_metrics(bad));
        assert_eq!(err.key(), Some("nodes.b.metrics"), "{bad}: {err}");
        assert_names(&err, &path, &["`nodes.b.metrics`"]);
    }
    let (err, path) = refused(&with_metrics("\"127.0.0.1:7401\""));
    assert_eq!(err.key(), Some("nodes.b.metrics"), "a clash with a's control port: {err}");
    assert_names(&err, &path, &["nodes.a.control"]);
    // A value of the wrong TOML type is caught by the parser, which names the line.
    let (err, path) = refused(&with_metrics("9101"));
    assert_names(&err, &path, &["metrics = 9101", "line"]);
}

#[test]
fn disk_min_free_is_bytes_or_a_size_and_anything_else_is_refused_naming_the_key() {
    let with = |value: &str| {
        good().replacen("heartbeat = \"200ms\"", &format!("heartbeat = \"200ms\"\ndisk_min_free = {value}"), 1)
    };
    let dir = tempfile::tempdir().unwrap();
    let pair = PairConfig::load(&write(dir.path(), &good())).unwrap();
    assert_eq!(pair.disk_min_free, hotpair::config::DEFAULT_DISK_MIN_FREE);
    let accepted =
        [("0", 0), ("1048576", 1 << 20), ("\"512MiB\"", 512 << 20), ("\"64MB\"", 64_000_000), ("\"1 GiB\"", 1 << 30)];
    for (value, bytes) in accepted {
        let pair = PairConfig::load(&write(dir.path(), &with(value))).unwrap();
        assert_eq!(pair.disk_min_free, bytes, "{value}");
    }
    for value in ["\"lots\"", "\"12M\"", "\"1.5GiB\"", "-5", "true", "1.5", "\"\""] {
        let (err, path) = refused(&with(value));
        assert_eq!(err.key(), Some("disk_min_free"), "{value}: {err}");
        assert_names(&err, &path, &["`disk_min_free`", "MiB"]);
    }
}

#[test]
fn every_duration_key_is_bounded_and_refused_outside_naming_the_key_and_range() {
    // `heartbeat = "100000000y"` used to be taken, and silently turned liveness off.
    let top = |key: &str, value: &str| {
        let line = format!("{key} = \"{value}\"");
        let mut text = good();
        match text.lines().find(|l| l.starts_with(&format!("{key} ="))).map(str::to_string) {
            Some(existing) => text = text.replacen(&existing, &line, 1),
            None => text = text.replacen("heartbeat = \"200ms\"", &format!("heartbeat = \"200ms\"\n{line}"), 1),
        }
        text
    };
    let table = |table: &str, key: &str, value: &str| format!("{}\n[{table}]\n{key} = \"{value}\"\n", good());
    let cases: Vec<(String, &str, &str, &str)> = vec![
        (top("heartbeat", "100000000y"), "heartbeat", "10ms", "1m"),
        (top("heartbeat", "1ms"), "heartbeat", "10ms", "1m"),
        (top("sync_timeout", "2h"), "sync_timeout", "10ms", "1h"),
        (top("sync_timeout", "0s"), "sync_timeout", "10ms", "1h"),
        (top("on_peer_loss", "degrade-after:100000000y"), "on_peer_loss", "0s", "1h"),
        (table("limits", "admin_idle_timeout", "2days"), "limits.admin_idle_timeout", "100ms", "1day"),
        (table("monitor", "lag_alert", "1ms"), "monitor.lag_alert", "100ms", "1day"),
        (table("monitor", "canary_interval", "100000000y"), "monitor.canary_interval", "100ms", "1day"),
        (table("monitor", "digest_interval", "2days"), "monitor.digest_interval", "100ms", "1day"),
        (table("monitor", "retention_alert", "1year"), "monitor.retention_alert", "100ms", "30days"),
    ];
    for (text, key, min, max) in &cases {
        let (err, path) = refused(text);
        assert_eq!(err.key(), Some(*key), "{err}");
        assert_names(&err, &path, &[&format!("`{key}`"), &format!("between {min} and {max}")]);
    }
    // Both ends are accepted.
    let dir = tempfile::tempdir().unwrap();
    for text in [top("heartbeat", "10ms"), top("heartbeat", "1m"), top("on_peer_loss", "degrade-after:0s")] {
        PairConfig::load(&write(dir.path(), &text)).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn a_node_and_the_cli_refuse_durations_out_of_range_at_once() {
    // The real binary: `run` with a pair file whose heartbeat is a hundred million years, and
    // an orchestration command whose --timeout is.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &good().replace("heartbeat = \"200ms\"", "heartbeat = \"100000000y\""));
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hotpair")).arg("--pair").arg(&path).args(args).output().unwrap()
    };
    let out = run(&["run", "a"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`heartbeat`") && stderr.contains("between 10ms and 1m"), "{stderr}");
    for args in [["switchover", "--timeout", "100000000y"], ["switchover", "--max-lag", "100000000y"]] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("out of range") && stderr.contains("between 1ms and 1day"), "{stderr}");
    }
}

#[test]
fn the_sentinel_port_and_the_master_name_take_defaults_and_are_refused_by_key_when_bad() {
    let dir = tempfile::tempdir().unwrap();
    let pair = PairConfig::load(&write(dir.path(), &good())).unwrap();
    assert_eq!(pair.name, "hotpair", "the default master name");
    assert_eq!(pair.node("a").unwrap().sentinel, "127.0.0.1:7403".parse().unwrap(), "control port + 2");
    assert_eq!(pair.node("b").unwrap().sentinel, "127.0.0.1:7503".parse().unwrap());

    let named = format!("name = \"orders\"\n{}", good());
    let with_sentinel =
        |value: &str| named.replacen("key = \"tls/b.key\"\n", &format!("key = \"tls/b.key\"\nsentinel = {value}\n"), 1);
    let pair = PairConfig::load(&write(dir.path(), &with_sentinel("\"127.0.0.1:26379\""))).unwrap();
    assert_eq!(pair.name, "orders");
    assert_eq!(pair.node("b").unwrap().sentinel, "127.0.0.1:26379".parse().unwrap());

    for bad in ["\"nowhere:1\"", "\"127.0.0.1:0\"", "\"\""] {
        let (err, path) = refused(&with_sentinel(bad));
        assert_eq!(err.key(), Some("nodes.b.sentinel"), "{bad}: {err}");
        assert_names(&err, &path, &["`nodes.b.sentinel`"]);
    }
    let (err, path) = refused(&with_sentinel("\"127.0.0.1:7402\""));
    assert_eq!(err.key(), Some("nodes.b.sentinel"), "a clash with a's data port: {err}");
    assert_names(&err, &path, &["nodes.a.data"]);
    // A default that lands on another address is refused by the key to set.
    let crowded = good().replace("127.0.0.1:7501", "127.0.0.1:7403").replace("127.0.0.1:7502", "127.0.0.1:7404");
    let (err, path) = refused(&crowded);
    assert!(matches!(err.key(), Some("nodes.b.control" | "nodes.a.sentinel")), "{err}");
    assert_names(&err, &path, &["7403"]);

    for bad in ["\"\"", "\"two words\"", &format!("\"{}\"", "n".repeat(65))] {
        let (err, path) = refused(&format!("name = {bad}\n{}", good()));
        assert_eq!(err.key(), Some("name"), "{bad}: {err}");
        assert_names(&err, &path, &["`name`", "master name"]);
    }
}

#[test]
fn the_witness_table_loads_with_defaults_and_is_absent_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let pair = PairConfig::load(&write(dir.path(), &good())).unwrap();
    assert_eq!(pair.witness, None, "no [witness]: manual failover only, as before");

    let text = format!("{}\n[witness]\netcd = [\"http://127.0.0.1:2379\", \"http://10.0.0.3:2379\"]\n", good());
    let witness = PairConfig::load(&write(dir.path(), &text)).unwrap().witness.expect("a witness");
    assert_eq!(witness.etcd, ["http://127.0.0.1:2379", "http://10.0.0.3:2379"]);
    assert_eq!(witness.failover, FailoverMode::Automatic);
    assert_eq!(witness.ttl, Duration::from_secs(5));
    assert_eq!(witness.min_interval, Duration::from_secs(300));
    assert_eq!(witness.max_lag, None);

    let text = format!(
        "{}\n[witness]\netcd = [\"https://etcd.example:2379\"]\nfailover = \"observe\"\nttl = \"3s\"\nmin_interval = \"0s\"\nca = \"etcd-ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n",
        good().replace("sync = \"durable\"", "sync = \"async\"")
    ) + "";
    let text = text.replace("min_interval = \"0s\"", "min_interval = \"0s\"\nmax_lag = \"2s\"");
    let witness = PairConfig::load(&write(dir.path(), &text)).unwrap().witness.expect("a witness");
    assert_eq!(witness.failover, FailoverMode::Observe);
    assert_eq!(witness.ttl, Duration::from_secs(3));
    assert_eq!(witness.max_lag, Some(Duration::from_secs(2)));
    assert_eq!(witness.min_interval, Duration::ZERO);
    assert_eq!(witness.ca, Some(dir.path().join("etcd-ca.pem")));
}

#[test]
fn a_bad_witness_table_is_refused_naming_the_key() {
    let with = |lines: &str| format!("{}\n[witness]\n{lines}\n", good());
    let cases: &[(&str, &str, &[&str])] = &[
        ("failover = \"automatic\"", "witness.etcd", &["missing", "endpoints"]),
        ("etcd = []", "witness.etcd", &["empty"]),
        ("etcd = [\"127.0.0.1:2379\"]", "witness.etcd[0]", &["http://"]),
        ("etcd = [\"http://h:1\", \"http://h\"]", "witness.etcd[1]", &["port"]),
        ("etcd = [\"https://h:2379\"]", "witness.etcd[0]", &["ca"]),
        ("etcd = [\"http://h:2379\"]\nfailover = \"auto\"", "witness.failover", &["automatic", "observe"]),
        ("etcd = [\"http://h:2379\"]\nttl = \"1s\"", "witness.ttl", &["between"]),
        ("etcd = [\"http://h:2379\"]\nttl = \"2500ms\"", "witness.ttl", &["whole seconds"]),
        ("etcd = [\"http://h:2379\"]\nttl = \"soon\"", "witness.ttl", &["not a duration"]),
        ("etcd = [\"http://h:2379\"]\nmax_lag = \"1s\"", "witness.max_lag", &["durable", "async"]),
        ("etcd = [\"http://h:2379\"]\nmin_interval = \"30d\"", "witness.min_interval", &["between"]),
        ("etcd = [\"http://h:2379\"]\ncert = \"c.pem\"", "witness.key", &["both"]),
    ];
    for (lines, key, words) in cases {
        let (err, path) = refused(&with(lines));
        assert_eq!(err.key(), Some(*key), "{lines}: {err}");
        assert_names(&err, &path, words);
    }
    let (err, path) = refused(&with("etcd = [\"http://h:2379\"]\nleader_key = \"x\""));
    assert_names(&err, &path, &["leader_key"]);
}

#[test]
fn a_nodes_witness_etcd_replaces_the_endpoints_for_that_node_only() {
    let dir = tempfile::tempdir().unwrap();
    let witness = "\n[witness]\netcd = [\"http://127.0.0.1:2379\"]\n";
    let text = good().replace("[nodes.a]\n", "[nodes.a]\nwitness_etcd = [\"http://127.0.0.1:3379\"]\n") + witness;
    let pair = PairConfig::load(&write(dir.path(), &text)).unwrap();
    let w = pair.witness.expect("a witness");
    assert_eq!(w.endpoints_for("a"), ["http://127.0.0.1:3379"]);
    assert_eq!(w.endpoints_for("b"), ["http://127.0.0.1:2379"], "b keeps [witness] etcd");
    assert_eq!(w.etcd, ["http://127.0.0.1:2379"], "hotpair witness uses the table's list");

    let cases: &[(&str, &str, &str, &[&str])] = &[
        ("[]", witness, "nodes.a.witness_etcd", &["empty"]),
        ("[\"127.0.0.1:3379\"]", witness, "nodes.a.witness_etcd[0]", &["http://"]),
        ("[\"https://h:2379\"]", witness, "nodes.a.witness_etcd[0]", &["ca"]),
        ("[\"http://h:2379\"]", "", "nodes.a.witness_etcd", &["[witness]"]),
    ];
    for (value, table, key, words) in cases {
        let text = good().replace("[nodes.a]\n", &format!("[nodes.a]\nwitness_etcd = {value}\n")) + table;
        let (err, path) = refused(&text);
        assert_eq!(err.key(), Some(*key), "{value}: {err}");
        assert_names(&err, &path, words);
    }
}
