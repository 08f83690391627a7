//! Resume seats: what lets an endpoint take its place in a session back after its
//! connection drops, and nothing else.
//!
//! An endpoint that can resume gives the public half of an Ed25519 key when it enters the
//! session (`RequestCode.resume_key`, `Join.resume_key`). Its [`Seat`] keeps that key and
//! the hash of the one token that works next: the relay hands the token out
//! (`ResumeToken`) and forgets it, so neither memory nor the grid's Redis holds a token
//! that could be replayed. A resume must show the current token *and* a signature made
//! with the endpoint's key over [`tsunagu_proto::resume::signed_message`]; the token is
//! spent by the resume that succeeds with it, so a replay is refused. Attempts that fail
//! (a guessed token, a copied token without the key) leave the real token working: what
//! they lack cannot be guessed, and the endpoint that owns the seat is not locked out by
//! them. Sans-IO: the caller draws randomness and reads no clock here.

use ring::signature::{UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};
use tsunagu_proto::resume::{signed_message, KEY_LEN, SIGNATURE_LEN, TOKEN_LEN};

/// Why a resume was refused. The peer hears one error for all of them
/// (`ERROR_CODE_RESUME_REFUSED`); the audit trail keeps which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeRefusal {
    /// No live session with that id on the grid (or on this relay).
    UnknownSession,
    /// That side of the session gave no resume key.
    NotResumable,
    /// The token is not the current one: used already, never issued, or malformed.
    WrongToken,
    /// The token was right but the signature does not verify with the endpoint's key.
    BadSignature,
}

impl ResumeRefusal {
    /// The audit trail's word for it.
    pub fn name(self) -> &'static str {
        match self {
            ResumeRefusal::UnknownSession => "unknown_session",
            ResumeRefusal::NotResumable => "not_resumable",
            ResumeRefusal::WrongToken => "wrong_token",
            ResumeRefusal::BadSignature => "bad_signature",
        }
    }

    /// Whether the attempt showed something wrong (it counts against the source's
    /// guessing budget), rather than arriving for a session that is simply gone.
    pub fn is_wrong_secret(self) -> bool {
        matches!(self, ResumeRefusal::WrongToken | ResumeRefusal::BadSignature)
    }
}

/// One side's right to resume: its key and the hash of the token that works next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    key: [u8; KEY_LEN],
    /// SHA-256 of the current token; `None` between a resume that spent it and the next
    /// token being issued.
    token_hash: Option<[u8; 32]>,
}

/// A fresh token: 256 bits from the OS CSPRNG.
pub fn draw_token() -> Result<[u8; TOKEN_LEN], getrandom::Error> {
    let mut t = [0u8; TOKEN_LEN];
    getrandom::fill(&mut t)?;
    Ok(t)
}

