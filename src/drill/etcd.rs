//! A throwaway single-member etcd on 127.0.0.1, for drills and tests of the witness.
//!
//! ## Job
//! [`LocalEtcd::start`] spawns the `etcd` executable (`$HOTPAIR_ETCD`, else `etcd` on `PATH`;
//! Debian's package `etcd-server`) with its data directory inside a directory the caller owns,
//! on two free ports below the ephemeral range (client P, peer P + 1), and waits against a
//! deadline until it answers a read. It can be killed (SIGKILL), frozen (SIGSTOP) and resumed,
//! and restarted on the same ports and data, which is what the witness drills do to it.
//!
//! [`LocalEtcd::start_tls`] starts it serving `https` only, requiring a client certificate
//! (`--client-cert-auth`), with a throwaway CA, server and client certificate made by
//! [`EtcdCerts::make`] in the caller's directory: what a production witness should look like.
//!
//! ## Invariants
//! - Never listens on anything but 127.0.0.1.
//! - Dropping a [`LocalEtcd`] kills the process (after SIGCONT, so a frozen one dies too).
//! - Started with TLS, it answers nothing in clear text and nothing to a client without a
//!   certificate of its CA.
//! - The server certificate carries `clientAuth` as well as `serverAuth`: etcd 3.4's JSON gateway
//!   dials etcd's own gRPC port with the server certificate as its client certificate, and with
//!   `--client-cert-auth` a certificate without `clientAuth` makes every JSON call fail.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DrillError;
use crate::witness::{EtcdClient, EtcdTls};

/// Environment variable naming the etcd executable to run.
pub const ETCD_ENV: &str = "HOTPAIR_ETCD";
/// Bound on waiting for etcd to answer after a start.
const START_DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);

pub struct LocalEtcd {
    exe: PathBuf,
    dir: PathBuf,
    client_port: u16,
    child: Option<Child>,
    frozen: bool,
    /// `Some`: etcd serves https and requires a client certificate.
    certs: Option<EtcdCerts>,
}

/// A throwaway CA, an etcd server certificate (for 127.0.0.1 and localhost) and a client
/// certificate it signed, as PEM files.
#[derive(Debug, Clone)]
pub struct EtcdCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdCerts {
    /// Makes the CA and both certificates in `dir` (created if needed): `ca.pem`, `etcd.pem`,
    /// `etcd.key`, `client.pem`, `client.key`. Each call makes a new CA.
    pub fn make(dir: &Path) -> Result<EtcdCerts, DrillError> {
        Self::make_with(dir, true)
    }

    /// As [`EtcdCerts::make`]; `server_client_auth: false` leaves `clientAuth` out of the server
    /// certificate, the mistake that breaks etcd's JSON gateway under `--client-cert-auth`.
    pub fn make_with(dir: &Path, server_client_auth: bool) -> Result<EtcdCerts, DrillError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| DrillError::Io { context: format!("creating {}", dir.display()), source })?;
        let made = make_certs(server_client_auth)
            .map_err(|e| DrillError::Setup(format!("making etcd's test certificates: {e}")))?;
        let certs = EtcdCerts {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("etcd.pem"),
            server_key: dir.join("etcd.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        write_file(&certs.ca, &made.ca)?;
        write_file(&certs.server_cert, &made.server.0)?;
        write_file(&certs.server_key, &made.server.1)?;
        write_file(&certs.client_cert, &made.client.0)?;
        write_file(&certs.client_key, &made.client.1)?;
        Ok(certs)
    }

    /// What a client of this etcd needs: the CA and the client certificate and key.
    pub fn client_tls(&self) -> EtcdTls {
        EtcdTls { ca: Some(self.ca.clone()), cert: Some(self.client_cert.clone()), key: Some(self.client_key.clone()) }
    }
}

/// PEM texts: the CA certificate, then (certificate, key) of the server and of the client.
struct MadeCerts {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn make_certs(server_client_auth: bool) -> Result<MadeCerts, rcgen::Error> {
    use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyPair};
    let today = crate::admin::init::days_since_epoch();
    let ca_key = KeyPair::generate()?;
    // A name of its own: another CA of the same name would be an issuer whose signature fails
    // (rustls: BadSignature), not an unknown one.
    let name = format!("hotpair test etcd CA {}", uuid::Uuid::new_v4());
    let ca = crate::admin::init::ca_certificate(&name, &ca_key, today)?;
    let leaf = |names: Vec<String>, usages: Vec<Eku>| -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        // rcgen makes a name that parses as an IP address an IP SAN, which is what a client
        // dialling https://127.0.0.1 checks.
        let mut params = rcgen::CertificateParams::new(names.clone())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, names[0].clone());
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let server_usages = if server_client_auth { vec![Eku::ServerAuth, Eku::ClientAuth] } else { vec![Eku::ServerAuth] };
    let server = leaf(vec!["127.0.0.1".into(), "localhost".into()], server_usages)?;
    let client = leaf(vec!["hotpair-witness-client".into()], vec![Eku::ClientAuth])?;
    Ok(MadeCerts { ca: ca.pem(), server, client })
}

