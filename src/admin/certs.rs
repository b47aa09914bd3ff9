//! `hotpair certs rotate|finish-ca`: new identities from the pair's CA, taken by the running
//! nodes without a restart; the old ones refused from then on.
//!
//! ## Job
//! - `certs rotate [--node N]… [--admin]` (neither: both nodes and the admin) makes a new key and
//!   certificate for each identity, signed by the pair's CA (`ca.key`, which `init` wrote and
//!   which should be kept offline: `--ca-key PATH`), and replaces the files the pair file names.
//!   Running nodes read them again on the next handshake (`tls`, "Rotation and revocation"): a
//!   node presents its new certificate; every node accepts, for each identity, only the
//!   certificate now in its file, so the old one is refused at once; a replication session
//!   authenticated with a node's old certificate ends and the node reconnects with its new one.
//! - `certs rotate --ca` starts a CA rotation: a new CA key and certificate; `ca.pem` becomes a
//!   bundle of the new CA and the old ones (trusted side by side, so nothing breaks while hosts
//!   get the new files one by one), the old key is kept as `ca.key.old`. Identities rotated
//!   after it are signed by the new CA. `certs finish-ca`, once every identity was rotated,
//!   leaves only the new CA in `ca.pem` and removes `ca.key.old` (refusing while a certificate
//!   the pair file names still chains to an old CA only).
//!
//! ## Invariants
//! - A new certificate is checked to chain to the CA file before anything is replaced.
//! - Each file is replaced whole (temporary file, fsync, rename, fsync of the directory); a key
//!   is written mode 0600 before its certificate, and a node that reads the two while they do
//!   not match yet keeps presenting the last good pair.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;

use crate::config::PairConfig;
use crate::tls::{admin_identity, node_identity};

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error(
        "cannot read the CA key {}: {source}; it is meant to be kept offline — give its place with --ca-key PATH",
        path.display()
    )]
    NoCaKey { path: PathBuf, source: std::io::Error },
    #[error("{} is not a usable key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("making a certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io { path: path.to_path_buf(), source }
}

/// What `certs rotate` is asked to renew.
#[derive(Debug, Clone, Default)]
pub struct RotateOptions {
    pub nodes: Vec<String>,
    pub admin: bool,
    /// Start a CA rotation instead (no identity is renewed).
    pub ca: bool,
    /// Where `ca.key` is (default: next to the CA file).
    pub ca_key: Option<PathBuf>,
}

