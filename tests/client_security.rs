//! The data port's security on real nodes, through the clients people use: `AUTH` (Redis
//! `requirepass` semantics, named read-only and read-write users, `HELLO … AUTH`), wrong
//! passwords paced and logged once, TLS with the pair's CA for `redis-cli --tls` and redis-py,
//! optional client certificates. `redis-cli` (apt `redis-tools`) and redis-py (pip `redis`) are
//! installed by `.ci/run`; a test prints SKIPPED for a tool that is missing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Options, Pair, BACKUP, PRIMARY};
use hotpair::config::SyncLevel;

const USERS: &str = "# NAME RIGHTS PASSWORD\napp readwrite app pass with spaces\nreport readonly r3port\n";

fn secured(init_args: &'static [&'static str], replace: &'static [(&'static str, &'static str)]) -> Pair {
    let options = Options { init_args, replace, files: &[("clients.users", USERS)], ..Options::default() };
    Pair::start_with(SyncLevel::Durable, options)
}

/// Sends `request` (inline commands) and reads until `replies` CRLF-ended lines came back.
fn exchange(stream: &mut TcpStream, request: &str, replies: usize) -> String {
    stream.set_read_timeout(Some(common::REDIS_TIMEOUT)).expect("read timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.windows(2).filter(|w| w == b"\r\n").count() < replies {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => answer.push(byte[0]),
            Err(e) => panic!("reading after {request:?}: {e}; so far {:?}", String::from_utf8_lossy(&answer)),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn installed(tool: &str, probe: &[&str]) -> bool {
    let found = Command::new(tool).args(probe).output().is_ok_and(|out| out.status.success());
    if !found {
        println!("SKIPPED: {tool} {} does not run here (.ci/run installs it)", probe.join(" "));
    }
    found
}

fn redis_cli(pair: &Pair, args: &[&str]) -> (bool, String) {
    let port = pair.data_address(PRIMARY).port().to_string();
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port, "--no-auth-warning"])
        .args(args)
        .output()
        .expect("run redis-cli");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.trim().to_string())
}

fn python(script: &str, pair: &Pair) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PORT", pair.data_address(PRIMARY).port().to_string())
        .env("PASSWORD", pair.client_password().unwrap_or_default())
        .env("CA", &pair.config.tls.ca)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "redis-py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn auth_comes_first_and_read_only_users_cannot_write() {
    let pair = secured(&["--client-password"], &[("[clients]\n", "[clients]\nusers_file = \"clients.users\"\n")]);
    let password = pair.client_password().expect("init wrote a password");
    let mut raw = TcpStream::connect(pair.data_address(PRIMARY)).expect("connect");
    assert_eq!(
        exchange(&mut raw, "PING\r\nGET k\r\nFOO\r\n", 3),
        "-NOAUTH Authentication required.\r\n".repeat(3),
        "nothing but AUTH, HELLO and QUIT before AUTH"
    );
    assert_eq!(
        exchange(&mut raw, "AUTH nope\r\n", 1),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(exchange(&mut raw, "GET k\r\n", 1), "-NOAUTH Authentication required.\r\n");
    assert_eq!(exchange(&mut raw, &format!("AUTH {password}\r\nSET k v\r\nGET k\r\n"), 4), "+OK\r\n+OK\r\n$1\r\nv\r\n");

    let mut default = TcpStream::connect(pair.data_address(BACKUP)).expect("connect to the backup");
    assert_eq!(exchange(&mut default, &format!("AUTH default {password}\r\nPING\r\n"), 2), "+OK\r\n+PONG\r\n");

    let mut report = TcpStream::connect(pair.data_address(PRIMARY)).expect("connect");
    assert_eq!(
        exchange(&mut report, "AUTH report r3port\r\nGET k\r\nSET k w\r\n", 4),
        "+OK\r\n$1\r\nv\r\n-NOPERM User report has no permissions to run the 'set' command\r\n"
    );
    let mut app = TcpStream::connect(pair.data_address(PRIMARY)).expect("connect");
    let hello = exchange(&mut app, "HELLO 4 AUTH app x\r\n", 1);
    assert!(hello.starts_with("-NOPROTO"), "HELLO 4 is refused before its AUTH is looked at: {hello}");
    let hello = exchange(&mut app, "HELLO 3 AUTH app x\r\n", 1);
    assert!(hello.starts_with("-WRONGPASS"), "HELLO 3 with a wrong password: {hello}");
    // *14, then seven names and values as Redis sends them (`modules` an empty array): 26 lines.
    let hello = exchange(&mut app, "HELLO 2 AUTH app \"app pass with spaces\" SETNAME me\r\n", 26);
    assert!(hello.starts_with("*14\r\n$6\r\nserver\r\n") && hello.contains("proto\r\n:2\r\n"), "{hello}");
    assert!(hello.ends_with("modules\r\n*0\r\n"), "{hello}");
    assert_eq!(exchange(&mut app, "SET k w\r\nCLIENT GETNAME\r\n", 3), "+OK\r\n$2\r\nme\r\n");

    // The redis crate with the password in the URL (the harness's own client).
    let mut con = pair.redis(PRIMARY);
    assert_eq!(redis::cmd("GET").arg("k").query::<String>(&mut con).expect("GET"), "w");

    if installed("redis-cli", &["--version"]) {
        let (ok, text) = redis_cli(&pair, &["-a", &password, "GET", "k"]);
        assert!(ok && text == "w", "redis-cli -a: {text}");
        let (_, text) = redis_cli(&pair, &["GET", "k"]);
        assert!(text.contains("NOAUTH"), "redis-cli without -a: {text}");
    }
    if installed("python3", &["-c", "import redis"]) {
        let script = "import os, redis\n\
            r = redis.Redis(port=int(os.environ['PORT']), password=os.environ['PASSWORD'])\n\
            r.set('py', 'yes')\n\
            print(r.get('py').decode())\n\
            try:\n    redis.Redis(port=int(os.environ['PORT'])).get('py')\n    print('unauthenticated read!')\n\
            except redis.exceptions.AuthenticationError:\n    print('refused')\n";
        assert_eq!(python(script, &pair), "yes\nrefused");
    }
}

