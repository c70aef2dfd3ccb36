//! Lower-case hex, as hashes, key ids and trace ids are shown and stored.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `bytes` in lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push(&mut s, bytes);
    s
}

/// Appends `bytes` to `s` in lower-case hex.
pub fn push(s: &mut String, bytes: &[u8]) {
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_every_byte_in_two_lower_case_digits() {
        assert_eq!(super::encode(&[]), "");
        assert_eq!(
            super::encode(&[0, 1, 0x0f, 0x10, 0xab, 0xff]),
            "00010f10abff"
        );
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::encode(&all), expected);
    }
}
