//! `hotpair init`: creates a new pair — its pair file, its private CA and certificates, and one
//! data directory per node.
//!
//! ## Job
//! `hotpair init --dir DIR [--nodes a=127.0.0.1:7401,b=127.0.0.1:7501] [--sync durable]` writes:
//! - `DIR/tls/ca.pem` and `DIR/tls/ca.key`: a private CA made for this cluster alone;
//! - `DIR/tls/<node>.pem|.key` for each node and `DIR/tls/admin.pem|.key` for the admin, each
//!   valid for server and client authentication, with its identity in a DNS SAN
//!   (`<node>.<cluster>.hotpair`, `admin.<cluster>.hotpair`; see `tls`);
//! - `DIR/<node>/meta.json` for each node: a fresh incarnation at epoch 1, history
//!   `[(1, lsn 1, <first node>)]`, the first node `primary` and the second `backup`;
//! - `DIR/pair.toml`, last, with a comment header explaining every key, and paths relative to
//!   `DIR` so the directory can be moved as a whole.
//! - with `--client-password`: `DIR/clients.pass` (a random password, mode 0600) and
//!   `[clients] password_file`; with `--client-tls`: `DIR/tls/<node>.data.pem|key` (a data-port
//!   certificate valid for the node's data address, server authentication only),
//!   `DIR/tls/app.client.pem|key` (for applications, client authentication only) and
//!   `[clients] tls = true` (see `docs/security.md`).
//!
//! ## Invariants
//! - **Never overwrites.** If any of `pair.toml`, `tls/` or a node directory already exists, init
//!   refuses before writing anything (exit 1). Directories are made with `create_dir` and files
//!   with `O_EXCL`, so even a concurrent init cannot clobber a file: one of them fails.
//! - **All or nothing.** On any failure part-way, everything this run created is removed again,
//!   so the refusal "nothing changed" (exit 1) stays true and the command can simply be re-run.
//!   `pair.toml` is written last: its presence means init completed.
//! - **Private keys are mode 0600 from their first byte** (created with that mode, then set
//!   explicitly so a strict umask cannot make them unreadable to their owner), and fsynced.
//! - The pair file is validated with the same code that `PairConfig::load` uses *before* anything
//!   is written, so init can never produce a file that other commands refuse.
//!
//! ## Caveats
//! - `tls/ca.key` can mint identities for this cluster: keep it offline once the pair is set
//!   up. Nothing in a running pair needs it.
//! - Certificates are valid from yesterday (clock skew) for ten years (the CA for twenty);
//!   `hotpair certs rotate` (`crate::admin::certs`) renews them with `ca.key`.
//! - The node names become directory names in `DIR` and DNS labels; `tls` is reserved.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use uuid::Uuid;

use crate::config::{addresses_clash, check_node_name, BadValue, ConfigError, PairConfig, SyncLevel};
use crate::storage::journal::HistoryEntry;
use crate::storage::meta::{MetaError, NodeMeta, Role};
use crate::tls::{admin_identity, node_identity};

/// `--nodes` when none is given.
pub const DEFAULT_NODES: &str = "a=127.0.0.1:7401,b=127.0.0.1:7501";
/// The directory (under `--dir`) holding the CA and all certificates and keys.
pub const TLS_DIR: &str = "tls";
pub const PAIR_FILE: &str = "pair.toml";
const LEAF_YEARS: i32 = 10;
const CA_YEARS: i32 = 20;

/// One node as given to `--nodes`: `NAME=CONTROL_ADDRESS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub control: SocketAddr,
}

impl NodeSpec {
    /// The data (RESP) port: control port + 1, checked to exist when parsed.
    pub fn data(&self) -> SocketAddr {
        SocketAddr::new(self.control.ip(), self.control.port().saturating_add(1))
    }

    /// The Sentinel-compatible discovery port: control port + 2, checked to exist when parsed.
    pub fn sentinel(&self) -> SocketAddr {
        SocketAddr::new(self.control.ip(), self.control.port().saturating_add(2))
    }
}

/// The value of `--nodes`: exactly two nodes, the first one the preferred primary. Parsing
/// checks everything that can be checked without the disk (names, addresses, clashes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpecs(pub Vec<NodeSpec>);