#[test]
fn wrong_passwords_are_paced_per_source_and_logged_once() {
    let pair = secured(&["--client-password"], &[]);
    let password = pair.client_password().expect("init wrote a password");
    let mut raw = TcpStream::connect(pair.data_address(PRIMARY)).expect("connect");
    let started = Instant::now();
    for guess in 0..5 {
        let answer = exchange(&mut raw, &format!("AUTH guess{guess}\r\n"), 1);
        assert!(answer.starts_with("-WRONGPASS"), "{answer}");
    }
    // 100 + 200 + 400 + 800 ms of backoff between the five guesses (AUTH_FIRST_BACKOFF doubling).
    let guessing = started.elapsed();
    assert!(guessing >= Duration::from_millis(1400), "five wrong passwords took only {guessing:?}");
    // Another connection from the same address waits its turn too, then gets in.
    let mut other = TcpStream::connect(pair.data_address(PRIMARY)).expect("connect");
    let waited = Instant::now();
    assert_eq!(exchange(&mut other, &format!("AUTH {password}\r\nPING\r\n"), 2), "+OK\r\n+PONG\r\n");
    assert!(waited.elapsed() >= Duration::from_millis(500), "the right password came in after {:?}", waited.elapsed());
    let lines = pair.log(PRIMARY).lines().filter(|l| l.contains("wrong password")).count();
    assert_eq!(lines, 1, "five wrong passwords from one address make one log line");
}

fn ca(pair: &Pair) -> String {
    pair.config.tls.ca.display().to_string()
}

fn tls_dir(pair: &Pair, file: &str) -> String {
    Path::new(&pair.config.tls.ca).with_file_name(file).display().to_string()
}

#[test]
fn a_tls_data_port_serves_redis_cli_and_redis_py() {
    let pair = secured(&["--client-password", "--client-tls"], &[]);
    let password = pair.client_password().expect("init wrote a password");
    // Plain bytes on a TLS port get no RESP answer.
    let mut raw = TcpStream::connect(pair.data_address(PRIMARY)).expect("connect");
    raw.set_read_timeout(Some(common::REDIS_TIMEOUT)).expect("read timeout");
    raw.write_all(b"PING\r\n").expect("send");
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"+PONG"), "a TLS port answered plain text");

    if installed("redis-cli", &["--tls", "--version"]) {
        let (ok, text) = redis_cli(&pair, &["--tls", "--cacert", &ca(&pair), "-a", &password, "SET", "t", "1"]);
        assert!(ok && text == "OK", "redis-cli --tls: {text}");
        let (_, text) = redis_cli(&pair, &["--tls", "--cacert", &ca(&pair), "GET", "t"]);
        assert!(text.contains("NOAUTH"), "TLS without AUTH: {text}");
        let (_, text) = redis_cli(&pair, &["-a", &password, "GET", "t"]);
        assert_ne!(text, "1", "a plain client read over the TLS port");
    }
    if installed("python3", &["-c", "import redis"]) {
        // redis-py checks the host name: the data certificate is valid for 127.0.0.1.
        let script = "import os, redis\n\
            r = redis.Redis(host='127.0.0.1', port=int(os.environ['PORT']), password=os.environ['PASSWORD'], \
            ssl=True, ssl_ca_certs=os.environ['CA'], protocol=2)\n\
            r.set('py', 'tls')\n\
            print(r.get('py').decode())\n";
        assert_eq!(python(script, &pair), "tls");
    }
}