/// `hotpair certs rotate`: returns what was done, for the CLI to print.
pub fn rotate(pair: &PairConfig, options: &RotateOptions) -> Result<String, CertsError> {
    let ca_key_path = options.ca_key.clone().unwrap_or_else(|| pair.tls.ca.with_file_name("ca.key"));
    let ca_key = read_key(&ca_key_path)?;
    if options.ca {
        if options.admin || !options.nodes.is_empty() {
            return Err(CertsError::Refused(
                "--ca starts a CA rotation on its own; rotate the identities with the new CA afterwards".into(),
            ));
        }
        return start_ca_rotation(pair, &ca_key, &ca_key_path);
    }
    for node in &options.nodes {
        pair.node(node).map_err(|e| CertsError::Refused(e.to_string()))?;
    }
    let everyone = options.nodes.is_empty() && !options.admin;
    let mut targets: Vec<(String, String, PathBuf, PathBuf)> = Vec::new();
    for node in &pair.nodes {
        if everyone || options.nodes.contains(&node.name) {
            let who = format!("node {}", node.name);
            targets.push((who, node_identity(pair.cluster, &node.name), node.cert.clone(), node.key.clone()));
        }
    }
    if everyone || options.admin {
        targets.push((
            "the admin".into(),
            admin_identity(pair.cluster),
            pair.tls.admin_cert.clone(),
            pair.tls.admin_key.clone(),
        ));
    }
    let issuer = issuer(pair, &ca_key, &ca_key_path)?;
    let today = crate::admin::init::days_since_epoch();
    let mut report = String::new();
    for (who, identity, cert_path, key_path) in targets {
        let (cert, key) = crate::admin::init::make_leaf(&identity, &issuer, &ca_key, today)?;
        crate::tls::check_chain(pair, cert.der()).map_err(|e| {
            CertsError::Refused(format!(
                "the certificate made for {who} does not chain to {} ({e}); is {} the key of that CA?",
                pair.tls.ca.display(),
                ca_key_path.display()
            ))
        })?;
        replace(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        replace(&cert_path, cert.pem().as_bytes(), 0o644)?;
        report.push_str(&format!(
            "rotated {who}: {} and {} (valid until {} UTC); the old certificate is refused from now on\n",
            cert_path.display(),
            key_path.display(),
            crate::admin::init::leaf_valid_until(today)
        ));
    }
    report.push_str(
        "running nodes take the new files at their next connection, no restart; on two hosts copy a node's new \
         .pem and .key to its own host first, then its .pem to the other host (docs/deploy.md)\n",
    );
    Ok(report)
}

/// `hotpair certs finish-ca`: the end of a CA rotation.
pub fn finish_ca(pair: &PairConfig, ca_key: Option<PathBuf>) -> Result<String, CertsError> {
    let ca_key_path = ca_key.unwrap_or_else(|| pair.tls.ca.with_file_name("ca.key"));
    let ca_key = read_key(&ca_key_path)?;
    let bundle = crate::tls::load_certs(&pair.tls.ca, "CA certificate")?;
    let current = bundle.iter().find(|ca| same_key(ca, &ca_key)).cloned().ok_or_else(|| {
        CertsError::Refused(format!("no CA in {} belongs to {}", pair.tls.ca.display(), ca_key_path.display()))
    })?;
    if bundle.len() == 1 {
        return Ok(format!("{} holds one CA already: nothing to finish\n", pair.tls.ca.display()));
    }
    // Every certificate the pair names must chain to the new CA alone, or dropping the old one
    // would lock it out.
    let pem = pem_of(&current);
    let scratch = tempfile_next_to(&pair.tls.ca)?;
    std::fs::write(&scratch, &pem).map_err(io(&scratch))?;
    let check = PairConfig { tls: crate::config::TlsFiles { ca: scratch.clone(), ..pair.tls.clone() }, ..pair.clone() };
    let mut stale = Vec::new();
    let mut files: Vec<(String, PathBuf)> =
        pair.nodes.iter().map(|n| (format!("node {}", n.name), n.cert.clone())).collect();
    files.push(("the admin".into(), pair.tls.admin_cert.clone()));
    for (who, file) in &files {
        let leaf = crate::tls::load_certs(file, &format!("certificate of {who}"))?.swap_remove(0);
        if crate::tls::check_chain(&check, &leaf).is_err() {
            stale.push(format!("{who} ({})", file.display()));
        }
    }
    let _ = std::fs::remove_file(&scratch);
    if !stale.is_empty() {
        return Err(CertsError::Refused(format!(
            "{} still chain(s) to the old CA: run `hotpair certs rotate` for them first",
            stale.join(", ")
        )));
    }
    replace(&pair.tls.ca, pem.as_bytes(), 0o644)?;
    let old = ca_key_path.with_file_name("ca.key.old");
    let removed = if old.exists() {
        std::fs::remove_file(&old).map_err(io(&old))?;
        format!("; removed {}", old.display())
    } else {
        String::new()
    };
    Ok(format!(
        "{} now holds only the new CA{removed}; copy it to both node hosts (they read it again by themselves)\n",
        pair.tls.ca.display()
    ))
}

fn start_ca_rotation(pair: &PairConfig, old_key: &KeyPair, ca_key_path: &Path) -> Result<String, CertsError> {
    let old = ca_key_path.with_file_name("ca.key.old");
    if old.exists() {
        return Err(CertsError::Refused(format!(
            "{} exists: a CA rotation is under way; rotate every identity, then run `hotpair certs finish-ca`",
            old.display()
        )));
    }
    let bundle = crate::tls::load_certs(&pair.tls.ca, "CA certificate")?;
    if !bundle.iter().any(|ca| same_key(ca, old_key)) {
        return Err(CertsError::Refused(format!(
            "no CA in {} belongs to {}",
            pair.tls.ca.display(),
            ca_key_path.display()
        )));
    }
    let today = crate::admin::init::days_since_epoch();
    let key = KeyPair::generate()?;
    let name = format!(
        "{}, rotated {}",
        crate::admin::init::ca_common_name(pair.cluster),
        &uuid::Uuid::new_v4().to_string()[..8]
    );
    let ca = crate::admin::init::ca_certificate(&name, &key, today)?;
    let mut text = ca.pem();
    for old_ca in &bundle {
        text.push_str(&pem_of(old_ca));
    }
    // The old key first (kept), then the new one, then the bundle that trusts both.
    std::fs::copy(ca_key_path, &old).map_err(io(&old))?;
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o600)).map_err(io(&old))?;
    replace(ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
    replace(&pair.tls.ca, text.as_bytes(), 0o644)?;
    Ok(format!(
        "new CA \"{name}\" in {} (bundled with the old one, both trusted); its key is {}, the old key is kept as {}\n\
         next: copy {} to both node hosts; then `hotpair certs rotate` (every identity, signed by the new CA) and \
         copy the new files as docs/deploy.md says; then `hotpair certs finish-ca`\n",
        pair.tls.ca.display(),
        ca_key_path.display(),
        old.display(),
        pair.tls.ca.display()
    ))
}