impl FromStr for NodeSpecs {
    type Err = BadValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "write two nodes as NAME=IP:PORT,NAME=IP:PORT (e.g. a=127.0.0.1:7401,b=127.0.0.1:7501)";
        let mut nodes = Vec::new();
        for part in s.split(',').map(str::trim) {
            let (name, addr) = part.split_once('=').ok_or_else(|| BadValue(format!("{part:?} has no `=`; {usage}")))?;
            let name = name.trim();
            check_node_name(name)?;
            if name == TLS_DIR {
                return Err(BadValue(format!("node name {TLS_DIR:?} is reserved for the certificate directory")));
            }
            if nodes.iter().any(|n: &NodeSpec| n.name == name) {
                return Err(BadValue(format!("node name {name:?} is given twice; the two nodes need different names")));
            }
            let control: SocketAddr = addr
                .trim()
                .parse()
                .map_err(|_| BadValue(format!("{addr:?} (node {name}) is not an IP:port address; {usage}")))?;
            if control.port() == 0 || control.port() > u16::MAX - 2 {
                return Err(BadValue(format!(
                    "node {name}'s control port must be 1..=65533 (its data port is the control port + 1, its \
                     Sentinel port + 2)"
                )));
            }
            nodes.push(NodeSpec { name: name.to_string(), control });
        }
        if nodes.len() != 2 {
            return Err(BadValue(format!("{} node(s) given; a pair has exactly two; {usage}", nodes.len())));
        }
        let addresses: Vec<(String, SocketAddr)> = nodes
            .iter()
            .flat_map(|n| {
                [
                    (format!("{} control", n.name), n.control),
                    (format!("{} data", n.name), n.data()),
                    (format!("{} sentinel", n.name), n.sentinel()),
                ]
            })
            .collect();
        for (i, (what_a, a)) in addresses.iter().enumerate() {
            for (what_b, b) in &addresses[i + 1..] {
                if addresses_clash(*a, *b) {
                    return Err(BadValue(format!(
                        "{what_b} address {b} clashes with {what_a} address {a} (a node's data port is its \
                         control port + 1, its Sentinel port + 2); pick control ports at least 3 apart"
                    )));
                }
            }
        }
        Ok(NodeSpecs(nodes))
    }
}

impl std::fmt::Display for NodeSpecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|n| format!("{}={}", n.name, n.control)).collect();
        f.write_str(&parts.join(","))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("bad --nodes: {0}")]
    BadNodes(#[from] BadValue),
    #[error(
        "refusing to initialise {}: {} already exist(s); init never overwrites a pair — choose another --dir, \
         or remove them if that pair is no longer wanted",
        dir.display(), found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Exists { dir: PathBuf, found: Vec<PathBuf> },
    #[error("cannot create {}: {source} (everything this run created was removed)", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot make the {what}: {source} (everything this run created was removed)")]
    Certificate { what: String, source: rcgen::Error },
    #[error("cannot write node metadata: {0} (everything this run created was removed)")]
    Meta(#[from] MetaError),
    #[error("internal error: the pair file init generated does not validate: {0}")]
    Generated(#[from] ConfigError),
    #[error(
        "refusing to rebuild {node}: {} is not empty ({}); reinit is for a data directory that was lost — \
         move what is left aside first",
        dir.display(), found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotEmpty { node: String, dir: PathBuf, found: Vec<PathBuf> },
}

impl InitError {
    /// True when the command line was at fault (exit 2), not the directory (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, InitError::BadNodes(_))
    }
}

/// What else `init` sets up beyond the pair itself: the data port's security (`[clients]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InitOptions {
    /// Write `clients.pass` (a random password, mode 0600) and require `AUTH` on the data port.
    pub client_password: bool,
    /// Make a data-port certificate per node (`tls/<node>.data.pem|key`, valid for its data
    /// address) and one for applications (`tls/app.client.pem|key`), and turn TLS on.
    pub client_tls: bool,
}

/// The password file `init --client-password` writes, relative to the pair's directory.
pub const CLIENT_PASSWORD_FILE: &str = "clients.pass";
/// The applications' client certificate and key `init --client-tls` writes, in `tls/`.
pub const APP_CLIENT_CERT: &str = "app.client.pem";
pub const APP_CLIENT_KEY: &str = "app.client.key";

