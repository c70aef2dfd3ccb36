//! Company information and field-mask updates of it.

use serde::{Deserialize, Serialize};
use sovra_runtime::Error;

use super::values::{parse_country, parse_phone, parse_text, parse_website, Address};

/// Company information, validated. Empty strings mean "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompanyProfile {
    pub name: String,
    pub street_address: String,
    pub city: String,
    pub state_or_region: String,
    pub postal_code: String,
    pub country_code: String,
    pub phone: String,
    pub email: String,
    pub website: String,
    pub support_email: String,
    pub support_phone: String,
    pub support_website: String,
}

/// The paths an update mask may name.
pub const FIELDS: &[&str] = &[
    "name",
    "street_address",
    "city",
    "state_or_region",
    "postal_code",
    "country_code",
    "phone",
    "email",
    "website",
    "support_email",
    "support_phone",
    "support_website",
];

impl CompanyProfile {
    /// Validates every field; `prefix` is the request field holding the profile.
    pub fn parse(raw: CompanyProfile, prefix: &str) -> Result<CompanyProfile, Error> {
        let f = |name: &str| format!("{prefix}.{name}");
        let opt = |v: &str,
                   name: &str,
                   p: &dyn Fn(&str, &str) -> Result<String, Error>|
         -> Result<String, Error> {
            if v.trim().is_empty() {
                Ok(String::new())
            } else {
                p(&f(name), v)
            }
        };
        let email = |field: &str, v: &str| Address::parse(field, v).map(|a| a.to_string_lower());
        Ok(CompanyProfile {
            name: parse_text(&f("name"), &raw.name, 256)?,
            street_address: parse_text(&f("street_address"), &raw.street_address, 256)?,
            city: parse_text(&f("city"), &raw.city, 128)?,
            state_or_region: parse_text(&f("state_or_region"), &raw.state_or_region, 128)?,
            postal_code: parse_text(&f("postal_code"), &raw.postal_code, 32)?,
            country_code: opt(&raw.country_code, "country_code", &parse_country)?,
            phone: opt(&raw.phone, "phone", &parse_phone)?,
            email: opt(&raw.email, "email", &email)?,
            website: opt(&raw.website, "website", &parse_website)?,
            support_email: opt(&raw.support_email, "support_email", &email)?,
            support_phone: opt(&raw.support_phone, "support_phone", &parse_phone)?,
            support_website: opt(&raw.support_website, "support_website", &parse_website)?,
        })
    }

    /// Applies `paths` from `update` onto `self`; no paths or `*` replaces all.
    pub fn apply(&self, update: CompanyProfile, paths: &[String]) -> Result<CompanyProfile, Error> {
        if paths.is_empty() || paths.iter().any(|p| p == "*") {
            return Ok(update);
        }
        let mut out = self.clone();
        for p in paths {
            let path = p.strip_prefix("company_profile.").unwrap_or(p);
            let (dst, src) = match path {
                "name" => (&mut out.name, &update.name),
                "street_address" => (&mut out.street_address, &update.street_address),
                "city" => (&mut out.city, &update.city),
                "state_or_region" => (&mut out.state_or_region, &update.state_or_region),
                "postal_code" => (&mut out.postal_code, &update.postal_code),
                "country_code" => (&mut out.country_code, &update.country_code),
                "phone" => (&mut out.phone, &update.phone),
                "email" => (&mut out.email, &update.email),
                "website" => (&mut out.website, &update.website),
                "support_email" => (&mut out.support_email, &update.support_email),
                "support_phone" => (&mut out.support_phone, &update.support_phone),
                "support_website" => (&mut out.support_website, &update.support_website),
                other => {
                    return Err(Error::invalid(
                        "update_mask",
                        format!(
                            "`{other}` is not a company profile field; use one of {}",
                            FIELDS.join(", ")
                        ),
                    ))
                }
            };
            *dst = src.clone();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_changes_only_its_fields() {
        let old = CompanyProfile {
            name: "Contoso".into(),
            phone: "+1 555 0100".into(),
            ..Default::default()
        };
        let update = CompanyProfile {
            name: "ignored".into(),
            phone: "+1 555 0199".into(),
            ..Default::default()
        };
        let new = old.apply(update, &["phone".into()]).unwrap();
        assert_eq!(new.name, "Contoso");
        assert_eq!(new.phone, "+1 555 0199");
        assert!(old
            .apply(CompanyProfile::default(), &["colour".into()])
            .is_err());
    }

    #[test]
    fn bad_contact_fields_are_named() {
        let raw = CompanyProfile {
            email: "not-an-email".into(),
            ..Default::default()
        };
        let e = CompanyProfile::parse(raw, "company_profile").unwrap_err();
        assert_eq!(e.violations[0].field, "company_profile.email");
    }
}
