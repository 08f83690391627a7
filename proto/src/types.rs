//! Validated domain types shared by relay, operator and client.

use std::fmt;

use crate::pb::Permission;

/// Number of digits in a session code.
pub const CODE_DIGITS: usize = 8;
/// Number of distinct session codes (10^8).
pub const CODE_SPACE: u64 = 100_000_000;

/// An 8-digit one-time session code. Display and `Debug` never print the digits, so a code
/// cannot end up in a log by accident; use [`SessionCode::reveal`] where the digits are
/// meant to be shown (to the operator who asked for it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionCode(u32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodeError {
    #[error("a session code has exactly 8 digits")]
    WrongLength,
    #[error("a session code contains only digits (spaces and dashes are ignored)")]
    NotDigits,
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

impl SessionCode {
    /// Parses what a person typed or pasted: digits, with spaces and dashes ignored.
    pub fn parse(input: &str) -> Result<Self, CodeError> {
        let mut value: u32 = 0;
        let mut digits = 0usize;
        for ch in input.trim().chars() {
            match ch {
                ' ' | '-' | '\u{3000}' => continue,
                '0'..='9' => {
                    digits += 1;
                    if digits > CODE_DIGITS {
                        return Err(CodeError::WrongLength);
                    }
                    value = value * 10 + (ch as u32 - '0' as u32);
                }
                _ => return Err(CodeError::NotDigits),
            }
        }
        if digits != CODE_DIGITS {
            return Err(CodeError::WrongLength);
        }
        Ok(Self(value))
    }

    /// A uniformly random code from the operating system's CSPRNG (rejection sampling, so
    /// no code is likelier than another).
    pub fn random() -> Result<Self, CodeError> {
        // Largest multiple of CODE_SPACE that fits in u32: values at or above it are redrawn.
        const ZONE: u32 = (u32::MAX / CODE_SPACE as u32) * CODE_SPACE as u32;
        loop {
            let mut bytes = [0u8; 4];
            getrandom::fill(&mut bytes).map_err(|e| CodeError::Random(e.to_string()))?;
            let v = u32::from_le_bytes(bytes);
            if v < ZONE {
                return Ok(Self(v % CODE_SPACE as u32));
            }
        }
    }

    /// The 8 digits, zero-padded. Only for showing the code to the person who owns it.
    pub fn reveal(&self) -> String {
        format!("{:08}", self.0)
    }

    /// The code as a number, for keyed lookups.
    pub fn as_u32(&self) -> u32 {
        self.0
    }
}

impl fmt::Debug for SessionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionCode(********)")
    }
}

/// A set of session permissions (view, control, files, chat, clipboard) as a bit set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PermissionSet(u8);

impl PermissionSet {
    pub const EMPTY: Self = Self(0);
    pub const ALL: Self = Self(0b1_1111);
    pub const ORDER: [Permission; 5] = [
        Permission::View,
        Permission::Control,
        Permission::Files,
        Permission::Chat,
        Permission::Clipboard,
    ];

    fn bit(p: Permission) -> u8 {
        match p {
            Permission::Unspecified => 0,
            Permission::View => 1,
            Permission::Control => 2,
            Permission::Files => 4,
            Permission::Chat => 8,
            Permission::Clipboard => 16,
        }
    }

    pub fn contains(&self, p: Permission) -> bool {
        let b = Self::bit(p);
        b != 0 && self.0 & b == b
    }

    pub fn insert(&mut self, p: Permission) {
        self.0 |= Self::bit(p);
    }

    pub fn remove(&mut self, p: Permission) {
        self.0 &= !Self::bit(p);
    }

    pub fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn bits(&self) -> u8 {
        self.0
    }

    pub fn from_bits(bits: u8) -> Self {
        Self(bits & Self::ALL.0)
    }

    /// From wire values; unknown numbers are ignored (a newer peer may know more).
    pub fn from_wire(values: &[i32]) -> Self {
        let mut set = Self::EMPTY;
        for v in values {
            if let Ok(p) = Permission::try_from(*v) {
                set.insert(p);
            }
        }
        set
    }

    pub fn to_wire(&self) -> Vec<i32> {
        self.iter().map(|p| p as i32).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = Permission> + '_ {
        Self::ORDER.into_iter().filter(|p| self.contains(*p))
    }

    /// Lower-case names: `view`, `control`, `files`, `chat`, `clipboard`.
    pub fn names(&self) -> Vec<&'static str> {
        self.iter().map(permission_name).collect()
    }

    /// Parses names (`view`, `control`, `files`, `chat`, `clipboard`, or `all`); unknown names
    /// are errors.
    pub fn parse_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut set = Self::EMPTY;
        for n in names {
            let n = n.trim();
            if n.is_empty() {
                continue;
            }
            if n == "all" {
                set = Self::ALL;
                continue;
            }
            set.insert(permission_from_name(n).ok_or_else(|| {
                format!("unknown permission {n:?} (expected view, control, files, chat, clipboard or all)")
            })?);
        }
        Ok(set)
    }
}