/// What `init` made, for the CLI to print.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub pair: PairConfig,
    /// Every file written, in the order written.
    pub files: Vec<PathBuf>,
    /// When the node and admin certificates expire (UTC, `YYYY-MM-DD 00:00`).
    pub valid_until: String,
}

impl InitReport {
    /// Human-readable summary: what was created and what to do next.
    pub fn text(&self) -> String {
        let pair = &self.pair;
        let dir = pair.path.parent().unwrap_or(Path::new("/"));
        let mut out = String::new();
        let _ = writeln!(out, "created pair {} in {}", pair.cluster, dir.display());
        let _ = writeln!(out, "  pair file  {}", pair.path.display());
        let _ = writeln!(
            out,
            "  CA         {} (its key ca.key can mint identities: keep it offline)",
            pair.tls.ca.display()
        );
        for (i, node) in pair.nodes.iter().enumerate() {
            let role = if i == 0 { "primary" } else { "backup" };
            let _ = writeln!(
                out,
                "  node {:<5} {role:<8} control {} (mutual TLS)  data {} (RESP)  dir {}",
                node.name,
                node.control,
                node.data,
                node.dir.display()
            );
        }
        let _ = writeln!(out, "  admin      {}", pair.tls.admin_cert.display());
        let _ = writeln!(out, "  sync       {}", pair.sync);
        if let Some(password_file) = &pair.clients.password_file {
            let _ = writeln!(
                out,
                "  clients    AUTH required; password in {} (redis-cli -a \"$(cat {})\")",
                password_file.display(),
                password_file.display()
            );
        }
        if pair.clients.tls {
            let _ = writeln!(
                out,
                "  clients    TLS on the data ports (redis-cli --tls --cacert {}); applications' certificate {}",
                pair.tls.ca.display(),
                dir.join(TLS_DIR).join(APP_CLIENT_CERT).display()
            );
        }
        let _ = writeln!(out, "certificates expire {} UTC", self.valid_until);
        for node in &pair.nodes {
            let _ = writeln!(out, "next: hotpair run {} --pair {}", node.name, pair.path.display());
        }
        out
    }
}

/// `hotpair reinit NODE`: a new, empty data directory for a node of an existing pair whose own
/// was lost (disk replaced). The node gets a new incarnation, no history and the backup role; it
/// has no data, so it must be rebuilt from its peer (`hotpair rejoin NODE --allow-full-copy`,
/// which also makes the peer accept the new incarnation). Refuses unless the directory is
/// missing or empty: this must never replace a node that still has its data.
pub fn reinit(pair: &PairConfig, node: &str) -> Result<String, crate::Error> {
    let config = pair.node(node)?;
    let dir = &config.dir;
    refuse_unless_empty(node, dir)?;
    crate::storage::datadir::create_private_dir(dir).map_err(|source| InitError::Io { path: dir.clone(), source })?;
    crate::storage::datadir::check_permissions(dir, node)?;
    // Held while the directory is made: a node started meanwhile waits on it (and refuses).
    let _lock = crate::storage::datadir::DataDirLock::acquire(dir, node)?;
    refuse_unless_empty(node, dir)?;
    let meta = NodeMeta::new(pair.cluster, node, Role::Backup, 0, Vec::new());
    meta.create(dir)?;
    sync_dir(dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(format!(
        "made an empty data directory for {node} in {} (incarnation {})\nnext: hotpair run {node}, then hotpair rejoin {node} --allow-full-copy\n",
        dir.display(),
        meta.incarnation
    ))
}

/// Refuses a node directory that holds anything but its lock file (missing is empty).
fn refuse_unless_empty(node: &str, dir: &Path) -> Result<(), InitError> {
    let found: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|path| !path.ends_with(crate::storage::datadir::LOCK_FILE))
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(InitError::Io { path: dir.to_path_buf(), source }),
    };
    if !found.is_empty() {
        return Err(InitError::NotEmpty { node: node.to_string(), dir: dir.to_path_buf(), found });
    }
    Ok(())
}

/// Creates a new pair in `dir` (made if missing). Refuses, changing nothing, if `dir` already
/// holds a pair file, a `tls/` directory or a directory named like one of the nodes.
pub fn init(dir: &Path, nodes: &NodeSpecs, sync: SyncLevel) -> Result<InitReport, InitError> {
    init_with(dir, nodes, sync, InitOptions::default())
}

