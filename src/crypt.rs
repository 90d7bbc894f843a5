//! Client-side encryption with age (X25519 recipients): what pgmedic stores is
//! zstd → age → SHA-256, so the host can write snapshots it cannot read back, and an operator
//! can recover one with the real `age` and `zstd` commands alone. Manifests name recipients by
//! fingerprint only. The identity (secret key) is read only to restore, verify inside, diagnose
//! and rehearse.

use std::io::{self, Read, Write};
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::config::Encryption;

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("cannot read the age identity file {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("the age identity file {path} holds no X25519 identity (AGE-SECRET-KEY-1…)")]
    Empty { path: String },
}

/// The identity file of the loaded configuration, for readers far from it (diagnose's baseline).
static IDENTITY_FILE: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

pub fn use_identity_file(path: Option<std::path::PathBuf>) {
    if let Ok(mut f) = IDENTITY_FILE.lock() {
        *f = path;
    }
}

/// The configured identities, or why there are none.
pub fn configured_identities() -> Result<Vec<age::x25519::Identity>, String> {
    let path = IDENTITY_FILE.lock().ok().and_then(|f| f.clone());
    let path = path.ok_or_else(|| "storage.encryption.identity_file is not set".to_string())?;
    identities(&path).map_err(|e| e.to_string())
}

/// `sha256:` and 16 hex digits of the recipient's SHA-256: names a key without being one.
pub fn fingerprint(recipient: &str) -> String {
    format!("sha256:{}", &hex::encode(Sha256::digest(recipient.trim().as_bytes()))[..16])
}

/// The configured recipients, parsed (validation has already checked them).
pub fn recipients(cfg: &Encryption) -> Vec<age::x25519::Recipient> {
    cfg.recipients.iter().filter_map(|r| r.parse().ok()).collect()
}

/// Every `AGE-SECRET-KEY-1…` line of an identity file (as `age-keygen` writes it).
pub fn identities(path: &Path) -> Result<Vec<age::x25519::Identity>, CryptError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| CryptError::Read { path: shown.clone(), source })?;
    let ids: Vec<age::x25519::Identity> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .filter_map(|l| age::x25519::Identity::from_str(l).ok())
        .collect();
    if ids.is_empty() {
        return Err(CryptError::Empty { path: shown });
    }
    if let Some(warning) = loose_permissions(path) {
        // A warning, not a refusal: refusing the key would block a restore in an incident.
        tracing::warn!(path = %shown, "{warning}");
    }
    Ok(ids)
}

/// Why the identity file's mode is too open (readable or writable by group or others), if it is.
pub fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "the age identity file {} has mode {mode:04o}: others than its owner can read the key to every snapshot; chmod 0600 it",
            path.display()
        )
    })
}

fn encryptor(recipients: &[age::x25519::Recipient]) -> io::Result<age::Encryptor> {
    age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(io::Error::other)
}

/// A writer that encrypts on its way to `W`, or passes through.
pub enum Sealed<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealed<W> {
    pub fn new(inner: W, recipients: &[age::x25519::Recipient]) -> io::Result<Sealed<W>> {
        if recipients.is_empty() {
            return Ok(Sealed::Plain(inner));
        }
        Ok(Sealed::Age(encryptor(recipients)?.wrap_output(inner)?))
    }

    /// Ends the age stream (its last chunk and tag) and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(data),
            Sealed::Age(w) => w.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(w) => w.flush(),
        }
    }
}

/// A small object sealed whole.
pub fn seal(data: &[u8], recipients: &[age::x25519::Recipient]) -> io::Result<Vec<u8>> {
    let mut w = Sealed::new(Vec::new(), recipients)?;
    w.write_all(data)?;
    w.finish()
}

/// A reader of the plaintext inside `input`, with any of `ids`.
pub fn open<R: Read>(input: R, ids: &[age::x25519::Identity]) -> io::Result<impl Read> {
    let d = age::Decryptor::new(input).map_err(io::Error::other)?;
    d.decrypt(ids.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| io::Error::other(format!("cannot decrypt: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sealed_bytes_open_with_the_identity_only() {
        let id = age::x25519::Identity::generate();
        let sealed = super::seal(b"pg_dump output", &[id.to_public()]).unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1"));
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut super::open(&sealed[..], &[id]).unwrap(), &mut out).unwrap();
        assert_eq!(out, b"pg_dump output");
        let other = age::x25519::Identity::generate();
        assert!(super::open(&sealed[..], &[other]).is_err());
    }
}
