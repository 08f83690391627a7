//! The join bundle: the client program with the relay's address and trust anchor appended,
//! as a relay's download page (`/join`) serves it, so a customer downloads one file, runs
//! it, types the code and presses Connect.
//!
//! The program file is left as it is; after it comes a trailer the client reads from its
//! own executable at start:
//!
//! ```text
//! payload (at most MAX_PAYLOAD bytes) | SHA-256(payload) | payload length (u32 LE) | MAGIC
//! ```
//!
//! The payload is text: `key=value` lines (`relay`, then optionally `ports`), then the
//! relay's CA certificate in PEM when the relay's certificate is not publicly trusted. The
//! digest tells a damaged download from a bundle; the client refuses a damaged one with a
//! clear message rather than dial somewhere half-read.

use std::io::{Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

/// Ends every bundle: a file that does not end with it is a plain program.
pub const MAGIC: &[u8; 16] = b"tsunagu-join-v1\n";

/// Largest payload a client reads: an address list and a CA certificate fit in a fraction
/// of it, and a hostile file cannot make the client allocate more.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// SHA-256, length, magic.
const TRAILER_FIXED: usize = 32 + 4 + MAGIC.len();

/// What a bundle tells the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinConfig {
    /// The relays, as `--relay` takes them (`HOST[:PORT]`, comma-separated).
    pub relay: String,
    /// Ports to try on every relay, as `--ports`; empty: the client's default.
    pub ports: Vec<u16>,
    /// The relay's CA certificate (PEM), trusted besides the system's store; `None` when the
    /// relay's certificate is publicly trusted.
    pub ca_pem: Option<String>,
}

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read the program file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the downloaded program is damaged ({0}); download it again")]
    Damaged(&'static str),
    #[error("the downloaded program carries a setting this version does not know: {0}")]
    Unknown(String),
}

impl JoinConfig {
    /// The trailer to append to the client program.
    ///
    /// # Panics
    /// Never for what a relay writes: the payload is checked against [`MAX_PAYLOAD`] by
    /// [`JoinConfig::validate`]; a larger one is a caller's bug.
    pub fn trailer(&self) -> Vec<u8> {
        let payload = self.payload();
        assert!(payload.len() <= MAX_PAYLOAD, "a join payload over MAX_PAYLOAD");
        let mut out = payload.clone();
        out.extend_from_slice(&Sha256::digest(&payload));
        // Fits: at most MAX_PAYLOAD (64 KiB).
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(MAGIC);
        out
    }

    /// Whether this configuration can be written into a bundle: a relay list of plain
    /// address characters, and a payload within [`MAX_PAYLOAD`].
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.relay.is_empty() {
            return Err("no relay address");
        }
        if !self
            .relay
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[],_".contains(&b))
        {
            return Err("the relay address holds characters an address cannot have");
        }
        if self.payload().len() > MAX_PAYLOAD {
            return Err("the CA certificate is too large");
        }
        Ok(())
    }

    fn payload(&self) -> Vec<u8> {
        let mut text = format!("relay={}\n", self.relay);
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            text.push_str(&format!("ports={}\n", ports.join(",")));
        }
        if let Some(pem) = &self.ca_pem {
            text.push_str(pem.trim_end());
            text.push('\n');
        }
        text.into_bytes()
    }

    fn parse(payload: &[u8]) -> Result<Self, BundleError> {
        let text = std::str::from_utf8(payload).map_err(|_| BundleError::Damaged("not text"))?;
        let (fields, pem) = match text.find("-----BEGIN") {
            Some(at) => (&text[..at], Some(text[at..].to_string())),
            None => (text, None),
        };
        let mut relay = None;
        let mut ports = Vec::new();
        for line in fields.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line.split_once('=').ok_or(BundleError::Damaged("a line without '='"))?;
            match key {
                "relay" => relay = Some(value.to_string()),
                "ports" => {
                    ports = value
                        .split(',')
                        .map(|p| p.parse::<u16>())
                        .collect::<Result<_, _>>()
                        .map_err(|_| BundleError::Damaged("a port is not a number"))?
                }
                other => return Err(BundleError::Unknown(other.chars().take(32).collect())),
            }
        }
        let config = Self {
            relay: relay.ok_or(BundleError::Damaged("no relay address"))?,
            ports,
            ca_pem: pem,
        };
        config.validate().map_err(BundleError::Damaged)?;
        Ok(config)
    }
}