/// [`init`], with the data port's security as `options` says.
pub fn init_with(
    dir: &Path,
    nodes: &NodeSpecs,
    sync: SyncLevel,
    options: InitOptions,
) -> Result<InitReport, InitError> {
    // Re-check what FromStr checked: the library is callable without the CLI.
    let nodes = nodes.to_string().parse::<NodeSpecs>()?;
    let dir = std::path::absolute(dir).map_err(|source| InitError::Io { path: dir.to_path_buf(), source })?;
    let pair_path = dir.join(PAIR_FILE);
    let tls_dir = dir.join(TLS_DIR);

    let mut targets = vec![pair_path.clone(), tls_dir.clone()];
    if options.client_password {
        targets.push(dir.join(CLIENT_PASSWORD_FILE));
    }
    targets.extend(nodes.0.iter().map(|n| dir.join(&n.name)));
    let found: Vec<PathBuf> = targets.into_iter().filter(|p| p.symlink_metadata().is_ok()).collect();
    if !found.is_empty() {
        return Err(InitError::Exists { dir, found });
    }

    let cluster = Uuid::new_v4();
    let text = pair_file_text(cluster, sync, &nodes, options);
    let pair = PairConfig::from_toml_str(&text, &pair_path)?;

    let mut created = Created::default();
    match write_everything(&dir, &pair, &text, options, &mut created) {
        Ok(valid_until) => Ok(InitReport { pair, files: created.files, valid_until }),
        Err(err) => {
            created.undo();
            Err(err)
        }
    }
}

/// Paths this run created, so a failure can remove exactly those.
#[derive(Default)]
struct Created {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl Created {
    fn undo(&self) {
        for file in self.files.iter().rev() {
            let _ = std::fs::remove_file(file);
        }
        for dir in self.dirs.iter().rev() {
            // Only directories this run made; anything left in them was put there by this run.
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Creates `path` (its parent must exist) with mode 0700: node data directories and `tls/`.
    fn dir(&mut self, path: &Path) -> Result<(), InitError> {
        let made = std::fs::DirBuilder::new().mode(crate::storage::datadir::PRIVATE_DIR_MODE).create(path);
        match made {
            Ok(()) => {
                self.dirs.push(path.to_path_buf());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
                Err(InitError::Exists { dir, found: vec![path.to_path_buf()] })
            }
            Err(source) => Err(InitError::Io { path: path.to_path_buf(), source }),
        }
    }

    /// Creates `path` exclusively with `mode`, writes and fsyncs it.
    fn file(&mut self, path: &Path, contents: &[u8], mode: u32) -> Result<(), InitError> {
        let io = |source| InitError::Io { path: path.to_path_buf(), source };
        let mut file = match OpenOptions::new().write(true).create_new(true).mode(mode).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
                return Err(InitError::Exists { dir, found: vec![path.to_path_buf()] });
            }
            Err(source) => return Err(io(source)),
        };
        self.files.push(path.to_path_buf());
        file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io)?;
        file.write_all(contents).map_err(io)?;
        file.sync_all().map_err(io)
    }
}

