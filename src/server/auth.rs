//! Who may use the data port: the default user's password and optional named users, as
//! `[clients] password_file` and `users_file` in the pair file give them.
//!
//! ## Semantics (Redis `requirepass` and ACL users)
//! - No file set: nobody authenticates, everyone reads and writes (as Redis without
//!   `requirepass`). `AUTH pw` is then refused as Redis refuses it.
//! - `password_file`: the whole file (one trailing newline removed) is the default user's
//!   password. `AUTH pw` and `AUTH default pw` authenticate with read-write rights; until then
//!   every command but `AUTH`, `HELLO` and `QUIT` answers `-NOAUTH Authentication required.`
//! - `users_file`: one user per line, `NAME RIGHTS PASSWORD`, `RIGHTS` being `readwrite` or
//!   `readonly` and `PASSWORD` the rest of the line (it may hold spaces); blank lines and lines
//!   starting with `#` are skipped. `AUTH NAME PASSWORD` authenticates as that user. A
//!   `readonly` user's writes answer `-NOPERM`. With a users file and no password file, AUTH is
//!   required and the default user cannot log in.
//!
//! ## Invariants
//! - Passwords are kept only as SHA-256 digests and compared in constant time, so neither the
//!   comparison's timing nor a memory dump of the table gives a password away directly.
//! - A file readable by group or others, larger than its bound, empty or malformed is refused
//!   at load with its path and the line at fault: the node does not start on it.
//!
//! ## Caveats
//! Digests are unsalted and fast: they protect against timing, not against someone who can read
//! the node's memory. The files themselves hold the passwords in the clear, like `redis.conf`;
//! their mode (0600) is what protects them.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The default user's name, as in Redis.
pub const DEFAULT_USER: &str = "default";
/// Largest password file read.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 64 * 1024;
/// Largest users file read.
pub const MAX_USERS_FILE_BYTES: u64 = 1024 * 1024;
/// Longest user name.
pub const MAX_USER_NAME: usize = 64;

/// What an authenticated client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rights {
    /// Reads only: writes answer `-NOPERM`.
    ReadOnly,
    ReadWrite,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {} is larger than {limit} bytes; it should hold {}", path.display(), if *what == "password file" { "one password" } else { "one line per user" })]
    TooLarge { what: &'static str, path: PathBuf, limit: u64 },
    #[error("{what} {} can be read by other users (mode {mode:04o}); run `chmod 600 {}`", path.display(), path.display())]
    Exposed { what: &'static str, path: PathBuf, mode: u32 },
    #[error("password file {} is empty; write the password in it (one line)", path.display())]
    Empty { path: PathBuf },
    #[error("users file {} line {line}: {reason}", path.display())]
    Line { path: PathBuf, line: usize, reason: String },
}

type Digest = [u8; 32];

fn digest(password: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, password).as_ref());
    out
}