/// Reads the bundle at the end of `file` (the client's own executable): `Ok(None)` for a
/// plain program, the configuration when the trailer is whole and its digest matches.
pub fn read<F: Read + Seek>(file: &mut F) -> Result<Option<JoinConfig>, BundleError> {
    let len = file.seek(SeekFrom::End(0))?;
    if len < TRAILER_FIXED as u64 {
        return Ok(None);
    }
    let mut fixed = [0u8; TRAILER_FIXED];
    file.seek(SeekFrom::End(-(TRAILER_FIXED as i64)))?;
    file.read_exact(&mut fixed)?;
    let (digest, rest) = fixed.split_at(32);
    let (size, magic) = rest.split_at(4);
    if magic != MAGIC {
        return Ok(None);
    }
    // `split_at(4)` left exactly four bytes: the conversion cannot fail.
    let size = u32::from_le_bytes(size.try_into().expect("four bytes")) as usize;
    // The limit before the allocation: a hostile length allocates nothing.
    if size > MAX_PAYLOAD || (size + TRAILER_FIXED) as u64 > len {
        return Err(BundleError::Damaged("the trailer's length is out of range"));
    }
    let mut payload = vec![0u8; size];
    file.seek(SeekFrom::End(-((size + TRAILER_FIXED) as i64)))?;
    file.read_exact(&mut payload)?;
    if Sha256::digest(&payload).as_slice() != digest {
        return Err(BundleError::Damaged("its check sum does not match"));
    }
    JoinConfig::parse(&payload).map(Some)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn bundle(program: &[u8], config: &JoinConfig) -> Vec<u8> {
        let mut out = program.to_vec();
        out.extend_from_slice(&config.trailer());
        out
    }

    fn sample() -> JoinConfig {
        JoinConfig {
            relay: "relay.example.com:443,[2001:db8::1]".into(),
            ports: vec![443, 7615, 80],
            ca_pem: Some(PEM.into()),
        }
    }

    #[test]
    fn a_bundle_reads_back_what_was_written() {
        let file = bundle(b"\x7fELF program bytes", &sample());
        assert_eq!(read(&mut Cursor::new(file)).unwrap(), Some(sample()));
        let plain = JoinConfig {
            relay: "relay.example.com".into(),
            ports: vec![],
            ca_pem: None,
        };
        let file = bundle(b"", &plain);
        assert_eq!(read(&mut Cursor::new(file)).unwrap(), Some(plain));
    }

    #[test]
    fn a_plain_program_is_no_bundle() {
        assert_eq!(read(&mut Cursor::new(b"\x7fELF".to_vec())).unwrap(), None);
        assert_eq!(read(&mut Cursor::new(vec![0u8; 4096])).unwrap(), None);
    }

    #[test]
    fn a_damaged_bundle_is_refused_clearly() {
        let mut file = bundle(b"program", &sample());
        let at = 10;
        file[at] ^= 1;
        let err = read(&mut Cursor::new(file)).unwrap_err();
        assert!(err.to_string().contains("download it again"), "{err}");

        // A length beyond the file or the limit allocates nothing and is refused.
        let mut file = bundle(b"program", &sample());
        let n = file.len();
        file[n - 20..n - 16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read(&mut Cursor::new(file)), Err(BundleError::Damaged(_))));
    }

    #[test]
    fn hostile_addresses_are_not_written() {
        let mut c = sample();
        c.relay = "evil\nports=1".into();
        assert!(c.validate().is_err());
        c.relay = String::new();
        assert!(c.validate().is_err());
        c.relay = "ok".into();
        c.ca_pem = Some("x".repeat(MAX_PAYLOAD));
        assert!(c.validate().is_err());
    }
}
