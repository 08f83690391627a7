//! What a resume signature covers, and the sizes of the resume key and token.
//!
//! An endpoint that can resume sends the public half of an Ed25519 key with `RequestCode`
//! or `Join`; the relay answers with a single-use `ResumeToken`. To take its place back it
//! sends `Resume` with the token and its signature over [`signed_message`], so a token
//! copied from somewhere (a log, a memory dump) is useless without the key that never
//! leaves the endpoint, and a token already used is refused.

/// Length of an Ed25519 public key, the only resume key the relay accepts.
pub const KEY_LEN: usize = 32;

/// Length of a resume token the relay issues.
pub const TOKEN_LEN: usize = 32;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Domain separation for the signed message: a signature made for anything else never
/// verifies as a resume.
const CONTEXT: &[u8] = b"tsunagu-resume-v1";

/// The bytes an endpoint signs to resume its place (`operator`: the operator's place, else
/// the client's) in session `session_id` with `token`.
pub fn signed_message(session_id: &str, operator: bool, token: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + session_id.len() + token.len() + 3);
    m.extend_from_slice(CONTEXT);
    m.push(0);
    m.extend_from_slice(session_id.as_bytes());
    m.push(0);
    m.push(if operator { 1 } else { 2 });
    m.extend_from_slice(token);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_and_the_session_change_what_is_signed() {
        let t = [7u8; TOKEN_LEN];
        let op = signed_message("ab", true, &t);
        assert_ne!(op, signed_message("ab", false, &t));
        assert_ne!(op, signed_message("abc", true, &t));
        // The separator keeps "a" + "b..." apart from "ab" + "...".
        assert_ne!(
            signed_message("a", true, &[b'b'; 3]),
            signed_message("ab", true, &[b'b'; 2])
        );
        assert!(op.starts_with(CONTEXT));
    }
}