fn write_everything(
    dir: &Path,
    pair: &PairConfig,
    text: &str,
    options: InitOptions,
    created: &mut Created,
) -> Result<String, InitError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|source| InitError::Io { path: dir.to_path_buf(), source })?;
        created.dirs.push(dir.to_path_buf());
    }
    let tls_dir = dir.join(TLS_DIR);
    created.dir(&tls_dir)?;

    let today = days_since_epoch();
    let (ca, ca_key) =
        make_ca(pair.cluster, today).map_err(|source| InitError::Certificate { what: "private CA".into(), source })?;
    created.file(&tls_dir.join("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600)?;
    created.file(&pair.tls.ca, ca.pem().as_bytes(), 0o644)?;

    for node in &pair.nodes {
        let identity = node_identity(pair.cluster, &node.name);
        let (cert, key) = make_leaf(&identity, &ca, &ca_key, today)
            .map_err(|source| InitError::Certificate { what: format!("certificate of node {}", node.name), source })?;
        created.file(&node.key, key.serialize_pem().as_bytes(), 0o600)?;
        created.file(&node.cert, cert.pem().as_bytes(), 0o644)?;
    }
    let (admin, admin_key) = make_leaf(&admin_identity(pair.cluster), &ca, &ca_key, today)
        .map_err(|source| InitError::Certificate { what: "admin certificate".into(), source })?;
    created.file(&pair.tls.admin_key, admin_key.serialize_pem().as_bytes(), 0o600)?;
    created.file(&pair.tls.admin_cert, admin.pem().as_bytes(), 0o644)?;
    if options.client_tls {
        write_client_tls(pair, &tls_dir, &ca, &ca_key, today, created)?;
    }
    if let Some(password_file) = &pair.clients.password_file {
        // 32 random bytes, as hex: typeable, and far beyond guessing at the AUTH throttle's pace.
        let password = format!("{}{}\n", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        created.file(password_file, password.as_bytes(), 0o600)?;
    }

    let first = pair.preferred_primary().name.clone();
    for (i, node) in pair.nodes.iter().enumerate() {
        created.dir(&node.dir)?;
        let role = if i == 0 { Role::Primary } else { Role::Backup };
        let history = vec![HistoryEntry { epoch: 1, first_lsn: 1, primary: first.clone() }];
        created.files.push(node.dir.join(crate::storage::meta::META_FILE));
        NodeMeta::new(pair.cluster, &node.name, role, 1, history).create(&node.dir)?;
    }

    created.file(&pair.path, text.as_bytes(), 0o644)?;
    sync_dir(&tls_dir)?;
    sync_dir(dir)?;
    Ok(leaf_valid_until(today))
}

/// When a certificate made `today` expires (UTC, `YYYY-MM-DD 00:00`).
pub(crate) fn leaf_valid_until(today: i64) -> String {
    let (y, m, d) = civil_from_days(today - 1);
    let (y, m, d) = valid_date(y + LEAF_YEARS, m, d);
    format!("{y:04}-{m:02}-{d:02} 00:00")
}

/// The data port's certificates: one per node, for its data address; one for applications.
fn write_client_tls(
    pair: &PairConfig,
    tls_dir: &Path,
    ca: &Certificate,
    ca_key: &KeyPair,
    today: i64,
    created: &mut Created,
) -> Result<(), InitError> {
    for node in &pair.nodes {
        let (Some(cert_path), Some(key_path)) = (&node.data_cert, &node.data_key) else { continue };
        let mut names = vec![crate::tls::data_identity(pair.cluster, &node.name)];
        let ip = node.data.ip();
        if ip.is_loopback() || ip.is_unspecified() {
            names.push("localhost".into());
        }
        let (cert, key) = make_data_cert(&names, ip, ca, ca_key, today).map_err(|source| InitError::Certificate {
            what: format!("data-port certificate of node {}", node.name),
            source,
        })?;
        created.file(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        created.file(cert_path, cert.pem().as_bytes(), 0o644)?;
    }
    let identity = crate::tls::app_client_identity(pair.cluster);
    let (cert, key) = make_client_cert(&identity, ca, ca_key, today)
        .map_err(|source| InitError::Certificate { what: "applications' client certificate".into(), source })?;
    created.file(&tls_dir.join(APP_CLIENT_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    created.file(&tls_dir.join(APP_CLIENT_CERT), cert.pem().as_bytes(), 0o644)
}

/// A data port's certificate: server authentication only, valid for `names` and for the data
/// address `ip` (unless it is a wildcard), which is what Redis clients check.
fn make_data_cert(
    names: &[String],
    ip: std::net::IpAddr,
    ca: &Certificate,
    ca_key: &KeyPair,
    today: i64,
) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    if !ip.is_unspecified() {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    }
    params.distinguished_name = name(&names[0]);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, today, LEAF_YEARS);
    let cert = params.signed_by(&key, ca, ca_key)?;
    Ok((cert, key))
}

/// The applications' client certificate: client authentication only.
fn make_client_cert(
    identity: &str,
    ca: &Certificate,
    ca_key: &KeyPair,
    today: i64,
) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![identity.to_string()])?;
    params.distinguished_name = name(identity);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, today, LEAF_YEARS);
    let cert = params.signed_by(&key, ca, ca_key)?;
    Ok((cert, key))
}

