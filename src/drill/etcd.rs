//! A throwaway single-member etcd on 127.0.0.1, for drills and tests of the witness.
//!
//! ## Job
//! [`LocalEtcd::start`] spawns the `etcd` executable (`$HOTPAIR_ETCD`, else `etcd` on `PATH`;
//! Debian's package `etcd-server`) with its data directory inside a directory the caller owns,
//! on two free ports below the ephemeral range (client P, peer P + 1), and waits against a
//! deadline until it answers a read. It can be killed (SIGKILL), frozen (SIGSTOP) and resumed,
//! and restarted on the same ports and data, which is what the witness drills do to it.
//!
//! ## Invariants
//! - Never listens on anything but 127.0.0.1.
//! - Dropping a [`LocalEtcd`] kills the process (after SIGCONT, so a frozen one dies too).

use std::fs::OpenOptions;
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
        let exe = Self::executable().ok_or_else(|| {
            DrillError::Setup(format!(
                "no etcd executable: install Debian's `etcd-server` package or set {ETCD_ENV} to the etcd binary"
            ))
        })?;
        std::fs::create_dir_all(dir)
            .map_err(|source| DrillError::Io { context: format!("creating {}", dir.display()), source })?;
        let client_port = super::pair::free_control_port()?;
        let mut etcd = LocalEtcd { exe, dir: dir.to_path_buf(), client_port, child: None, frozen: false };
        etcd.spawn()?;
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    /// The client URL, as a `[witness] etcd` entry takes it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
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
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.client_port + 1);
        let child = Command::new(&self.exe)
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

    async fn wait_ready(&mut self) -> Result<(), DrillError> {
        let client = EtcdClient::new(&[self.endpoint()], &EtcdTls::default(), Duration::from_millis(500))
            .map_err(|e| DrillError::Setup(e.to_string()))?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if client.get(b"/hotpair-drill-ready").await.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(DrillError::Setup(format!(
                        "etcd exited at start ({status}); see {}",
                        self.dir.join("etcd.log").display()
                    )));
                }
            }
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
