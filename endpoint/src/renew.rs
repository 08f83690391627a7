//! The operator's client certificate renews itself: once about two thirds of its lifetime
//! have passed (a little earlier or later at random, so a fleet issued on one day does not
//! renew in one minute), the app asks the relay over an authenticated connection to sign a
//! new certificate for the same key and device, and writes it over the `.p12` file under the
//! same import password. The old certificate stays valid until it expires.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tsunagu_proto::pb::{self, frame::Body};

use crate::dial::{self, ClientIdentity, DialConfig};

/// Renewal is due after this share of the lifetime (the "about two thirds").
const RENEW_AT: f64 = 2.0 / 3.0;
/// Spread of the due time, as a share of the lifetime either way: ±5 %.
const JITTER: f64 = 0.05;
/// Waiting for each answer of the relay.
const STEP: Duration = Duration::from_secs(15);

/// The certificate file an app was started with (`--cert`), for renewing it in place.
#[derive(Clone)]
pub struct CertFile {
    pub path: PathBuf,
    /// The import password (never shown by `Debug`).
    pub password: String,
    pub identity: Arc<ClientIdentity>,
}

impl std::fmt::Debug for CertFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CertFile {
    /// Reads `path` with `password`.
    pub fn open(path: &Path, password: &str) -> Result<Self, String> {
        let identity = ClientIdentity::from_p12_file(path, password)?;
        Ok(Self {
            path: path.to_path_buf(),
            password: password.to_string(),
            identity: Arc::new(identity),
        })
    }
}

/// A renewed certificate.
#[derive(Debug, Clone)]
pub struct Renewed {
    pub serial: String,
    pub not_after_unix_ms: i64,
}

/// When the certificate's renewal is due: `not_before + RENEW_AT × lifetime`, moved by
/// `jitter` (−1 to 1) times `JITTER × lifetime`.
pub fn due_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default().as_secs_f64();
    let offset = life * (RENEW_AT + JITTER * jitter.clamp(-1.0, 1.0));
    not_before + Duration::from_secs_f64(offset.max(0.0))
}

/// A random number in −1..1 from the OS CSPRNG (0 if it fails: no spread, still correct).
pub fn random_jitter() -> f64 {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        return 0.0;
    }
    (f64::from(u32::from_be_bytes(b)) / f64::from(u32::MAX)) * 2.0 - 1.0
}

/// Whether `cert`'s renewal is due at `now`.
pub fn is_due(cert: &ClientIdentity, now: SystemTime, jitter: f64) -> bool {
    match cert.validity() {
        Some((from, until)) => now >= due_at(from, until, jitter),
        None => false,
    }
}

/// Asks the relay at `dial` to renew `file`'s certificate, logging in as `user`; on success
/// writes the new `.p12` over `file.path` (same key, same password) and returns the new
/// identity with what the relay said of it.
pub async fn renew(
    dial_cfg: &DialConfig,
    login: pb::Login,
    file: &CertFile,
) -> Result<(Arc<ClientIdentity>, Renewed), String> {
    let csr = file.identity.signing_request()?;
    let mut conn = dial::dial(dial_cfg).await.map_err(|e| e.to_string())?;
    let refused = |e: pb::Error| format!("the relay refused: {}", e.message);
    conn.writer
        .send_body(Body::Login(login))
        .await
        .map_err(|e| e.to_string())?;
    match next(&mut conn.reader).await? {
        Body::LoginOk(_) => {}
        Body::Error(e) => return Err(refused(e)),
        _ => return Err("unexpected answer to the login".into()),
    }
    conn.writer
        .send_body(Body::RenewCertificate(pb::RenewCertificate { csr: csr.into() }))
        .await
        .map_err(|e| e.to_string())?;
    let renewed = match next(&mut conn.reader).await? {
        Body::CertificateRenewed(r) => r,
        Body::Error(e) => return Err(refused(e)),
        _ => return Err("unexpected answer to the renewal".into()),
    };
    let identity = file
        .identity
        .with_chain(vec![renewed.certificate.to_vec(), renewed.ca.to_vec()])?;
    let p12 = identity.to_p12(&file.password)?;
    write_replacing(&file.path, &p12).map_err(|e| format!("cannot write {}: {e}", file.path.display()))?;
    Ok((
        Arc::new(identity),
        Renewed {
            serial: renewed.serial,
            not_after_unix_ms: renewed.not_after_unix_ms,
        },
    ))
}

async fn next(reader: &mut dial::Reader) -> Result<Body, String> {
    match reader.read_timeout(STEP).await {
        Ok(Some(raw)) => raw
            .frame
            .body
            .ok_or_else(|| "an empty frame from the relay".to_string()),
        Ok(None) => Err("the relay closed the connection".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes `data` to a new owner-only file beside `path`, then renames it over `path`, so the
/// old file stays whole until the new one is.
fn write_replacing(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("p12.renewing");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_due_at_two_thirds_of_the_lifetime_give_or_take_five_percent() {
        let from = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let until = from + Duration::from_secs(300);
        assert_eq!(due_at(from, until, 0.0), from + Duration::from_secs(200));
        assert_eq!(due_at(from, until, 1.0), from + Duration::from_secs(215));
        assert_eq!(due_at(from, until, -1.0), from + Duration::from_secs(185));
        assert_eq!(due_at(from, until, 7.0), from + Duration::from_secs(215), "clamped");
        for _ in 0..100 {
            let j = random_jitter();
            assert!((-1.0..=1.0).contains(&j));
        }
    }
}