fn sync_dir(dir: &Path) -> Result<(), InitError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| InitError::Io { path: dir.to_path_buf(), source })
}

/// The pair file, with a header that explains every key.
fn pair_file_text(cluster: Uuid, sync: SyncLevel, nodes: &NodeSpecs, options: InitOptions) -> String {
    let mut out = String::new();
    out.push_str(
        "# hotpair pair file, written by `hotpair init`. It describes the whole pair; every command\n\
         # takes it as --pair FILE (default: $HOTPAIR_PAIR, then ./pair.toml). Paths are relative to\n\
         # this file. Durations are humantime strings: 250ms, 5s, 2m. Unknown keys are refused.\n\
         #\n\
         # cluster       the pair's id; certificates carry it, and a node refuses a peer of another cluster\n\
         # name          the master name applications ask the Sentinel ports for (docs/clients.md)\n\
         # sync          when a commit is acknowledged: async (local journal durable), received (in the\n\
         #               peer's memory), durable (in the peer's remote journal, fsynced), applied (visible\n\
         #               on the peer)\n\
         # sync_timeout  how long a commit waits for its sync level before it fails (never acknowledged)\n\
         # on_peer_loss  block | degrade-after:<duration> (degrading is an incident, never silent)\n\
         # heartbeat     interval of the heartbeats between the nodes\n\
         # [tls]         the pair's private CA (its key tls/ca.key is not named here: keep it offline) and\n\
         #               the admin's certificate and key\n\
         # [nodes.NAME]  control: mutual-TLS address (replication and admin); data: RESP address for\n\
         #               applications (default control port + 1); dir: data directory; cert, key: its TLS\n\
         #               identity; metrics (optional): IP:port of its Prometheus endpoint (GET /metrics);\n\
         #               sentinel: its Sentinel-compatible discovery port for applications (default\n\
         #               control port + 2).\n\
         #               Exactly two nodes; the first listed starts as primary on a fresh pair\n\
         # [notify]      commands: each gets every incident as JSON on stdin; incident_log: JSON lines\n\
         # [limits]      optional: max_value_bytes (default 16777216; requests may be 1 MiB larger),\n\
         #               max_connections (1024), max_args (1048576), client_output_buffer_limit (64MiB),\n\
         #               max_client_memory (256MiB), client_idle_timeout (5m, or \"off\"),\n\
         #               admin_idle_timeout (5m)\n\
         # [clients]     optional, the data port's security: password_file (then AUTH is required),\n\
         #               users_file (NAME readwrite|readonly PASSWORD per line), tls (each node's\n\
         #               data_cert/data_key), tls_auth_clients (no | optional | yes)\n\
         # [monitor]     optional: lag_alert (10s) and lag_alert_records (100000): the backup further\n\
         #               behind is an incident; canary_interval (5s) and digest_interval (1m), each may\n\
         #               be \"off\"; retention_alert (10m): an absent backup pinning the journal\n\
         # disk_min_free optional top-level key: below this much free space (bytes, or \"512MiB\", \"1GiB\",\n\
         #               \"64MB\"; default 256MiB, 0 = off) the primary refuses writes and the backup stops\n\
         #               receiving, until space returns\n\n",
    );
    let _ = writeln!(out, "cluster = \"{cluster}\"");
    let _ = writeln!(out, "name = \"{}\"", crate::config::DEFAULT_MASTER_NAME);
    let _ = writeln!(out, "sync = \"{sync}\"");
    out.push_str("sync_timeout = \"5s\"\non_peer_loss = \"block\"\nheartbeat = \"200ms\"\n\n");
    out.push_str("[tls]\nca = \"tls/ca.pem\"\nadmin_cert = \"tls/admin.pem\"\nadmin_key = \"tls/admin.key\"\n");
    for node in &nodes.0 {
        let name = &node.name;
        let _ = write!(
            out,
            "\n[nodes.{name}]\ncontrol = \"{}\"\ndata = \"{}\"\nsentinel = \"{}\"\ndir = \"{name}\"\ncert = \"tls/{name}.pem\"\nkey = \"tls/{name}.key\"\n",
            node.control,
            node.data(),
            node.sentinel()
        );
        if options.client_tls {
            let _ = write!(out, "data_cert = \"tls/{name}.data.pem\"\ndata_key = \"tls/{name}.data.key\"\n");
        }
    }
    if options.client_password || options.client_tls {
        out.push_str("\n[clients]\n");
        if options.client_password {
            let _ = writeln!(out, "password_file = \"{CLIENT_PASSWORD_FILE}\"");
        }
        if options.client_tls {
            out.push_str("tls = true\ntls_auth_clients = \"no\"\n");
        }
    }
    out.push_str("\n[notify]\ncommands = []\nincident_log = \"incidents.jsonl\"\n");
    out
}

