//! Keys the relay keeps outside its database, and the file modes that protect the data dir.
//!
//! Three keys, each 32 random bytes from the OS CSPRNG in a 0600 file of its own under
//! `DATA/keys/` (or wherever `[secrets]` points):
//! * `secrets.key` encrypts TOTP secrets in the database (ChaCha20-Poly1305, a random nonce
//!   per value, the table and account name as associated data, so a ciphertext copied to
//!   another account does not decrypt);
//! * `audit.key` keys the audit trail's hash chain (HMAC-SHA-256), so someone who can write
//!   to the database but not read this file cannot recompute the chain after an edit;
//! * `audit-signing.key` is the Ed25519 seed that signs the audit checkpoints written to
//!   `DATA/audit/checkpoints.jsonl`, so cutting rows from the end of the trail is noticed.
//!
//! A copy of `relay.db` or a PostgreSQL dump alone reveals no TOTP secret and lets nobody
//! rewrite the audit trail unnoticed. Losing `secrets.key` means every account re-enrols
//! TOTP; back the key files up with the database, but not next to it.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::config::Config;
use crate::hex::hex;

/// Prefix of a keyed audit row hash: `k1:` then the hex HMAC-SHA-256 under the audit key.
/// Unkeyed (older) rows hold the bare hex SHA-256. Here, beside the key, so the store can
/// tell keyed rows apart without reaching into the audit module.
pub const KEYED_PREFIX: &str = "k1:";

/// Prefix of an encrypted secret as stored: `v1:` then hex of nonce, ciphertext and tag.
/// Base32 TOTP secrets never contain `:`, so a stored value is either one or the other.
pub const SEALED_PREFIX: &str = "v1:";

/// Length of every key file's secret: 256 bits, the key size of ChaCha20-Poly1305 and
/// HMAC-SHA-256 at full strength, and the size of an Ed25519 seed.
const KEY_LEN: usize = 32;

/// ChaCha20-Poly1305 nonces are 96 bits; random ones stay far from a collision for the few
/// thousand values a relay ever encrypts under one key.
const NONCE_LEN: usize = 12;

/// First word of every key file, so a file that is not one of ours is refused by name.
const KEY_FILE_MAGIC: &str = "tsunagu-key-v1";

/// Owner-only modes: nobody but the relay's user reads keys, the database or the data dir.
#[cfg(unix)]
const PRIVATE_FILE_MODE: u32 = 0o600;
#[cfg(unix)]
const PRIVATE_DIR_MODE: u32 = 0o700;

/// What went wrong with a key file or a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot use {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a tsunagu {purpose} key file")]
    Malformed { path: String, purpose: &'static str },
    #[error(
        "the {purpose} key {path} is missing but the database was protected with it: restore it from \
         the backup of the data dir (see docs/relay.md, \"Keys\")"
    )]
    Missing { path: String, purpose: &'static str },
    #[error(
        "the TOTP secret of {table} {account:?} does not decrypt with {path}: the secrets key is not the \
         one this database was written with (or the row was copied from another account)"
    )]
    WrongSecretsKey {
        path: String,
        table: String,
        account: String,
    },
    #[error("the stored TOTP secret of {table} {account:?} is malformed")]
    BadSealedValue { table: String, account: String },
    #[error("the OS random number generator failed")]
    Random,
    #[error(
        "the {what} stored in the database does not decrypt with {path}: it is not the key file it was sealed with"
    )]
    WrongKey { path: String, what: String },
}

/// Where the key files and the audit checkpoints live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// Encrypts TOTP secrets in the database.
    pub secrets: PathBuf,
    /// Keys the audit trail's HMAC chain.
    pub audit: PathBuf,
    /// Ed25519 seed that signs audit checkpoints.
    pub signing: PathBuf,
    /// Append-only file of signed audit checkpoints.
    pub checkpoints: PathBuf,
}

impl KeyFiles {
    /// The paths the config names (`[secrets]`), defaulting to `DATA/keys/*.key` and
    /// `DATA/audit/checkpoints.jsonl`.
    pub fn from_config(config: &Config) -> Self {
        let [secrets, audit, signing] = config.key_paths();
        Self {
            secrets,
            audit,
            signing,
            checkpoints: config.checkpoints_path(),
        }
    }