fn hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Seat {
    /// The seat of an endpoint that gave `key`; `None` if it is not an Ed25519 public key's
    /// length (such an endpoint cannot resume).
    pub fn new(key: &[u8]) -> Option<Self> {
        Some(Self {
            key: key.try_into().ok()?,
            token_hash: None,
        })
    }

    /// A seat as kept elsewhere (the grid's session record): its key and current token hash.
    pub fn from_parts(key: [u8; KEY_LEN], token_hash: Option<[u8; 32]>) -> Self {
        Self { key, token_hash }
    }

    /// The key and the current token hash, to keep elsewhere.
    pub fn parts(&self) -> ([u8; KEY_LEN], Option<[u8; 32]>) {
        (self.key, self.token_hash)
    }

    /// Makes `token` (see [`draw_token`]) the one that works next; any earlier one is void.
    pub fn issue(&mut self, token: &[u8; TOKEN_LEN]) {
        self.token_hash = Some(hash(token));
    }

    /// Checks a resume of this seat (`operator`: the operator's seat) in `session_id`; when
    /// it succeeds, the token is spent (issue the next with [`Seat::issue`]).
    pub fn take(
        &mut self,
        session_id: &str,
        operator: bool,
        token: &[u8],
        signature: &[u8],
    ) -> Result<(), ResumeRefusal> {
        let expected = self.token_hash.ok_or(ResumeRefusal::WrongToken)?;
        if token.len() != TOKEN_LEN || hash(token) != expected {
            return Err(ResumeRefusal::WrongToken);
        }
        if signature.len() != SIGNATURE_LEN {
            return Err(ResumeRefusal::BadSignature);
        }
        UnparsedPublicKey::new(&ED25519, &self.key)
            .verify(&signed_message(session_id, operator, token), signature)
            .map_err(|_| ResumeRefusal::BadSignature)?;
        self.token_hash = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key_pair() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn seat_of(kp: &Ed25519KeyPair) -> (Seat, [u8; TOKEN_LEN]) {
        let mut seat = Seat::new(kp.public_key().as_ref()).unwrap();
        let token = draw_token().unwrap();
        seat.issue(&token);
        (seat, token)
    }

    #[test]
    fn the_right_token_and_signature_resume_once() {
        let kp = key_pair();
        let (mut seat, token) = seat_of(&kp);
        let sig = kp.sign(&signed_message("s1", true, &token));
        assert_eq!(seat.take("s1", true, &token, sig.as_ref()), Ok(()));
        assert_eq!(
            seat.take("s1", true, &token, sig.as_ref()),
            Err(ResumeRefusal::WrongToken),
            "a replayed token is refused"
        );
        let next = draw_token().unwrap();
        seat.issue(&next);
        let sig = kp.sign(&signed_message("s1", true, &next));
        assert_eq!(seat.take("s1", true, &next, sig.as_ref()), Ok(()));
    }

    #[test]
    fn a_stolen_token_without_the_key_is_refused_and_the_owner_still_resumes() {
        let kp = key_pair();
        let thief = key_pair();
        let (mut seat, token) = seat_of(&kp);
        let forged = thief.sign(&signed_message("s1", false, &token));
        assert_eq!(
            seat.take("s1", false, &token, forged.as_ref()),
            Err(ResumeRefusal::BadSignature)
        );
        assert_eq!(
            seat.take("s1", false, &token, &[0u8; 12]),
            Err(ResumeRefusal::BadSignature)
        );
        let sig = kp.sign(&signed_message("s1", false, &token));
        assert_eq!(seat.take("s1", false, &token, sig.as_ref()), Ok(()));
    }

    #[test]
    fn a_signature_for_another_seat_or_session_does_not_verify() {
        let kp = key_pair();
        let (mut seat, token) = seat_of(&kp);
        let as_client = kp.sign(&signed_message("s1", false, &token));
        assert_eq!(
            seat.take("s1", true, &token, as_client.as_ref()),
            Err(ResumeRefusal::BadSignature)
        );
        let (mut seat, token) = seat_of(&kp);
        let other = kp.sign(&signed_message("s2", true, &token));
        assert_eq!(
            seat.take("s1", true, &token, other.as_ref()),
            Err(ResumeRefusal::BadSignature)
        );
    }

    #[test]
    fn guesses_do_not_spend_the_real_token() {
        let kp = key_pair();
        let (mut seat, token) = seat_of(&kp);
        for guess in [vec![0u8; TOKEN_LEN], vec![1u8; 5], Vec::new()] {
            assert_eq!(
                seat.take("s1", true, &guess, &[0u8; 64]),
                Err(ResumeRefusal::WrongToken)
            );
        }
        let sig = kp.sign(&signed_message("s1", true, &token));
        assert_eq!(seat.take("s1", true, &token, sig.as_ref()), Ok(()));
    }

    #[test]
    fn only_an_ed25519_sized_key_makes_a_seat() {
        assert!(Seat::new(&[0u8; 31]).is_none());
        assert!(Seat::new(&[]).is_none());
        assert!(Seat::new(&[0u8; 33]).is_none());
        let s = Seat::new(&[9u8; 32]).unwrap();
        assert_eq!(Seat::from_parts(s.parts().0, s.parts().1), s);
    }
}