fn make_ca(cluster: Uuid, today: i64) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let cert = ca_certificate(&ca_common_name(cluster), &key, today)?;
    Ok((cert, key))
}

/// The common name of the CA `init` makes for `cluster` (a rotated CA adds a suffix to it).
pub(crate) fn ca_common_name(cluster: Uuid) -> String {
    format!("hotpair CA for cluster {cluster}")
}

/// A CA certificate named `common_name` for `key`. Made again from the same name and key, it is
/// an issuer that signs exactly as the original (`certs rotate`, which has only `ca.key`).
pub(crate) fn ca_certificate(common_name: &str, key: &KeyPair, today: i64) -> Result<Certificate, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, today, CA_YEARS);
    params.self_signed(key)
}

pub(crate) fn make_leaf(
    identity: &str,
    ca: &Certificate,
    ca_key: &KeyPair,
    today: i64,
) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![identity.to_string()])?;
    params.distinguished_name = name(identity);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, today, LEAF_YEARS);
    let cert = params.signed_by(&key, ca, ca_key)?;
    Ok((cert, key))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hotpair");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// From yesterday (tolerates clock skew between the nodes) for `years`; a random positive serial.
fn set_validity(params: &mut CertificateParams, today: i64, years: i32) {
    let (y, m, d) = civil_from_days(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = valid_date(y + years, m, d);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let mut serial = *Uuid::new_v4().as_bytes();
    serial[0] = (serial[0] & 0x7f) | 0x40; // positive, no leading zero byte
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

pub(crate) fn days_since_epoch() -> i64 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    (secs / 86_400) as i64
}

/// Moves 29 February to the 28th in years that have no 29 February.
fn valid_date(y: i32, m: u8, d: u8) -> (i32, u8, u8) {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if m == 2 && d == 29 && !leap {
        (y, 2, 28)
    } else {
        (y, m, d)
    }
}

/// Civil date (proleptic Gregorian, UTC) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(valid_date(2034, 2, 29), (2034, 2, 28));
        assert_eq!(valid_date(2036, 2, 29), (2036, 2, 29));
    }

    #[test]
    fn node_specs() {
        let specs: NodeSpecs = DEFAULT_NODES.parse().unwrap();
        assert_eq!(specs.0[1].data(), "127.0.0.1:7502".parse().unwrap());
        assert_eq!(specs.to_string(), DEFAULT_NODES);
        for bad in [
            "a=127.0.0.1:7401",
            "a=127.0.0.1:7401,b=127.0.0.1:7402",
            "a=127.0.0.1:7401,a=127.0.0.1:7501",
            "a=127.0.0.1:7401,b=localhost:7501",
            "a=127.0.0.1:7401,tls=127.0.0.1:7501",
            "a=127.0.0.1:0,b=127.0.0.1:7501",
            "A=127.0.0.1:7401,b=127.0.0.1:7501",
            "a:127.0.0.1:7401,b=127.0.0.1:7501",
            "a=127.0.0.1:7401,b=127.0.0.1:7501,c=127.0.0.1:7601",
        ] {
            assert!(bad.parse::<NodeSpecs>().is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_pair_file_validates_and_keeps_order() {
        let specs: NodeSpecs = "zed=127.0.0.1:7401,alpha=127.0.0.1:7501".parse().unwrap();
        let text = pair_file_text(Uuid::new_v4(), SyncLevel::Applied, &specs, InitOptions::default());
        let pair = PairConfig::from_toml_str(&text, Path::new("/srv/pair/pair.toml")).unwrap();
        assert_eq!(pair.preferred_primary().name, "zed");
        assert_eq!(pair.sync, SyncLevel::Applied);
        assert_eq!(pair.nodes[1].dir, Path::new("/srv/pair/alpha"));
    }
}
