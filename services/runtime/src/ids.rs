//! Identifiers every service parses. Tenant ids carry their instance, so an id from another
//! instance is recognised and refused with a message that names it.

use crate::Error;

/// Keeps echoed input short in messages.
pub fn clip(s: &str) -> String {
    if s.chars().count() > 64 {
        format!("{}…", s.chars().take(64).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// `{instance}_{32 hex digits}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    pub fn generate(instance: &str) -> Self {
        Self(format!("{instance}_{}", uuid::Uuid::new_v4().simple()))
    }

    /// Parses `value` from request field `field` for this `instance`.
    pub fn parse(field: &str, value: &str, instance: &str) -> Result<Self, Error> {
        if value.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
        let Some((inst, hex)) = value.rsplit_once('_') else {
            return Err(Error::invalid(
                field,
                format!("`{}` is not a tenant id", clip(value)),
            ));
        };
        if hex.len() != 32
            || !hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            return Err(Error::invalid(
                field,
                format!("`{}` is not a tenant id", clip(value)),
            ));
        }
        if inst != instance {
            return Err(Error::invalid(
                field,
                format!(
                    "tenant `{value}` belongs to instance `{}`; this is instance `{instance}`",
                    clip(inst)
                ),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn parse(field: &str, value: &str) -> Result<Self, Error> {
        if value.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
        if value.len() != 32
            || !value
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            return Err(Error::invalid(
                field,
                format!("`{}` is not a user id", clip(value)),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_id_from_another_instance_names_it() {
        let id = TenantId::generate("china");
        let e = TenantId::parse("tenant_id", id.as_str(), "global").unwrap_err();
        assert_eq!(e.violations[0].field, "tenant_id");
        assert!(e.message.contains("instance `china`"), "{}", e.message);
        assert!(TenantId::parse("tenant_id", id.as_str(), "china").is_ok());
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "global",
            "global_xyz",
            "global_0123456789abcdef0123456789abcdeg",
        ] {
            assert!(
                TenantId::parse("tenant_id", bad, "global").is_err(),
                "{bad}"
            );
        }
        assert!(UserId::parse("user_id", "nope").is_err());
        assert!(UserId::parse("user_id", UserId::generate().as_str()).is_ok());
    }
}
