//! The runbook's day-two procedures, run as written: every block of `docs/runbook.md` that
//! starts with `# runbook-test: NAME` is run here with bash on a real pair, with the variables
//! its text names. The nodes are started the way an admin's shell would (`hotpair run N &`,
//! pid files), and `restart_node` / `install_new_binary` are the stand-ins the runbook names
//! for a service manager.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{free_control_port, Pair};
use redis::Commands;

/// What every block runs after: strict bash, and the runbook's two service-manager names.
const PRELUDE: &str = r#"set -euo pipefail
start_node() {
  hotpair run "$1" >> "$PIDS/$1.log" 2>&1 &
  echo $! > "$PIDS/$1.pid"
  local deadline=$((SECONDS + 120))
  while [ "$SECONDS" -lt "$deadline" ]; do
    # `status` exits 1 while the other node is down: read its table, not its exit status.
    if { hotpair status 2>/dev/null || true; } | grep -q "^$1 .*\(primary\|backup\|fenced\)"; then return 0; fi
    sleep 0.1
  done
  echo "node $1 did not answer within 120 s" >&2
  return 1
}
stop_node() {
  local pid; pid=$(cat "$PIDS/$1.pid")
  kill "-${2:-TERM}" "$pid"
  while [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do sleep 0.05; done
}
restart_node() { stop_node "$1"; start_node "$1"; }
install_new_binary() { echo "(the binary under test is the new one)"; }
"#;

/// The runbook's tested blocks, by name.
fn blocks() -> HashMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbook.md");
    let text = std::fs::read_to_string(&path).expect("read docs/runbook.md");
    let mut blocks = HashMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```sh" {
            continue;
        }
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        if let Some(name) = body.first().and_then(|l| l.strip_prefix("# runbook-test: ")) {
            blocks.insert(name.trim().to_string(), body[1..].join("\n"));
        }
    }
    blocks
}

/// A pair made by `hotpair init` and run from bash, as the runbook's admin does.
struct Session {
    dir: tempfile::TempDir,
    pair_file: PathBuf,
    blocks: HashMap<String, String>,
}

impl Session {
    fn start(sync: &str) -> Session {
        let dir = tempfile::tempdir().unwrap();
        let nodes = format!("a=127.0.0.1:{},b=127.0.0.1:{}", free_control_port(), free_control_port());
        let out = Command::new(env!("CARGO_BIN_EXE_hotpair"))
            .args(["init", "--dir", dir.path().join("pair").to_str().unwrap(), "--nodes", &nodes, "--sync", sync])
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::create_dir(dir.path().join("pids")).unwrap();
        let session = Session { pair_file: dir.path().join("pair/pair.toml"), dir, blocks: blocks() };
        session.shell(
            "start_node a; start_node b; until hotpair switchover --dry-run >/dev/null 2>&1; do sleep 0.1; done",
            &[],
        );
        session
    }

    fn config(&self) -> hotpair::config::PairConfig {
        hotpair::config::PairConfig::load(&self.pair_file).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `script` after the prelude; panics with its output unless it exits 0.
    fn shell(&self, script: &str, vars: &[(&str, String)]) -> String {
        let bin = Path::new(env!("CARGO_BIN_EXE_hotpair")).parent().unwrap().to_path_buf();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{PRELUDE}\n{script}\n"))
            .env("PATH", path)
            .env("HOTPAIR_PAIR", &self.pair_file)
            .env("PIDS", self.path("pids"))
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run bash");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "script failed ({}):\n{script}\n----- output -----\n{text}\n{}",
            out.status,
            self.logs()
        );
        text
    }

    /// Runs the runbook block `name` as written.
    fn run(&self, name: &str, vars: &[(&str, String)]) -> String {
        let block =
            self.blocks.get(name).unwrap_or_else(|| panic!("docs/runbook.md has no `# runbook-test: {name}` block"));
        self.shell(block, vars)
    }

    fn logs(&self) -> String {
        ["a", "b"]
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.path("pids").join(format!("{n}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!("----- {n}.log -----\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn redis(&self, node: &str) -> redis::Connection {
        let address = self.config().node(node).unwrap().data;
        redis::Client::open(format!("redis://{address}/")).unwrap().get_connection().unwrap()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for node in ["a", "b"] {
            if let Ok(pid) = std::fs::read_to_string(self.path("pids").join(format!("{node}.pid"))) {
                if let Ok(pid) = pid.trim().parse::<libc::pid_t>() {
                    // SAFETY: kill(2) on a pid this session's shell started and recorded.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

fn get(connection: &mut redis::Connection, key: &str) -> Option<String> {
    connection.get(key).unwrap()
}

#[test]
fn backup_and_recovery_from_a_logical_mistake_run_as_written() {
    let session = Session::start("durable");
    let backups = session.path("backups");
    std::fs::create_dir(&backups).unwrap();
    let keys: Vec<String> = (0..200).map(|i| format!("customer:{i}")).collect();
    {
        let mut a = session.redis("a");
        for key in &keys[..100] {
            let () = a.set(key, format!("{key} v1")).unwrap();
        }
    }
    let out = session.run("backup", &[("BACKUPS", backups.display().to_string())]);
    assert!(out.contains("backup of b") && out.contains("verify: ok"), "{out}");
    // More good writes after the backup (the restore rolls forward over them), then the
    // mistake: a FLUSHDB, and the application writing on into the empty database.
    {
        let mut a = session.redis("a");
        for key in &keys[100..] {
            let () = a.set(key, format!("{key} v1")).unwrap();
        }
    }
    let mistake = hotpair::clock::now_ms();
    while hotpair::clock::now_ms() <= mistake {
        std::thread::yield_now();
    }
    {
        let mut a = session.redis("a");
        let () = redis::cmd("FLUSHDB").query(&mut a).unwrap();
        let () = a.set("written-after-the-flush", "kept").unwrap();
        let size: i64 = redis::cmd("DBSIZE").query(&mut a).unwrap();
        assert_eq!(size, 1);
    }
    let restored_parent = tempfile::tempdir().unwrap();
    let restored = restored_parent.path().join("restored");
    let nodes = format!("a=127.0.0.1:{},b=127.0.0.1:{}", free_control_port(), free_control_port());
    let out = session.run(
        "recover",
        &[
            ("BACKUPS", backups.display().to_string()),
            ("PRIMARY_DIR", session.config().node("a").unwrap().dir.display().to_string()),
            ("MISTAKE_TIME", hotpair::admin::backup::format_time(Some(mistake))),
            ("RESTORED", restored.display().to_string()),
            ("RESTORED_NODES", nodes),
        ],
    );
    assert!(out.contains("is the last record at or before") && out.contains("restored cluster"), "{out}");
    let restored_pair = Pair::start_existing(restored_parent, restored.join("pair.toml"));
    let mut r = restored_pair.redis("a");
    for key in &keys {
        assert_eq!(get(&mut r, key), Some(format!("{key} v1")), "{key} as of just before the mistake");
    }
    // Step 5: the destroyed keys back into the live pair.
    let keys_file = session.path("keys.txt");
    std::fs::write(&keys_file, keys.join("\n") + "\n").unwrap();
    session.run(
        "copy-back",
        &[
            ("KEYS_FILE", keys_file.display().to_string()),
            ("RESTORED_DATA", restored_pair.data_address("a").to_string()),
            ("LIVE_DATA", session.config().node("a").unwrap().data.to_string()),
        ],
    );
    let mut live = session.redis("a");
    for key in &keys {
        assert_eq!(get(&mut live, key), Some(format!("{key} v1")), "{key} put back");
    }
    assert_eq!(get(&mut live, "written-after-the-flush").as_deref(), Some("kept"));
    assert_eq!(get(&mut r, "written-after-the-flush"), None, "the restored pair is as of before the mistake");
}

#[test]
fn certificate_rotation_procedures_run_as_written() {
    let session = Session::start("durable");
    let config = session.config();
    let old_admin = std::fs::read(&config.tls.admin_cert).unwrap();
    let out = session.run("rotate-admin", &[]);
    assert!(out.contains("rotated the admin") && out.contains("peer b connected"), "{out}");
    assert_ne!(std::fs::read(&config.tls.admin_cert).unwrap(), old_admin);
    session.run("rotate-node", &[]);
    // b reconnects with its new certificate by itself; writes at `durable` need it.
    let () = session.redis("a").set("after-node-rotation", "1").expect("b follows again");
    let out = session.run("rotate-ca", &[]);
    assert!(out.contains("only the new CA") && out.contains("digests equal"), "{out}");
    let () = session.redis("a").set("after-ca-rotation", "1").expect("b follows with the new CA's certificate");
    // Durable on b when acknowledged; applied there a moment later.
    let mut b = session.redis("b");
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while get(&mut b, "after-ca-rotation").is_none() {
        assert!(std::time::Instant::now() < deadline, "b never applied the write made after the CA rotation");
        std::thread::sleep(common::POLL);
    }
}

#[test]
fn orphans_procedure_runs_as_written() {
    let session = Session::start("async");
    {
        let mut a = session.redis("a");
        let () = a.set("stock:42", "10").unwrap();
    }
    session.shell(
        "until hotpair switchover --dry-run >/dev/null 2>&1; do sleep 0.1; done
         hotpair replicate stop a",
        &[],
    );
    {
        let mut a = session.redis("a");
        let () = a.set("order:1001", "paid").unwrap();
        let () = a.set("stock:42", "9").unwrap();
    }
    let out = session.shell("stop_node a KILL; hotpair failover --to b; start_node a; hotpair rejoin a", &[]);
    assert!(out.contains("2 orphaned transaction(s)"), "{out}");
    let orphans = std::fs::read_dir(session.config().node("a").unwrap().dir.join("orphans"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = session.run("orphans", &[("ORPHANS", orphans.display().to_string())]);
    assert!(out.contains("would send") && out.contains("applied 2 transaction(s) as new writes on b"), "{out}");
    let mut b = session.redis("b");
    assert_eq!((get(&mut b, "order:1001"), get(&mut b, "stock:42")), (Some("paid".into()), Some("9".into())));
}

#[test]
fn upgrade_procedure_runs_as_written() {
    let session = Session::start("durable");
    let backups = session.path("backups");
    std::fs::create_dir(&backups).unwrap();
    {
        let mut a = session.redis("a");
        let () = a.set("before-upgrade", "1").unwrap();
    }
    let out = session.run("upgrade", &[("BACKUPS", backups.display().to_string())]);
    assert!(
        out.contains("switchover done") && out.contains("switchback done") && out.contains("full scans match"),
        "{out}"
    );
    assert!(backups.join("before-upgrade").join("manifest.json").is_file());
    let () = session.redis("a").set("after-upgrade", "1").expect("a is primary again and takes writes");
    assert_eq!(get(&mut session.redis("b"), "before-upgrade").as_deref(), Some("1"));
}

#[test]
fn primary_alone_procedure_runs_as_written() {
    // Both nodes killed at once, only a restarted: the forced failover gets writes going
    // (at `async`: no backup needed to acknowledge), and b back later follows a.
    let session = Session::start("async");
    let () = session.redis("a").set("before", "1").unwrap();
    session.shell("stop_node b KILL; stop_node a KILL; start_node a", &[]);
    let refused: redis::RedisResult<()> = session.redis("a").set("waiting", "1");
    assert!(refused.is_err(), "a restarted primary took a write before its peer's word");
    let out = session.run("primary-alone", &[]);
    assert!(out.contains("waits for b") && out.contains("--force"), "{out}");
    assert!(out.contains("is primary of epoch 2") && out.contains("hotpair rejoin b"), "{out}");
    let () = session.redis("a").set("after", "1").expect("a takes writes after the forced failover");
    let out = session.run("primary-alone-b-back", &[]);
    assert!(out.contains("digests equal"), "{out}");
    let mut b = session.redis("b");
    assert_eq!(get(&mut b, "before").as_deref(), Some("1"));
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while get(&mut b, "after").is_none() {
        assert!(std::time::Instant::now() < deadline, "b never applied the write a took alone");
        std::thread::sleep(common::POLL);
    }
    let refused: redis::RedisResult<()> = b.set("on-b", "1");
    assert!(refused.is_err(), "b took a write");
}

#[test]
fn reload_procedure_runs_as_written() {
    let session = Session::start("durable");
    // The admin's edit (on both hosts; here both nodes run the one file).
    let text = std::fs::read_to_string(&session.pair_file).unwrap();
    assert!(text.contains("sync = \"durable\""), "{text}");
    std::fs::write(&session.pair_file, text.replacen("sync = \"durable\"", "sync = \"async\"", 1)).unwrap();
    let out = session.run("reload", &[]);
    assert!(out.contains("reload done") && out.contains("both run"), "{out}");
    let status: serde_json::Value =
        serde_json::from_str(&session.shell("hotpair status --json", &[])).expect("status --json");
    for node in ["a", "b"] {
        assert_eq!(status["nodes"][node]["sync"], "async", "{status}");
    }
    let () = session.redis("a").set("after-reload", "1").expect("writes go on after the reload");
}
