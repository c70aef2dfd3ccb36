//! Value types that parse at the boundary: an invalid value never reaches
//! the rules, and the error names the field.

use sovra_runtime::Error;

/// A person- or company-facing name: trimmed, 1–256 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(field: &str, value: &str) -> Result<Self, Error> {
        let v = value.trim();
        if v.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if v.chars().count() > 256 {
            return Err(Error::invalid(field, "must be at most 256 characters"));
        }
        if v.chars().any(char::is_control) {
            return Err(Error::invalid(field, "must not contain control characters"));
        }
        Ok(Self(v.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A DNS domain, lowercased: at least two labels, a letters-only top level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain(String);

impl Domain {
    pub fn parse(field: &str, value: &str) -> Result<Self, Error> {
        let v = value.trim().to_ascii_lowercase();
        let bad = |why: &str| {
            Err(Error::invalid(
                field,
                format!("`{}` is not a domain: {why}", clip(value)),
            ))
        };
        if v.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
        if v.len() > 253 {
            return bad("longer than 253 characters");
        }
        let labels: Vec<&str> = v.split('.').collect();
        if labels.len() < 2 {
            return bad("it needs at least two labels, such as contoso.com");
        }
        for l in &labels {
            if l.is_empty() || l.len() > 63 {
                return bad("each label must be 1–63 characters");
            }
            if !l
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return bad("use letters, digits and '-' only");
            }
            if l.starts_with('-') || l.ends_with('-') {
                return bad("a label can't start or end with '-'");
            }
        }
        let tld = labels[labels.len() - 1];
        if tld.len() < 2 || !tld.chars().all(|c| c.is_ascii_lowercase()) {
            return bad("the top-level label must be letters");
        }
        Ok(Self(v))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `alias@domain`, lowercased. Used for user principal names and emails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    alias: String,
    domain: Domain,
}

impl Address {
    pub fn parse(field: &str, value: &str) -> Result<Self, Error> {
        let v = value.trim();
        if v.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
        let Some((alias, domain)) = v.rsplit_once('@') else {
            return Err(Error::invalid(
                field,
                format!("`{}` must look like alias@domain", clip(value)),
            ));
        };
        let alias = alias.to_ascii_lowercase();
        if alias.is_empty() || alias.len() > 64 {
            return Err(Error::invalid(
                field,
                "the part before '@' must be 1–64 characters",
            ));
        }
        if !alias.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, '.' | '_' | '-' | '+' | '\'')
        }) {
            return Err(Error::invalid(
                field,
                "the part before '@' may use letters, digits and . _ - + ' only",
            ));
        }
        if alias.starts_with('.') || alias.ends_with('.') || alias.contains("..") {
            return Err(Error::invalid(
                field,
                "the part before '@' can't start or end with '.' or hold '..'",
            ));
        }
        let domain = Domain::parse(field, domain)?;
        Ok(Self { alias, domain })
    }

    pub fn alias(&self) -> &str {
        &self.alias
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    pub fn to_string_lower(&self) -> String {
        format!("{}@{}", self.alias, self.domain.as_str())
    }
}

/// An http(s) URL with a host.
pub fn parse_website(field: &str, value: &str) -> Result<String, Error> {
    let v = value.trim();
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) && v.len() <= 2048 => {
            let host = r.split(['/', '?', '#']).next().unwrap_or("");
            let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
            Domain::parse(field, host).map_err(|_| {
                Error::invalid(
                    field,
                    format!("`{}` does not name a valid host", clip(value)),
                )
            })?;
            Ok(v.to_owned())
        }
        _ => Err(Error::invalid(
            field,
            format!("`{}` is not an http(s) URL", clip(value)),
        )),
    }
}

/// A phone number: digits with an optional leading '+', spaces, '-', '.', '(' and ')'.
pub fn parse_phone(field: &str, value: &str) -> Result<String, Error> {
    let v = value.trim();
    let digits = v.chars().filter(char::is_ascii_digit).count();
    let ok_chars = v.char_indices().all(|(i, c)| {
        c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')') || (c == '+' && i == 0)
    });
    if !ok_chars || !(4..=20).contains(&digits) || v.len() > 32 {
        return Err(Error::invalid(
            field,
            format!(
                "`{}` is not a phone number (4–20 digits, optional leading +)",
                clip(value)
            ),
        ));
    }
    Ok(v.to_owned())
}

/// An ISO 3166-1 alpha-2 code, uppercased.
pub fn parse_country(field: &str, value: &str) -> Result<String, Error> {
    let v = value.trim().to_ascii_uppercase();
    if v.len() != 2 || !v.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(Error::invalid(
            field,
            format!(
                "`{}` is not a two-letter country code such as IT",
                clip(value)
            ),
        ));
    }
    Ok(v)
}

/// Free text up to `max` characters, trimmed, no control characters.
pub fn parse_text(field: &str, value: &str, max: usize) -> Result<String, Error> {
    let v = value.trim();
    if v.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(v.to_owned())
}

/// A region from the instance's list.
pub fn parse_region(
    field: &str,
    value: &str,
    regions: &[String],
    default: &str,
) -> Result<String, Error> {
    if value.is_empty() {
        return Ok(default.to_owned());
    }
    if regions.iter().any(|r| r == value) {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "`{}` is not a data region of this instance; choose one of {}",
                clip(value),
                regions.join(", ")
            ),
        ))
    }
}

pub(crate) use sovra_runtime::ids::clip;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_lowercased_and_checked() {
        assert_eq!(
            Domain::parse("d", "Contoso.COM").unwrap().as_str(),
            "contoso.com"
        );
        for bad in [
            "",
            "localhost",
            "-a.com",
            "a..com",
            "a.c0m",
            "a_b.com",
            &"a".repeat(64),
        ] {
            assert!(Domain::parse("d", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_principal_names_need_alias_and_domain() {
        let a = Address::parse("upn", "Ada.Lovelace@Contoso.com").unwrap();
        assert_eq!(a.to_string_lower(), "ada.lovelace@contoso.com");
        for bad in [
            "ada",
            "@contoso.com",
            "ada@",
            ".ada@contoso.com",
            "a..b@contoso.com",
            "ada lovelace@contoso.com",
        ] {
            let e = Address::parse("upn", bad).unwrap_err();
            assert_eq!(e.violations[0].field, "upn", "{bad}");
        }
    }

    #[test]
    fn names_are_bounded() {
        assert!(DisplayName::parse("n", "  ").is_err());
        assert!(DisplayName::parse("n", &"x".repeat(257)).is_err());
        assert_eq!(DisplayName::parse("n", " Ada ").unwrap().as_str(), "Ada");
    }

    #[test]
    fn contact_values_are_checked() {
        assert!(parse_website("w", "https://contoso.com/partners").is_ok());
        assert!(parse_website("w", "ftp://contoso.com").is_err());
        assert!(parse_phone("p", "+39 02 1234 5678").is_ok());
        assert!(parse_phone("p", "call me").is_err());
        assert_eq!(parse_country("c", "it").unwrap(), "IT");
        assert!(parse_country("c", "ITA").is_err());
    }
}