    /// The default layout below `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self::from_config(&Config {
            data_dir: data_dir.to_path_buf(),
            ..Config::default()
        })
    }
}

/// Which missing key files may be created: only those the database shows no trace of, so a
/// lost key is an error at start instead of a fresh key that silently reads nothing.
#[derive(Debug, Clone, Copy)]
pub struct MayCreate {
    pub secrets: bool,
    pub audit: bool,
    pub signing: bool,
}

/// The loaded keys; cheap to share behind an `Arc`. Its `Debug` shows no key material.
pub struct Keys {
    files: KeyFiles,
    secrets: LessSafeKey,
    audit: hmac::Key,
    signing: Ed25519KeyPair,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Loads the three keys, creating (0600, in a 0700 directory) those `may_create` allows
    /// and that do not exist yet.
    pub fn load(files: &KeyFiles, may_create: MayCreate) -> Result<Self, KeyError> {
        let secrets = load_or_create(&files.secrets, "secrets", may_create.secrets)?;
        let audit = load_or_create(&files.audit, "audit", may_create.audit)?;
        let signing = load_or_create(&files.signing, "audit-signing", may_create.signing)?;
        let unbound = UnboundKey::new(&aead::CHACHA20_POLY1305, &secrets).map_err(|_| KeyError::Malformed {
            path: files.secrets.display().to_string(),
            purpose: "secrets",
        })?;
        let signing = Ed25519KeyPair::from_seed_unchecked(&signing).map_err(|_| KeyError::Malformed {
            path: files.signing.display().to_string(),
            purpose: "audit-signing",
        })?;
        Ok(Self {
            files: files.clone(),
            secrets: LessSafeKey::new(unbound),
            audit: hmac::Key::new(hmac::HMAC_SHA256, &audit),
            signing,
        })
    }

    /// Where these keys came from and where checkpoints go.
    pub fn files(&self) -> &KeyFiles {
        &self.files
    }

    /// Encrypts a TOTP secret for the row of `account` in `table`: `v1:` + hex(nonce ‖
    /// ciphertext ‖ tag).
    pub fn seal(&self, table: &str, account: &str, secret: &str) -> Result<String, KeyError> {
        seal_with(&self.secrets, &associated_data(table, account), secret.as_bytes())
    }

    /// Decrypts what [`Keys::seal`] produced for the same table and account.
    pub fn open(&self, table: &str, account: &str, stored: &str) -> Result<String, KeyError> {
        let bad = || KeyError::BadSealedValue {
            table: table.to_string(),
            account: account.to_string(),
        };
        let plain = match open_with(&self.secrets, &associated_data(table, account), stored) {
            Opened::Plain(plain) => plain,
            Opened::Malformed => return Err(bad()),
            Opened::WrongKey => {
                return Err(KeyError::WrongSecretsKey {
                    path: self.files.secrets.display().to_string(),
                    table: table.to_string(),
                    account: account.to_string(),
                })
            }
        };
        String::from_utf8(plain).map_err(|_| bad())
    }

    /// HMAC-SHA-256 of `data` under the audit key, as hex.
    pub fn audit_mac(&self, data: &[u8]) -> String {
        hex(hmac::sign(&self.audit, data).as_ref())
    }

    /// The key that names operator accounts in the grid's shared throttle counters
    /// (`grid::throttle`): derived from the audit key, which every node of a grid shares,
    /// under a label of its own, so Redis never holds an account name and the audit key
    /// itself keys nothing else.
    pub fn throttle_account_key(&self) -> [u8; 32] {
        let mut key = [0u8; 32];
        key.copy_from_slice(hmac::sign(&self.audit, b"tsunagu throttle account scope v1").as_ref());
        key
    }

    /// Ed25519 signature of `message`, as hex.
    pub fn sign(&self, message: &[u8]) -> String {
        hex(self.signing.sign(message).as_ref())
    }

    /// Whether `signature_hex` is this relay's signature of `message`.
    pub fn signature_ok(&self, message: &[u8], signature_hex: &str) -> bool {
        let Some(sig) = unhex(signature_hex) else { return false };
        UnparsedPublicKey::new(&ED25519, self.signing.public_key().as_ref())
            .verify(message, &sig)
            .is_ok()
    }

    /// The checkpoint signing key's public half, as hex (printed in every checkpoint so a
    /// copy of the file can be matched to its relay).
    pub fn signing_public_hex(&self) -> String {
        hex(self.signing.public_key().as_ref())
    }
}

