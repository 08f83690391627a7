//! Second factors: TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, one step of clock skew
//! either way, what every authenticator app speaks), its enrolment QR code, and one-time
//! recovery codes. Secrets are base32 strings; they are secrets and are never logged.

use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Secret, TOTP};

use crate::hex::hex;

/// Seconds per TOTP step, as authenticator apps assume.
pub const STEP_SECS: u64 = 30;
/// Recovery codes handed out per enrolment.
pub const RECOVERY_CODES: usize = 10;

fn totp(secret_b32: &str) -> Option<TOTP> {
    let bytes = Secret::Encoded(secret_b32.to_string()).to_bytes().ok()?;
    // 160-bit secrets (RFC 4226's recommendation); one step of skew absorbs clock drift.
    TOTP::new(Algorithm::SHA1, 6, 1, STEP_SECS, bytes).ok()
}

/// A fresh random 160-bit secret, base32.
pub fn new_secret() -> Result<String, String> {
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw).map_err(|e| e.to_string())?;
    match Secret::Raw(raw.to_vec()).to_encoded() {
        Secret::Encoded(s) => Ok(s),
        Secret::Raw(_) => Err("base32 encoding failed".into()),
    }
}

/// The code for Unix time `unix_secs` (what the authenticator app shows).
pub fn code_at(secret_b32: &str, unix_secs: u64) -> Option<String> {
    totp(secret_b32).map(|t| t.generate(unix_secs))
}

/// Checks a code typed by a person at Unix time `unix_secs`.
pub fn verify(secret_b32: &str, code: &str, unix_secs: u64) -> bool {
    verify_step(secret_b32, code, unix_secs).is_some()
}

/// Like [`verify`], and says which time step the code belongs to, so a caller can refuse
/// a code that was already used (replay within the skew window).
pub fn verify_step(secret_b32: &str, code: &str, unix_secs: u64) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret_b32)?;
    let now = unix_secs / STEP_SECS;
    [now.saturating_sub(1), now, now + 1].into_iter().find(|step| {
        let expected = t.generate(step * STEP_SECS);
        // Compare without an early exit.
        expected.len() == code.len()
            && expected
                .bytes()
                .zip(code.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

/// Remembers the last accepted TOTP step per account and refuses any step not newer, so a
/// code seen over someone's shoulder cannot be used again.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    last: dashmap::DashMap<String, u64>,
}

impl ReplayGuard {
    /// Checks `code` for `account` and, when valid and unused, records its step.
    pub fn accept(&self, account: &str, secret_b32: &str, code: &str, unix_secs: u64) -> bool {
        let Some(step) = verify_step(secret_b32, code, unix_secs) else {
            return false;
        };
        let mut last = self.last.entry(account.to_string()).or_insert(0);
        if step <= *last {
            return false;
        }
        *last = step;
        true
    }
}

/// Now, in Unix seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `otpauth://` URL an authenticator app scans.
pub fn otpauth_url(secret_b32: &str, account: &str) -> String {
    // Account names are letters, digits and . _ - @ (accounts::validate_name): only '@'
    // needs escaping in the label.
    let label = account.replace('@', "%40");
    format!(
        "otpauth://totp/tsunagu:{label}?secret={secret_b32}&issuer=tsunagu&algorithm=SHA1&digits=6&period={STEP_SECS}"
    )
}

/// The URL as an inline SVG QR code (no script, no external image: fits the console's CSP).
pub fn qr_svg(url: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(url.as_bytes()).map_err(|e| e.to_string())?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .build();
    // Drop the XML declaration so the SVG can sit inside HTML.
    Ok(match svg.find("<svg") {
        Some(i) => svg[i..].to_string(),
        None => svg,
    })
}

/// Alphabet of recovery codes: no 0/O or 1/I/L to misread.
const RECOVERY_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";

/// Fresh recovery codes (`XXXXX-XXXXX`, about 49 bits each) and their hashes to store.
pub fn new_recovery_codes() -> Result<(Vec<String>, Vec<String>), String> {
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let mut raw = [0u8; 10];
        getrandom::fill(&mut raw).map_err(|e| e.to_string())?;
        let chars: String = raw
            .iter()
            .map(|b| RECOVERY_ALPHABET[*b as usize % RECOVERY_ALPHABET.len()] as char)
            .collect();
        codes.push(format!("{}-{}", &chars[..5], &chars[5..]));
    }
    let hashes = codes.iter().map(|c| recovery_hash(c)).collect();
    Ok((codes, hashes))
}

/// The stored form of a recovery code: SHA-256 of its normalised text. The codes are
/// random and long enough that a fast hash does not make guessing practical.
pub fn recovery_hash(code: &str) -> String {
    let norm: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hex(&Sha256::digest(norm.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vector_and_skew() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", T = 59 s -> 94287082
        // (8 digits); the last 6 digits are what a 6-digit TOTP shows.
        let secret = match Secret::Raw(b"12345678901234567890".to_vec()).to_encoded() {
            Secret::Encoded(s) => s,
            _ => unreachable!(),
        };
        assert_eq!(code_at(&secret, 59).unwrap(), "287082");
        assert!(verify(&secret, "287 082", 59));
        assert!(verify(&secret, "287082", 59 + 30), "one step of skew is accepted");
        assert!(!verify(&secret, "287082", 59 + 90));
        assert!(!verify(&secret, "28708", 59));
        assert!(!verify(&secret, "abcdef", 59));
        let guard = ReplayGuard::default();
        assert!(guard.accept("a", &secret, "287082", 59));
        assert!(
            !guard.accept("a", &secret, "287082", 60),
            "the same code twice is refused"
        );
        assert!(guard.accept("b", &secret, "287082", 59), "per account");
    }

    #[test]
    fn secrets_recovery_codes_and_qr() {
        let s = new_secret().unwrap();
        assert_eq!(s.len(), 32);
        let now = now_secs();
        assert!(verify(&s, &code_at(&s, now).unwrap(), now));
        let (codes, hashes) = new_recovery_codes().unwrap();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert_eq!(recovery_hash(&codes[0].to_lowercase()), hashes[0]);
        assert!(!hashes[0].contains(&codes[0]));
        let url = otpauth_url(&s, "root@example");
        assert!(url.contains("tsunagu:root%40example"));
        assert!(qr_svg(&url).unwrap().starts_with("<svg"));
    }
}
