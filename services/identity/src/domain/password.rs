//! The password policy and temporary passwords.

use rand::{seq::SliceRandom, Rng};
use sovra_runtime::Error;

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 256;

/// A password that meets the policy: 8–256 characters, at least three of
/// lowercase, uppercase, digits and symbols, and not containing the alias.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    pub fn parse(field: &str, value: &str, alias: &str) -> Result<Self, Error> {
        let n = value.chars().count();
        if n < MIN_LEN {
            return Err(Error::invalid(
                field,
                format!("is too weak: use at least {MIN_LEN} characters"),
            ));
        }
        if n > MAX_LEN {
            return Err(Error::invalid(
                field,
                format!("must be at most {MAX_LEN} characters"),
            ));
        }
        let classes = [
            value.chars().any(|c| c.is_lowercase()),
            value.chars().any(|c| c.is_uppercase()),
            value.chars().any(|c| c.is_ascii_digit()),
            value.chars().any(|c| !c.is_alphanumeric()),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if classes < 3 {
            return Err(Error::invalid(
                field,
                "is too weak: mix at least three of lowercase letters, uppercase letters, digits and symbols",
            ));
        }
        if alias.len() >= 3 && value.to_lowercase().contains(&alias.to_lowercase()) {
            return Err(Error::invalid(
                field,
                "is too weak: it must not contain the user's alias",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// A random 16-character temporary password that meets the policy.
    pub fn temporary() -> Self {
        const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
        const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
        const DIGIT: &[u8] = b"23456789";
        const SYMBOL: &[u8] = b"!#%+-=?@";
        let mut rng = rand::rngs::OsRng;
        let all: Vec<u8> = [LOWER, UPPER, DIGIT, SYMBOL].concat();
        let mut chars: Vec<u8> = [LOWER, UPPER, DIGIT, SYMBOL]
            .iter()
            .map(|set| set[rng.gen_range(0..set.len())])
            .collect();
        while chars.len() < 16 {
            chars.push(all[rng.gen_range(0..all.len())]);
        }
        chars.shuffle(&mut rng);
        Self(String::from_utf8(chars).expect("ASCII"))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_passwords_are_refused_with_the_reason() {
        assert!(Password::parse("password", "Sh0rt!", "ada")
            .unwrap_err()
            .message
            .contains("at least 8"));
        assert!(Password::parse("password", "alllowercase", "ada")
            .unwrap_err()
            .message
            .contains("three"));
        assert!(Password::parse("password", "Ada.Lovelace1!", "ada.lovelace").is_err());
        assert!(Password::parse("password", "Correct-Horse-9", "ada").is_ok());
    }

    #[test]
    fn temporary_passwords_meet_the_policy() {
        for _ in 0..100 {
            let p = Password::temporary();
            assert!(
                Password::parse("p", p.expose(), "someone").is_ok(),
                "{}",
                p.expose()
            );
        }
    }
}
