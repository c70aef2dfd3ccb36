//! Page sizes and opaque keyset page tokens.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};

use crate::error::Error;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// 0 → the default; above the maximum → the maximum; negative → invalid.
pub fn page_size(requested: i32) -> Result<i64, Error> {
    match requested {
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as i64).min(MAX_PAGE_SIZE)),
    }
}

/// Encodes a keyset position (the sort key of the last row returned).
pub fn encode_token(kind: &str, parts: &[&str]) -> String {
    let mut s = String::from(kind);
    for p in parts {
        s.push('\u{1f}');
        s.push_str(p);
    }
    B64.encode(s)
}

/// Decodes a token made by [`encode_token`] for the same `kind` of list.
pub fn decode_token(kind: &str, token: &str, parts: usize) -> Result<Option<Vec<String>>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "is not a page token this list returned");
    let text = String::from_utf8(B64.decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let mut it = text.split('\u{1f}');
    if it.next() != Some(kind) {
        return Err(bad());
    }
    let v: Vec<String> = it.map(str::to_owned).collect();
    if v.len() != parts {
        return Err(bad());
    }
    Ok(Some(v))
}

/// Cuts `rows`, fetched with `size + 1`, to one page, and returns the token
/// of the page after it (empty on the last page): the keyset position of the
/// page's last row, as `position` gives it.
pub fn cut<T>(
    rows: &mut Vec<T>,
    size: i64,
    kind: &str,
    position: impl Fn(&T) -> Vec<String>,
) -> String {
    if rows.len() as i64 <= size {
        return String::new();
    }
    rows.truncate(size as usize);
    let parts = rows.last().map(position).unwrap_or_default();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    encode_token(kind, &parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_other_lists() {
        let t = encode_token("users", &["a@b.c", "id1"]);
        assert_eq!(
            decode_token("users", &t, 2).unwrap().unwrap(),
            vec!["a@b.c", "id1"]
        );
        assert!(decode_token("audit", &t, 2).is_err());
        assert!(decode_token("users", "!!", 2).is_err());
        assert_eq!(decode_token("users", "", 2).unwrap(), None);
    }

    #[test]
    fn a_page_is_cut_after_its_last_row() {
        let mut rows = vec!["a", "b", "c"];
        let next = cut(&mut rows, 2, "x", |r| vec![r.to_string()]);
        assert_eq!(rows, ["a", "b"]);
        assert_eq!(decode_token("x", &next, 1).unwrap().unwrap(), ["b"]);
        let mut last = vec!["a", "b"];
        assert_eq!(cut(&mut last, 2, "x", |r| vec![r.to_string()]), "");
        assert_eq!(last.len(), 2);
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(10_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
