//! Every reason the relay refuses a connection or a request in the greeting, and the one
//! function that turns it into what the peer is told.
//!
//! The wording is part of the product: the apps show it to people, scripts match on it
//! (docs/automation.md), and the tests check it. It is written once, here.

use std::time::Duration;

use tsunagu_proto::pb::{ErrorCode, Frame};
use tsunagu_proto::transport::error_frame;

use crate::directory::JoinRefusal;
use crate::resume::ResumeRefusal;

/// Why a connection (or one request on it) is refused. Grouped by who is at fault: the
/// peer's program, the person (a wrong secret, a code), the admin's rules, or the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    // The peer's program.
    /// The first message was not `Hello`.
    NoHello,
    /// `Hello` with another protocol version than the relay's.
    VersionMismatch {
        ours: u32,
        theirs: u32,
    },
    /// After `Hello`, neither `Login` nor `Join`.
    ExpectedLoginOrJoin,
    /// After login, not `RequestCode`.
    ExpectedRequestCode,
    /// A frame that could not be decoded (its decoder's explanation).
    Malformed(String),
    /// The peer said nothing for this long where the relay waited for it.
    Timeout(Duration),

    // The person: secrets and codes.
    /// Wrong name or password (or one longer than any account can have).
    WrongPassword,
    /// TOTP required and missing, wrong or replayed.
    WrongTotp,
    /// Too many failed attempts from this network or on this account.
    Throttled {
        retry_after: Duration,
    },
    /// A code that is not 8 digits.
    MalformedCode,
    /// A code that was never issued (or is long forgotten).
    UnknownCode,
    /// A code that ran out, or whose operator left.
    ExpiredCode,
    /// A code a client already used.
    UsedCode,
    /// A resume that showed no current token and signature of that session's side, or
    /// came for a session that is over.
    ResumeRefused(ResumeRefusal),

    // The admin's rules.
    Suspended,
    /// The IP rules refuse the address at login.
    LoginAddressRefused,
    /// The IP rules refuse the address when a code is asked for.
    WorkAddressRefused,
    /// TOTP is required but the account has no secret enrolled.
    TotpNotEnrolled,
    /// A client certificate is required and none of the account's valid ones was
    /// presented, or revocation cannot be checked now.
    Certificate(crate::certs::CertRefusal),
    /// The account was deleted after the login.
    AccountGone,
    /// The operator already runs as many sessions as the admin allows.
    SessionCap {
        max: u32,
    },
    /// The admin allows none of the permissions the operator asked for.
    NothingAllowed,

    // The relay.
    /// The password check could not get a place in the verifier's queue in time.
    Busy,
    /// The account store could not be read.
    CheckFailed,
    /// No session code could be drawn.
    NoCode,
    /// A grid node cannot reach the grid's shared state (Redis): nothing was decided.
    Unavailable,
}

