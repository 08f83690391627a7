//! Operator accounts: name rules, the password policy, argon2id hashing.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::config::AccountsConfig;

/// Shortest and longest password the policy accepts, in characters.
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 64;

/// Why a name or password is refused. The message is shown to the admin as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("the password is too short: {0} characters, at least 8 are needed")]
    TooShort(usize),
    #[error("the password is too long: {0} characters, at most 64 are allowed")]
    TooLong(usize),
    #[error("the password uses {0} kind(s) of character; use at least 3 of: upper case, lower case, digits, symbols")]
    TooSimple(usize),
    #[error("the password contains control characters")]
    ControlCharacters,
    #[error("operator names are 1 to 64 characters of letters, digits, '.', '_', '-' and '@'")]
    BadName,
}

/// Checks an operator or admin name.
pub fn validate_name(name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= tsunagu_proto::limits::MAX_USER_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadName)
    }
}

/// The password policy: 8 to 64 characters without control characters, at least 3 of
/// upper case `A-Z`, lower case `a-z`, digits `0-9` and anything else.
pub fn check_password(password: &str) -> Result<(), PolicyError> {
    let len = password.chars().count();
    if len < PASSWORD_MIN {
        return Err(PolicyError::TooShort(len));
    }
    if len > PASSWORD_MAX {
        return Err(PolicyError::TooLong(len));
    }
    if password.chars().any(char::is_control) {
        return Err(PolicyError::ControlCharacters);
    }
    // ASCII classes, exactly as the API's OpenAPI document states them: any other
    // character (a letter with an accent, kana, a symbol) counts as a symbol.
    let classes = [
        password.chars().any(|c| c.is_ascii_uppercase()),
        password.chars().any(|c| c.is_ascii_lowercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_ascii_alphanumeric()),
    ];
    let used = classes.iter().filter(|b| **b).count();
    if used < 3 {
        return Err(PolicyError::TooSimple(used));
    }
    Ok(())
}

fn hasher(config: &AccountsConfig) -> Result<Argon2<'static>, String> {
    let params = Params::new(config.argon2_memory_kib, config.argon2_iterations, 1, None).map_err(|e| e.to_string())?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password that passed the policy; returns the PHC string to store.
pub fn hash_password(password: &str, config: &AccountsConfig) -> Result<String, String> {
    let mut salt_bytes = [0u8; 16];
    getrandom::fill(&mut salt_bytes).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    let hash = hasher(config)?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| e.to_string())?;
    Ok(hash.to_string())
}

/// Verifies a password against a stored PHC string (its own parameters apply). CPU and
/// memory heavy: run it off the async threads.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash that never matches, verified when the user does not exist so that the answer
/// takes as long as for a real account: a PHC string with the configured argon2id
/// parameters, a random salt and a random 32-byte output. Verifying it costs exactly what
/// verifying a real hash with those parameters costs, and making it computes no argon2 at
/// all (every argon2 computation goes through the verifier pool). A password matches it
/// only if argon2 hits 256 random bits.
pub fn dummy_hash(config: &AccountsConfig) -> String {
    let mut salt = [0u8; 16];
    let mut output = [0u8; 32];
    // Without randomness the fixed bytes still never match a password in practice; the
    // hash only has to cost the same.
    let _ = getrandom::fill(&mut salt);
    let _ = getrandom::fill(&mut output);
    let salt = SaltString::encode_b64(&salt)
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    let output = argon2::password_hash::Output::new(&output)
        .map(|o| o.to_string())
        .unwrap_or_default();
    format!(
        "$argon2id$v=19$m={},t={},p=1${salt}${output}",
        config.argon2_memory_kib, config.argon2_iterations
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_explains_refusals() {
        assert_eq!(check_password("Ab1!"), Err(PolicyError::TooShort(4)));
        assert_eq!(check_password("alllowercase"), Err(PolicyError::TooSimple(1)));
        assert_eq!(check_password("lowerand123"), Err(PolicyError::TooSimple(2)));
        assert!(check_password(&"Aa1!".repeat(17))
            .unwrap_err()
            .to_string()
            .contains("at most 64"));
        assert!(check_password("Correct-horse1").is_ok());
        assert!(
            check_password("パスワードAb1").is_ok(),
            "non-ASCII letters count as letters"
        );
        assert!(
            check_password("TooSimple!").is_ok(),
            "upper, lower, symbol is three classes"
        );
        assert!(check_password("tab\there1A").is_err());
        assert!(check_password("lower12345")
            .unwrap_err()
            .to_string()
            .contains("at least 3"));
    }

    #[test]
    fn names() {
        assert!(validate_name("alice").is_ok());
        assert!(validate_name("a.b-c_d@example").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("has space").is_err());
        assert!(validate_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn hash_and_verify_argon2id() {
        let cfg = AccountsConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
        };
        let phc = hash_password("Correct-horse1", &cfg).unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("Correct-horse1"));
        assert!(verify_password("Correct-horse1", &phc));
        assert!(!verify_password("Correct-horse2", &phc));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_costs_and_never_matches() {
        let cfg = AccountsConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
        };
        let real = PasswordHash::new(&hash_password("Correct-horse1", &cfg).unwrap())
            .unwrap()
            .params
            .to_string();
        let dummy = dummy_hash(&cfg);
        let parsed = PasswordHash::new(&dummy).expect("a valid PHC string");
        assert_eq!(parsed.params.to_string(), real, "same argon2 parameters");
        assert_eq!(parsed.hash.map(|h| h.len()), Some(32));
        assert!(!verify_password("no account has this password 0!A", &dummy));
        assert!(!verify_password("", &dummy));
        assert_ne!(dummy, dummy_hash(&cfg), "random salt and output each time");
    }
}