#[test]
fn client_certificates_are_required_when_tls_auth_clients_says_so() {
    let pair = secured(&["--client-tls"], &[("tls_auth_clients = \"no\"", "tls_auth_clients = \"yes\"")]);
    if !installed("redis-cli", &["--tls", "--version"]) {
        return;
    }
    let (cert, key) = (tls_dir(&pair, "app.client.pem"), tls_dir(&pair, "app.client.key"));
    let (ok, text) = redis_cli(&pair, &["--tls", "--cacert", &ca(&pair), "--cert", &cert, "--key", &key, "PING"]);
    assert!(ok && text == "PONG", "with the applications' certificate: {text}");
    let (_, text) = redis_cli(&pair, &["--tls", "--cacert", &ca(&pair), "PING"]);
    assert!(!text.contains("PONG"), "without a client certificate: {text}");
}

#[test]
fn the_sentinel_port_names_the_primary_without_auth_and_checks_an_auth_it_is_sent() {
    // Clients configured to send the data-port password to their Sentinels too must work; the
    // port itself only says where the primary is, so it asks nothing first.
    let pair = secured(&["--client-password"], &[]);
    let password = pair.client_password().expect("init wrote a password");
    let sentinel = pair.config.node(PRIMARY).unwrap().sentinel;
    let mut raw = TcpStream::connect(sentinel).expect("connect to the Sentinel port");
    let data_port = pair.data_address(PRIMARY).port().to_string();
    let asked = exchange(&mut raw, "SENTINEL get-master-addr-by-name hotpair\r\n", 5);
    assert!(asked.contains("127.0.0.1") && asked.contains(&data_port), "{asked}");
    assert_eq!(
        exchange(&mut raw, "AUTH nope\r\n", 1),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(exchange(&mut raw, &format!("AUTH {password}\r\nAUTH default {password}\r\n"), 2), "+OK\r\n+OK\r\n");
}

/// `hotpair proxy --listen ADDRESS EXTRA…` for `pair`, killed when dropped.
struct ProxyProcess(std::process::Child);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proxy_command(pair: &Pair, address: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hotpair"));
    command.arg("--pair").arg(&pair.pair_file).args(["proxy", "--listen", address]).args(extra);
    command
}

#[test]
fn the_proxy_presents_the_applications_certificate_never_the_admins() {
    // Data ports that require client certificates: the proxy presents tls/app.client.pem (a
    // certificate that can do nothing but talk to data ports), found beside the CA or given
    // with --client-cert; without one it refuses to start saying what to pass. The admin's
    // certificate — which can fail the pair over — is never needed on the proxy's host.
    let pair = secured(&["--client-tls"], &[("tls_auth_clients = \"no\"", "tls_auth_clients = \"yes\"")]);
    let moved = pair.dir().join("elsewhere");
    std::fs::create_dir(&moved).expect("mkdir");
    for file in ["app.client.pem", "app.client.key"] {
        std::fs::rename(tls_dir(&pair, file), moved.join(file)).expect("move the applications' certificate away");
    }
    let address = format!("127.0.0.1:{}", common::free_control_port());
    let out = proxy_command(&pair, &address, &[]).output().expect("run hotpair proxy");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("--client-cert") && said.contains("tls_auth_clients"), "{said}");

    let (cert, key) = (moved.join("app.client.pem"), moved.join("app.client.key"));
    let args = ["--client-cert", cert.to_str().unwrap(), "--client-key", key.to_str().unwrap()];
    let _proxy = ProxyProcess(
        proxy_command(&pair, &address, &args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn hotpair proxy"),
    );
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        let written = redis::Client::open(format!("redis://{address}/"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("SET").arg("via-proxy").arg("app-cert").query::<()>(&mut c));
        if written.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no write through the proxy within {:?}: {written:?}", common::DEADLINE);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut again = redis::Client::open(format!("redis://{address}/"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("a second connection through the proxy");
    let value: String = redis::cmd("GET").arg("via-proxy").query(&mut again).expect("GET through the proxy");
    assert_eq!(value, "app-cert");
}