impl Refusal {
    /// The error code and message the peer is told: the one mapping.
    pub fn told(&self) -> (ErrorCode, String) {
        use Refusal::*;
        let (code, message): (ErrorCode, String) = match self {
            NoHello => (ErrorCode::Protocol, "the first message must be Hello".into()),
            VersionMismatch { ours, theirs } => (
                ErrorCode::VersionMismatch,
                format!("this relay speaks protocol version {ours}, the program connecting speaks {theirs}; update the older side"),
            ),
            ExpectedLoginOrJoin => (ErrorCode::Protocol, "expected Login or Join".into()),
            ExpectedRequestCode => (ErrorCode::Protocol, "expected RequestCode".into()),
            Malformed(why) => (ErrorCode::Protocol, why.clone()),
            Timeout(after) => (ErrorCode::Timeout, format!("timed out after {after:?} waiting for the peer")),
            WrongPassword => (ErrorCode::AuthFailed, "wrong user name or password".into()),
            WrongTotp => (ErrorCode::AuthFailed, "wrong or missing TOTP code".into()),
            Throttled { retry_after } => (
                ErrorCode::Throttled,
                format!("too many failed attempts; try again in {} s", retry_after.as_secs().max(1)),
            ),
            MalformedCode => (ErrorCode::BadCode, "a session code has 8 digits".into()),
            UnknownCode => (
                ErrorCode::BadCode,
                "no session has this code; check the digits with the operator".into(),
            ),
            ExpiredCode => (
                ErrorCode::Expired,
                "this code has expired; ask the operator for a new one".into(),
            ),
            UsedCode => (
                ErrorCode::Used,
                "this code was already used; ask the operator for a new one".into(),
            ),
            ResumeRefused(ResumeRefusal::UnknownSession) => (
                ErrorCode::Expired,
                "the session has ended and cannot be resumed".into(),
            ),
            ResumeRefused(ResumeRefusal::NotResumable) => (
                ErrorCode::ResumeRefused,
                "this side of the session cannot be resumed".into(),
            ),
            ResumeRefused(ResumeRefusal::WrongToken | ResumeRefusal::BadSignature) => (
                ErrorCode::ResumeRefused,
                "the resume token is not valid for this session".into(),
            ),
            Suspended => (ErrorCode::Forbidden, "this operator account is suspended".into()),
            LoginAddressRefused => (
                ErrorCode::Forbidden,
                "this operator may not log in from this address".into(),
            ),
            WorkAddressRefused => (
                ErrorCode::Forbidden,
                "this operator may not work from this address".into(),
            ),
            TotpNotEnrolled => (
                ErrorCode::Forbidden,
                "the admin requires a TOTP code but none is enrolled for this operator".into(),
            ),
            Certificate(why) => (ErrorCode::Certificate, why.to_string()),
            AccountGone => (ErrorCode::Forbidden, "this operator account no longer exists".into()),
            SessionCap { max } => (
                ErrorCode::Forbidden,
                format!("the admin allows this operator at most {max} session(s) at once"),
            ),
            NothingAllowed => (
                ErrorCode::Forbidden,
                "the admin allows none of the permissions asked for".into(),
            ),
            Busy => (ErrorCode::Busy, "the relay is busy; try again shortly".into()),
            CheckFailed => (ErrorCode::Internal, "the relay could not check the account".into()),
            NoCode => (ErrorCode::Internal, "the relay could not create a code".into()),
            Unavailable => (
                ErrorCode::Unavailable,
                "the relay cannot reach the grid's shared state; try again shortly".into(),
            ),
        };
        (code, message)
    }

    /// The error code alone (what the audit trail and the logs name).
    pub fn code(&self) -> ErrorCode {
        self.told().0
    }

    /// The `Error` frame that tells the peer.
    pub fn frame(&self) -> Frame {
        let (code, message) = self.told();
        error_frame(code, message)
    }

    /// A wrong secret: the attempt counts against the throttle. Anything else (a right
    /// password on a suspended account, a check that could not run) costs nothing.
    pub fn is_wrong_secret(&self) -> bool {
        match self {
            Refusal::WrongPassword | Refusal::WrongTotp => true,
            // Someone without the device's certificate may be guessing the password.
            Refusal::Certificate(crate::certs::CertRefusal::Missing | crate::certs::CertRefusal::NotThisAccounts) => {
                true
            }
            Refusal::ResumeRefused(r) => r.is_wrong_secret(),
            _ => false,
        }
    }
}

impl From<JoinRefusal> for Refusal {
    fn from(r: JoinRefusal) -> Self {
        match r {
            JoinRefusal::Unknown => Refusal::UnknownCode,
            JoinRefusal::Expired => Refusal::ExpiredCode,
            JoinRefusal::Used => Refusal::UsedCode,
            JoinRefusal::Unavailable => Refusal::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsunagu_proto::transport::TransportError;

    #[test]
    fn the_timeout_wording_is_the_transports() {
        let d = Duration::from_millis(1500);
        assert_eq!(Refusal::Timeout(d).told().1, TransportError::Timeout(d).to_string());
    }

    #[test]
    fn throttled_peers_are_told_at_least_one_second() {
        let told = Refusal::Throttled {
            retry_after: Duration::from_millis(200),
        }
        .told();
        assert_eq!(
            told,
            (
                ErrorCode::Throttled,
                "too many failed attempts; try again in 1 s".into()
            )
        );
    }

    #[test]
    fn only_wrong_secrets_cost_an_attempt() {
        assert!(Refusal::WrongPassword.is_wrong_secret());
        assert!(Refusal::WrongTotp.is_wrong_secret());
        for r in [
            Refusal::Suspended,
            Refusal::Busy,
            Refusal::CheckFailed,
            Refusal::LoginAddressRefused,
        ] {
            assert!(!r.is_wrong_secret(), "{r:?}");
            assert_ne!(r.code(), ErrorCode::AuthFailed, "{r:?}");
        }
    }
}
