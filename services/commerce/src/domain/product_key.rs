//! Product keys: 25 characters in five groups of five from an alphabet
//! without look-alikes, the last a check character. A key is parsed (format
//! and check character) before anything looks it up, and stored only as a hash.

use rand::Rng;
use sha2::{Digest, Sha256};
use sovra_runtime::Error;

/// No vowels (no words), no 0/O, 1/I/L, 5/S.
const ALPHABET: &[u8; 24] = b"BCDFGHJKMPQRTVWXY2346789";
const LEN: usize = 25;
/// Weights invertible mod 24, so any one mistyped character changes the check.
const WEIGHTS: [u32; 8] = [1, 5, 7, 11, 13, 17, 19, 23];

/// A well-formed product key, normalized (upper case, no dashes).
#[derive(Clone, PartialEq, Eq)]
pub struct ProductKey(String);

impl std::fmt::Debug for ProductKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets: only the hint is ever shown.
        write!(f, "ProductKey(…{})", self.hint())
    }
}

fn check_char(body: &[u8]) -> u8 {
    let sum: u32 = body
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let v = ALPHABET.iter().position(|a| a == c).unwrap_or(0) as u32;
            v * WEIGHTS[i % WEIGHTS.len()]
        })
        .sum();
    ALPHABET[(sum % ALPHABET.len() as u32) as usize]
}

impl ProductKey {
    /// Parses `value` (dashes and spaces optional, any case), or
    /// INVALID_ARGUMENT on `field` saying what is wrong.
    pub fn parse(field: &str, value: &str) -> Result<Self, Error> {
        let chars: String = value
            .chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if chars.len() != LEN {
            return Err(Error::invalid(
                field,
                "must be 25 characters in five groups: XXXXX-XXXXX-XXXXX-XXXXX-XXXXX",
            ));
        }
        if let Some(bad) = chars.bytes().find(|b| !ALPHABET.contains(b)) {
            return Err(Error::invalid(
                field,
                format!(
                    "`{}` is not a product-key character (letters and digits without vowels, 0, 1, 5 or L)",
                    bad as char
                ),
            ));
        }
        let bytes = chars.as_bytes();
        if check_char(&bytes[..LEN - 1]) != bytes[LEN - 1] {
            return Err(Error::invalid(
                field,
                "is not a valid product key (its check character does not match: look for a mistyped character)",
            ));
        }
        Ok(Self(chars))
    }

    /// A fresh random key (operators' tooling and tests).
    pub fn generate() -> Self {
        let mut rng = rand::thread_rng();
        let mut body: Vec<u8> = (0..LEN - 1)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
            .collect();
        body.push(check_char(&body));
        Self(String::from_utf8(body).expect("ASCII alphabet"))
    }

    /// The key in its printed form, XXXXX-XXXXX-XXXXX-XXXXX-XXXXX.
    pub fn formatted(&self) -> String {
        self.0
            .as_bytes()
            .chunks(5)
            .map(|c| std::str::from_utf8(c).expect("ASCII"))
            .collect::<Vec<_>>()
            .join("-")
    }

    /// What is stored: SHA-256 of the normalized key, hex. Keys carry over
    /// 110 random bits, so an unsalted hash can't be reversed by search.
    pub fn hash(&self) -> String {
        let d = Sha256::digest(format!("sovra-product-key:{}", self.0));
        sovra_runtime::hex::encode(&d)
    }

    /// The last five characters, to tell keys apart without showing them.
    pub fn hint(&self) -> String {
        self.0[LEN - 5..].to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_in_any_spelling() {
        for _ in 0..100 {
            let k = ProductKey::generate();
            let printed = k.formatted();
            assert_eq!(printed.len(), 29);
            assert_eq!(ProductKey::parse("k", &printed).unwrap(), k);
            assert_eq!(
                ProductKey::parse("k", &printed.to_lowercase().replace('-', " ")).unwrap(),
                k
            );
        }
    }

    #[test]
    fn any_one_mistyped_character_is_caught() {
        let k = ProductKey::generate().0;
        for i in 0..LEN {
            for &c in ALPHABET {
                if k.as_bytes()[i] == c {
                    continue;
                }
                let mut b = k.clone().into_bytes();
                b[i] = c;
                let typo = String::from_utf8(b).unwrap();
                assert!(ProductKey::parse("k", &typo).is_err(), "{typo}");
            }
        }
    }

    #[test]
    fn bad_shapes_name_the_field() {
        for bad in [
            "",
            "ABC",
            "BBBBB-BBBBB-BBBBB-BBBBB-BBBBA",
            "BBBBB-BBBBB-BBBBB-BBBBB-BBBB0",
        ] {
            let e = ProductKey::parse("product_key", bad).unwrap_err();
            assert_eq!(e.violations[0].field, "product_key", "{bad}");
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let k = ProductKey::generate();
        assert!(!format!("{k:?}").contains(&k.0));
        assert_eq!(k.hash().len(), 64);
    }
}