/// Equal digests, compared without an early exit.
fn same(a: &Digest, b: &Digest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The data port's users. Built at start and shared by every connection; `hotpair reload`
/// swaps the table in place ([`Users::replace`]), so the next `AUTH` checks the new passwords
/// (connections already authenticated stay so, as with Redis' `CONFIG SET requirepass`).
#[derive(Debug, Default)]
pub struct Users {
    table: std::sync::RwLock<Table>,
}

#[derive(Debug, Default)]
struct Table {
    default: Option<Digest>,
    named: HashMap<Vec<u8>, (Digest, Rights)>,
}

impl Users {
    /// The users the two files give, or `None` when neither is set (no authentication).
    pub fn load(password_file: Option<&Path>, users_file: Option<&Path>) -> Result<Option<Users>, AuthFileError> {
        if password_file.is_none() && users_file.is_none() {
            return Ok(None);
        }
        let mut table = Table::default();
        if let Some(path) = password_file {
            table.default = Some(digest(&read_password(path)?));
        }
        if let Some(path) = users_file {
            let text = read_private(path, "users file", MAX_USERS_FILE_BYTES)?;
            table.named = parse_users(path, &text)?;
        }
        Ok(Some(Users { table: std::sync::RwLock::new(table) }))
    }

    /// Takes `other`'s passwords and users from now on (`hotpair reload`).
    pub fn replace(&self, other: Users) {
        let table = other.table.into_inner().unwrap_or_else(|e| e.into_inner());
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // A poisoned lock still holds a whole table: `replace` only assigns it.
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The rights of `user` (the default user when `None`) if `password` is theirs.
    pub fn check(&self, user: Option<&[u8]>, password: &[u8]) -> Option<Rights> {
        let attempt = digest(password);
        match user {
            None => self.table().default.filter(|known| same(known, &attempt)).map(|_| Rights::ReadWrite),
            Some(name) if name == DEFAULT_USER.as_bytes() => self.check(None, password),
            Some(name) => {
                let table = self.table();
                let (known, rights) = table.named.get(name)?;
                same(known, &attempt).then_some(*rights)
            }
        }
    }

    /// How many named users the users file gave.
    pub fn named_users(&self) -> usize {
        self.table().named.len()
    }
}

/// The password a password file holds: its bytes without one trailing newline. Clients of the
/// repository (the drill, the benches) read it with this too.
pub fn read_password(path: &Path) -> Result<Vec<u8>, AuthFileError> {
    let mut bytes = read_private(path, "password file", MAX_PASSWORD_FILE_BYTES)?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(AuthFileError::Empty { path: path.to_path_buf() });
    }
    Ok(bytes)
}

/// Reads at most `limit` bytes of a file that only its owner may read.
fn read_private(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>, AuthFileError> {
    let read_error = |source| AuthFileError::Read { what, path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(read_error(source));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(AuthFileError::Exposed { what, path: path.to_path_buf(), mode });
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > limit {
        return Err(AuthFileError::TooLarge { what, path: path.to_path_buf(), limit });
    }
    Ok(bytes)
}

fn parse_users(path: &Path, text: &[u8]) -> Result<HashMap<Vec<u8>, (Digest, Rights)>, AuthFileError> {
    let mut users = HashMap::new();
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line_error = |reason: String| AuthFileError::Line { path: path.to_path_buf(), line: index + 1, reason };
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let trimmed = line.trim_ascii_start();
        if trimmed.is_empty() || trimmed.starts_with(b"#") {
            continue;
        }
        let mut fields = trimmed.splitn(2, |b| b.is_ascii_whitespace());
        let name = fields.next().unwrap_or_default();
        let rest = fields.next().unwrap_or_default().trim_ascii_start();
        let mut fields = rest.splitn(2, |b| b.is_ascii_whitespace());
        let rights = fields.next().unwrap_or_default();
        let password = fields.next().unwrap_or_default().trim_ascii_start();
        let usage = "write NAME RIGHTS PASSWORD, RIGHTS being readwrite or readonly";
        let valid_name = !name.is_empty()
            && name.len() <= MAX_USER_NAME
            && name.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid_name {
            return Err(line_error(format!(
                "user name {:?} must be 1 to {MAX_USER_NAME} of A-Z a-z 0-9 _ - .; {usage}",
                String::from_utf8_lossy(name)
            )));
        }
        if name == DEFAULT_USER.as_bytes() {
            return Err(line_error("the default user's password belongs in password_file, not here".into()));
        }
        let rights = match rights {
            b"readwrite" => Rights::ReadWrite,
            b"readonly" => Rights::ReadOnly,
            other => {
                return Err(line_error(format!(
                    "rights {:?} are not readwrite or readonly; {usage}",
                    String::from_utf8_lossy(other)
                )))
            }
        };
        if password.is_empty() {
            return Err(line_error(format!("user {} has no password; {usage}", String::from_utf8_lossy(name))));
        }
        if users.insert(name.to_vec(), (digest(password), rights)).is_some() {
            return Err(line_error(format!("user {} is listed twice", String::from_utf8_lossy(name))));
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn the_default_password_and_named_users_authenticate_with_their_rights() {
        let dir = tempfile::tempdir().unwrap();
        let password = private_file(dir.path(), "clients.pass", "s3cret\n");
        let users_file = private_file(
            dir.path(),
            "clients.users",
            "# users\n\napp readwrite correct horse battery\r\nreport   readonly  r3port\n",
        );
        let users = Users::load(Some(&password), Some(&users_file)).unwrap().unwrap();
        assert_eq!(users.check(None, b"s3cret"), Some(Rights::ReadWrite));
        assert_eq!(users.check(Some(b"default"), b"s3cret"), Some(Rights::ReadWrite));
        assert_eq!(users.check(None, b"s3cret\n"), None);
        assert_eq!(users.check(Some(b"app"), b"correct horse battery"), Some(Rights::ReadWrite));
        assert_eq!(users.check(Some(b"report"), b"r3port"), Some(Rights::ReadOnly));
        assert_eq!(users.check(Some(b"report"), b"s3cret"), None);
        assert_eq!(users.check(Some(b"nobody"), b"s3cret"), None);
        assert_eq!(users.named_users(), 2);
        assert!(Users::load(None, None).unwrap().is_none());
        let only_named = Users::load(None, Some(&users_file)).unwrap().unwrap();
        assert_eq!(only_named.check(None, b""), None, "no default user without a password file");
    }

    #[test]
    fn bad_files_are_refused_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let exposed = dir.path().join("open.pass");
        std::fs::write(&exposed, "pw").unwrap();
        std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Users::load(Some(&exposed), None).unwrap_err().to_string();
        assert!(error.contains("mode 0644") && error.contains("chmod 600"), "{error}");
        let empty = private_file(dir.path(), "empty.pass", "\n");
        assert!(matches!(Users::load(Some(&empty), None), Err(AuthFileError::Empty { .. })));
        for (text, says) in [
            ("app superuser pw\n", "line 1: rights \"superuser\""),
            ("# c\napp readonly\n", "line 2: user app has no password"),
            ("default readwrite pw\n", "password_file"),
            ("b\u{e9} readonly pw\n", "user name"),
            ("app readonly a\napp readwrite b\n", "listed twice"),
        ] {
            let path = private_file(dir.path(), "users", text);
            let error = Users::load(None, Some(&path)).unwrap_err().to_string();
            assert!(error.contains(says), "{text:?}: {error}");
        }
        let missing = Users::load(Some(&dir.path().join("missing")), None).unwrap_err().to_string();
        assert!(missing.contains("cannot read password file"), "{missing}");
    }
}