/// `v1:` + hex(nonce ‖ ciphertext ‖ tag) of `data` under `key`, bound to `aad`, with a
/// random nonce.
fn seal_with(key: &LessSafeKey, aad: &[u8], data: &[u8]) -> Result<String, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| KeyError::Random)?;
    let mut sealed = data.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut sealed)
        .map_err(|_| KeyError::Random)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(format!("{SEALED_PREFIX}{}", hex(&out)))
}

/// What opening a stored value came to.
enum Opened {
    Plain(Vec<u8>),
    /// Not a sealed value at all.
    Malformed,
    /// Sealed, but not under this key (or for another `aad`).
    WrongKey,
}

/// Opens what [`seal_with`] produced under the same key and `aad`.
fn open_with(key: &LessSafeKey, aad: &[u8], stored: &str) -> Opened {
    let Some(mut bytes) = stored.strip_prefix(SEALED_PREFIX).and_then(unhex) else {
        return Opened::Malformed;
    };
    if bytes.len() < NONCE_LEN + aead::CHACHA20_POLY1305.tag_len() {
        return Opened::Malformed;
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[..NONCE_LEN]);
    match key.open_in_place(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut bytes[NONCE_LEN..],
    ) {
        Ok(plain) => Opened::Plain(plain.to_vec()),
        Err(_) => Opened::WrongKey,
    }
}

/// What a sealed secret is bound to: a ciphertext moved to another row does not open.
fn associated_data(table: &str, account: &str) -> Vec<u8> {
    let mut ad = b"tsunagu-totp-v1".to_vec();
    for part in [table, account] {
        ad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        ad.extend_from_slice(part.as_bytes());
    }
    ad
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let pairs = s.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn load_or_create(path: &Path, purpose: &'static str, may_create: bool) -> Result<[u8; KEY_LEN], KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            tighten(path, false).map_err(io_err(path))?;
            parse_key_file(&text, purpose).ok_or_else(|| KeyError::Malformed {
                path: path.display().to_string(),
                purpose,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !may_create {
                return Err(KeyError::Missing {
                    path: path.display().to_string(),
                    purpose,
                });
            }
            create_key_file(path, purpose)
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

fn parse_key_file(text: &str, purpose: &str) -> Option<[u8; KEY_LEN]> {
    let mut words = text.split_whitespace();
    let (Some(KEY_FILE_MAGIC), Some(p), Some(key), None) = (words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    if p != purpose {
        return None;
    }
    unhex(key)?.try_into().ok()
}

/// Writes a new key to a temporary file and links it into place, so two processes starting
/// at once (the relay and a CLI command) end up with the same key, never half a file.
fn create_key_file(path: &Path, purpose: &'static str) -> Result<[u8; KEY_LEN], KeyError> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(|_| KeyError::Random)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(io_err(dir))?;
    }
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|_| KeyError::Random)?;
    let tmp = path.with_extension(format!("tmp-{}", hex(&suffix)));
    let written = (|| {
        let mut f = private_file_options().write(true).create_new(true).open(&tmp)?;
        f.write_all(format!("{KEY_FILE_MAGIC} {purpose} {}\n", hex(&key)).as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), purpose, "created a new key file");
            Ok(key)
        }
        // Someone else created it first: theirs is the key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(path, purpose, false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Open options that create files readable by the owner only.
pub fn private_file_options() -> std::fs::OpenOptions {
    #[allow(unused_mut)]
    let mut o = std::fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(PRIVATE_FILE_MODE);
    }
    o
}

/// Creates `dir` (and its parents) owner-only, and takes group and other access away from
/// it when it already existed.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(dir)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    tighten(dir, true)
}

/// Takes group and other access away from an existing file or directory (a no-op when it
/// is already owner-only, or on systems without Unix modes).
pub fn tighten(path: &Path, is_dir: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            let want = if is_dir { PRIVATE_DIR_MODE } else { PRIVATE_FILE_MODE };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))?;
            tracing::info!(path = %path.display(), "took group and other access away");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, is_dir);
    Ok(())
}