fn read_key(path: &Path) -> Result<KeyPair, CertsError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| CertsError::NoCaKey { path: path.to_path_buf(), source })?;
    KeyPair::from_pem(&text).map_err(|e| CertsError::BadKey { path: path.to_path_buf(), reason: e.to_string() })
}

/// Whether CA certificate `ca` is for `key`.
fn same_key(ca: &CertificateDer<'_>, key: &KeyPair) -> bool {
    rustls::server::ParsedCertificate::try_from(ca)
        .is_ok_and(|parsed| parsed.subject_public_key_info().as_ref() == key.public_key_der().as_slice())
}

/// The CA of the bundle that `key` belongs to, made again as an issuer (its name read from the
/// certificate, so a rotated CA's name is kept).
fn issuer(pair: &PairConfig, key: &KeyPair, key_path: &Path) -> Result<rcgen::Certificate, CertsError> {
    let bundle = crate::tls::load_certs(&pair.tls.ca, "CA certificate")?;
    let ca = bundle.iter().find(|ca| same_key(ca, key)).ok_or_else(|| {
        CertsError::Refused(format!("no CA in {} belongs to {}", pair.tls.ca.display(), key_path.display()))
    })?;
    let name = common_name(ca.as_ref(), &crate::admin::init::ca_common_name(pair.cluster)).ok_or_else(|| {
        CertsError::Refused(format!(
            "the CA in {} was not made by hotpair for cluster {} (its name is not \"{}…\")",
            pair.tls.ca.display(),
            pair.cluster,
            crate::admin::init::ca_common_name(pair.cluster)
        ))
    })?;
    Ok(crate::admin::init::ca_certificate(&name, key, crate::admin::init::days_since_epoch())?)
}

/// The first DER string (UTF8String or PrintableString) in `der` whose text starts with
/// `prefix`: a hotpair CA's common name, read without an X.509 parser.
fn common_name(der: &[u8], prefix: &str) -> Option<String> {
    let needle = prefix.as_bytes();
    (0..der.len().saturating_sub(2)).find_map(|at| {
        if !matches!(der[at], 0x0c | 0x13) {
            return None;
        }
        let (len, head) = match der[at + 1] {
            short if short < 0x80 => (short as usize, 2),
            0x81 => (*der.get(at + 2)? as usize, 3),
            0x82 => ((*der.get(at + 2)? as usize) << 8 | *der.get(at + 3)? as usize, 4),
            _ => return None,
        };
        let text = der.get(at + head..at + head + len)?;
        text.starts_with(needle).then(|| String::from_utf8(text.to_vec()).ok()).flatten()
    })
}

fn pem_of(cert: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn tempfile_next_to(path: &Path) -> Result<PathBuf, CertsError> {
    let name = format!(".{}.check-{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("ca"), std::process::id());
    Ok(path.with_file_name(name))
}

/// Replaces `path` whole: a temporary file with `mode` from its first byte, fsync, rename, fsync
/// of the directory.
fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.new"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io(&tmp))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    file.write_all(contents).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_name_is_read_from_its_certificate() {
        let key = KeyPair::generate().unwrap();
        let cluster = uuid::Uuid::new_v4();
        let name = format!("{}, rotated 1a2b3c4d", crate::admin::init::ca_common_name(cluster));
        let ca = crate::admin::init::ca_certificate(&name, &key, 20_000).unwrap();
        assert_eq!(common_name(ca.der(), &crate::admin::init::ca_common_name(cluster)), Some(name));
        assert_eq!(common_name(ca.der(), "hotpair CA for cluster 0000"), None);
        assert!(same_key(ca.der(), &key));
        assert!(!same_key(ca.der(), &KeyPair::generate().unwrap()));
    }
}