fn write_file(path: &Path, text: &str) -> Result<(), DrillError> {
    let io = |source| DrillError::Io { context: format!("writing {}", path.display()), source };
    let mut file = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

impl LocalEtcd {
    /// The etcd executable this machine would run, if there is one.
    pub fn executable() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(ETCD_ENV) {
            return Some(PathBuf::from(path));
        }
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| Path::new(dir).join("etcd"))
            .find(|candidate| candidate.is_file())
    }

    /// Starts etcd with its data and log under `dir` (created if needed).
    pub async fn start(dir: &Path) -> Result<LocalEtcd, DrillError> {
        Self::start_with(dir, None).await
    }

    /// Starts etcd serving https only and requiring a client certificate, with certificates
    /// made by [`EtcdCerts::make`] in `dir/tls` ([`LocalEtcd::certs`]).
    pub async fn start_tls(dir: &Path) -> Result<LocalEtcd, DrillError> {
        let certs = EtcdCerts::make(&dir.join("tls"))?;
        Self::start_with(dir, Some(certs)).await
    }

    /// Starts etcd serving https with `certs` and returns once it listens, without waiting for
    /// it to answer: for certificates it may not be able to answer with.
    pub async fn start_tls_unchecked(dir: &Path, certs: EtcdCerts) -> Result<LocalEtcd, DrillError> {
        let mut etcd = Self::prepare(dir, Some(certs))?;
        etcd.spawn()?;
        etcd.wait_listening().await?;
        Ok(etcd)
    }

    async fn start_with(dir: &Path, certs: Option<EtcdCerts>) -> Result<LocalEtcd, DrillError> {
        let mut etcd = Self::prepare(dir, certs)?;
        etcd.spawn()?;
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    fn prepare(dir: &Path, certs: Option<EtcdCerts>) -> Result<LocalEtcd, DrillError> {
        let exe = Self::executable().ok_or_else(|| {
            DrillError::Setup(format!(
                "no etcd executable: install Debian's `etcd-server` package or set {ETCD_ENV} to the etcd binary"
            ))
        })?;
        std::fs::create_dir_all(dir)
            .map_err(|source| DrillError::Io { context: format!("creating {}", dir.display()), source })?;
        let client_port = super::pair::free_control_port()?;
        Ok(LocalEtcd { exe, dir: dir.to_path_buf(), client_port, child: None, frozen: false, certs })
    }

    /// The client URL, as a `[witness] etcd` entry takes it.
    pub fn endpoint(&self) -> String {
        let scheme = if self.certs.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The certificates of an etcd started with [`LocalEtcd::start_tls`].
    pub fn certs(&self) -> Option<&EtcdCerts> {
        self.certs.as_ref()
    }

    /// What a client needs to talk to this etcd (nothing for plain http).
    pub fn client_tls(&self) -> EtcdTls {
        self.certs.as_ref().map(EtcdCerts::client_tls).unwrap_or_default()
    }

    /// The client port's address (for a proxy in front of it).
    pub fn client_address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// SIGKILL, as a crashed witness host.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.frozen {
                signal(&child, libc::SIGCONT);
                self.frozen = false;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: etcd holds its sockets but answers nothing.
    pub fn freeze(&mut self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGSTOP);
            self.frozen = true;
        }
    }

    /// SIGCONT after [`LocalEtcd::freeze`].
    pub fn resume(&mut self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGCONT);
            self.frozen = false;
        }
    }

    /// Starts etcd again (after [`LocalEtcd::kill`]) on the same ports and data.
    pub async fn restart(&mut self) -> Result<(), DrillError> {
        self.kill();
        self.spawn()?;
        self.wait_ready().await
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) -> Result<(), DrillError> {
        let log_path = self.dir.join("etcd.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| DrillError::Io { context: format!("opening {}", log_path.display()), source })?;
        let err = log.try_clone().map_err(|source| DrillError::Io { context: "etcd log".into(), source })?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.client_port + 1);
        let mut command = Command::new(&self.exe);
        if let Some(certs) = &self.certs {
            command
                .arg("--cert-file")
                .arg(&certs.server_cert)
                .arg("--key-file")
                .arg(&certs.server_key)
                .arg("--trusted-ca-file")
                .arg(&certs.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg("witness")
            .arg("--data-dir")
            .arg(self.dir.join("etcd-data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("witness={peer}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|source| DrillError::Io { context: format!("starting {}", self.exe.display()), source })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the client port accepts connections.
    async fn wait_listening(&mut self) -> Result<(), DrillError> {
        let deadline = Instant::now() + START_DEADLINE;
        while tokio::net::TcpStream::connect(self.client_address()).await.is_err() {
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(DrillError::Setup(format!(
                    "etcd did not listen within {START_DEADLINE:?}; see {}",
                    self.dir.join("etcd.log").display()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    fn check_alive(&mut self) -> Result<(), DrillError> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(DrillError::Setup(format!(
                    "etcd exited at start ({status}); see {}",
                    self.dir.join("etcd.log").display()
                )));
            }
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), DrillError> {
        let client = EtcdClient::new(&[self.endpoint()], &self.client_tls(), Duration::from_millis(500))
            .map_err(|e| DrillError::Setup(e.to_string()))?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if client.get(b"/hotpair-drill-ready").await.is_ok() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(DrillError::Setup(format!(
                    "etcd did not answer within {START_DEADLINE:?}; see {}",
                    self.dir.join("etcd.log").display()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) with the pid of a child we have not reaped; no memory is shared.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}