/// A key file of its own that seals one kind of value kept in the database, for values
/// that not every holder of `secrets.key` may read: the client CA's private key is sealed
/// with `DATA/keys/client-ca.key`, which only the nodes that issue certificates hold.
/// ChaCha20-Poly1305 as for TOTP secrets, with `label` as associated data.
pub struct SealingKey {
    path: PathBuf,
    key: LessSafeKey,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SealingKey {
    /// Loads the key file at `path` (a tsunagu key file for `purpose`), creating it (0600,
    /// in a 0700 directory) when `may_create` and it does not exist.
    pub fn load(path: &Path, purpose: &'static str, may_create: bool) -> Result<Self, KeyError> {
        let bytes = load_or_create(path, purpose, may_create)?;
        let unbound = UnboundKey::new(&aead::CHACHA20_POLY1305, &bytes).map_err(|_| KeyError::Malformed {
            path: path.display().to_string(),
            purpose,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            key: LessSafeKey::new(unbound),
        })
    }

    /// Whether the key file exists (without reading it).
    pub fn exists(path: &Path) -> bool {
        path.exists()
    }

    /// `v1:` + hex(nonce ‖ ciphertext ‖ tag) of `data`, bound to `label`.
    pub fn seal(&self, label: &str, data: &[u8]) -> Result<String, KeyError> {
        seal_with(&self.key, label.as_bytes(), data)
    }

    /// Opens what [`SealingKey::seal`] produced for the same label.
    pub fn open(&self, label: &str, stored: &str) -> Result<Vec<u8>, KeyError> {
        match open_with(&self.key, label.as_bytes(), stored) {
            Opened::Plain(plain) => Ok(plain),
            Opened::Malformed | Opened::WrongKey => Err(KeyError::WrongKey {
                path: self.path.display().to_string(),
                what: label.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &Path) -> Keys {
        Keys::load(
            &KeyFiles::in_data_dir(dir),
            MayCreate {
                secrets: true,
                audit: true,
                signing: true,
            },
        )
        .unwrap()
    }

    #[test]
    fn sealed_secrets_open_only_for_their_row_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path());
        let sealed = k.seal("operators", "alice", "JBSWY3DPEHPK3PXP").unwrap();
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("JBSWY3DP"));
        assert_ne!(
            sealed,
            k.seal("operators", "alice", "JBSWY3DPEHPK3PXP").unwrap(),
            "fresh nonce"
        );
        assert_eq!(k.open("operators", "alice", &sealed).unwrap(), "JBSWY3DPEHPK3PXP");
        assert!(matches!(
            k.open("operators", "bob", &sealed),
            Err(KeyError::WrongSecretsKey { .. })
        ));
        assert!(matches!(
            k.open("admins", "alice", &sealed),
            Err(KeyError::WrongSecretsKey { .. })
        ));
        assert!(matches!(
            k.open("operators", "alice", "v1:zz"),
            Err(KeyError::BadSealedValue { .. })
        ));
        // Loading again reads the same keys; another data dir has other keys.
        assert_eq!(
            keys(dir.path()).open("operators", "alice", &sealed).unwrap(),
            "JBSWY3DPEHPK3PXP"
        );
        let other = tempfile::tempdir().unwrap();
        assert!(keys(other.path()).open("operators", "alice", &sealed).is_err());
    }

    #[test]
    fn missing_keys_are_only_created_when_allowed_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::in_data_dir(&dir.path().join("data"));
        let none = MayCreate {
            secrets: false,
            audit: true,
            signing: true,
        };
        let err = Keys::load(&files, none).unwrap_err().to_string();
        assert!(err.contains("secrets.key is missing"), "{err}");
        let k = keys(&dir.path().join("data"));
        assert!(k.signature_ok(b"head", &k.sign(b"head")));
        assert!(!k.signature_ok(b"head2", &k.sign(b"head")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [&files.secrets, &files.audit, &files.signing] {
                assert_eq!(
                    std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
                    0o600,
                    "{f:?}"
                );
            }
            let keys_dir = files.secrets.parent().unwrap();
            assert_eq!(std::fs::metadata(keys_dir).unwrap().permissions().mode() & 0o777, 0o700);
        }
        // A key file given for the wrong purpose is refused by name.
        std::fs::copy(&files.audit, &files.secrets).unwrap();
        let err = Keys::load(&files, none).unwrap_err().to_string();
        assert!(err.contains("not a tsunagu secrets key file"), "{err}");
    }
}