impl fmt::Debug for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.names().join(","))
    }
}

impl fmt::Display for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&self.names().join(","))
        }
    }
}

pub fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::Unspecified => "unspecified",
        Permission::View => "view",
        Permission::Control => "control",
        Permission::Files => "files",
        Permission::Chat => "chat",
        Permission::Clipboard => "clipboard",
    }
}

pub fn permission_from_name(name: &str) -> Option<Permission> {
    match name {
        "view" => Some(Permission::View),
        "control" => Some(Permission::Control),
        "files" => Some(Permission::Files),
        "chat" => Some(Permission::Chat),
        "clipboard" => Some(Permission::Clipboard),
        _ => None,
    }
}

/// The automation contract's name for an error code (`bad_code`, `expired`, ...).
pub fn error_code_name(code: crate::pb::ErrorCode) -> &'static str {
    use crate::pb::ErrorCode as E;
    match code {
        E::Unspecified => "error",
        E::BadCode => "bad_code",
        E::Expired => "expired",
        E::Used => "used",
        E::Throttled => "throttled",
        E::AuthFailed => "auth_failed",
        E::VersionMismatch => "version_mismatch",
        E::Protocol => "protocol",
        E::Busy => "busy",
        E::Forbidden => "forbidden",
        E::Timeout => "timeout",
        E::Internal => "internal",
        E::Unavailable => "unavailable",
        E::ResumeRefused => "resume_refused",
        E::Certificate => "certificate",
    }
}

/// The automation contract's and the history's name for an end reason.
pub fn end_reason_name(reason: crate::pb::EndReason) -> &'static str {
    use crate::pb::EndReason as R;
    match reason {
        R::Unspecified => "unspecified",
        R::OperatorEnded => "operator_ended",
        R::ClientEnded => "client_ended",
        R::ConsentDenied => "consent_denied",
        R::ConsentTimeout => "consent_timeout",
        R::Expired => "expired",
        R::OperatorDisconnected => "operator_disconnected",
        R::ClientDisconnected => "client_disconnected",
        R::IdleTimeout => "idle_timeout",
        R::RelayShutdown => "relay_shutdown",
        R::ProtocolError => "protocol_error",
        R::AdminEnded => "admin_ended",
        R::Moved => "moved",
        R::CertificateRevoked => "certificate_revoked",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_typed_and_pasted_forms() {
        let c = SessionCode::parse("1234-5678").unwrap();
        assert_eq!(c.reveal(), "12345678");
        assert_eq!(SessionCode::parse(" 1234 5678 ").unwrap(), c);
        assert_eq!(SessionCode::parse("00000042").unwrap().reveal(), "00000042");
        assert_eq!(SessionCode::parse("1234567").unwrap_err(), CodeError::WrongLength);
        assert_eq!(SessionCode::parse("123456789").unwrap_err(), CodeError::WrongLength);
        assert_eq!(SessionCode::parse("1234567a").unwrap_err(), CodeError::NotDigits);
        assert_eq!(SessionCode::parse("").unwrap_err(), CodeError::WrongLength);
    }

    #[test]
    fn debug_never_shows_digits() {
        let c = SessionCode::parse("12345678").unwrap();
        assert!(!format!("{c:?}").contains("1234"));
    }

    #[test]
    fn random_codes_are_in_range_and_vary() {
        let codes: std::collections::HashSet<u32> =
            (0..1000).map(|_| SessionCode::random().unwrap().as_u32()).collect();
        assert!(codes.iter().all(|c| (*c as u64) < CODE_SPACE));
        assert!(codes.len() > 990, "1000 draws from 10^8 should almost never collide");
    }

    #[test]
    fn permission_sets() {
        let s = PermissionSet::parse_names(["view", "chat"]).unwrap();
        assert!(s.contains(Permission::View) && s.contains(Permission::Chat));
        assert!(!s.contains(Permission::Control));
        assert_eq!(s.names(), vec!["view", "chat"]);
        assert_eq!(PermissionSet::from_wire(&s.to_wire()), s);
        assert_eq!(
            PermissionSet::from_wire(&[1, 99, -3]),
            PermissionSet::parse_names(["view"]).unwrap()
        );
        assert!(PermissionSet::parse_names(["root"]).is_err());
        assert_eq!(
            s.intersect(PermissionSet::parse_names(["view"]).unwrap()).names(),
            vec!["view"]
        );
    }
}
