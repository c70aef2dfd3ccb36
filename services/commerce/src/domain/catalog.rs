//! This instance's catalog, from configuration, and license counts checked
//! against a product's bounds.

use std::collections::BTreeMap;

use sovra_runtime::{config::ProductSettings, Error};

/// One product as commerce sells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: String,
    pub name: String,
    /// Days a trial runs; None: no trial.
    pub trial_days: Option<u32>,
    pub min_licenses: u32,
    pub max_licenses: u32,
    pub unit_price_minor: u64,
}

impl Product {
    /// `value` as a license count of this product, or INVALID_ARGUMENT on
    /// `field` naming the bounds.
    pub fn licenses(&self, field: &str, value: i32) -> Result<u32, Error> {
        if value < self.min_licenses as i32 || value > self.max_licenses as i32 {
            return Err(Error::invalid(
                field,
                format!(
                    "{value} is outside {}'s license bounds: {} to {}",
                    self.id, self.min_licenses, self.max_licenses
                ),
            ));
        }
        Ok(value as u32)
    }
}

/// The instance's products, by id, and the currency they are priced in.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub currency: String,
    products: BTreeMap<String, Product>,
}

impl Catalog {
    pub fn new(currency: &str, settings: &[ProductSettings]) -> Self {
        let products = settings
            .iter()
            .map(|p| {
                (
                    p.id.clone(),
                    Product {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        trial_days: (p.trial_days > 0).then_some(p.trial_days),
                        min_licenses: p.min_licenses,
                        max_licenses: p.max_licenses,
                        unit_price_minor: p.unit_price_minor,
                    },
                )
            })
            .collect();
        Self {
            currency: currency.to_owned(),
            products,
        }
    }

    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.products.values()
    }

    /// The product named in `field`: INVALID_ARGUMENT when empty, NOT_FOUND
    /// when this instance does not sell it.
    pub fn product(&self, field: &str, id: &str) -> Result<&Product, Error> {
        if id.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
        self.products.get(id).ok_or_else(|| {
            Error::not_found(
                "PRODUCT_NOT_FOUND",
                format!("this instance's catalog has no product `{id}`; ListProducts shows what it sells"),
            )
            .with_violation(field, "not in this instance's catalog")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::new(
            "USD",
            &[ProductSettings {
                id: "p".into(),
                name: "P".into(),
                trial_days: 0,
                min_licenses: 5,
                max_licenses: 10,
                unit_price_minor: 100,
            }],
        )
    }

    #[test]
    fn license_counts_outside_the_bounds_name_them() {
        let c = catalog();
        let p = c.product("product_id", "p").unwrap();
        assert_eq!(p.trial_days, None);
        assert_eq!(p.licenses("n", 5).unwrap(), 5);
        let e = p.licenses("lines[0].license_count", 11).unwrap_err();
        assert_eq!(e.violations[0].field, "lines[0].license_count");
        assert!(e.violations[0].description.contains("5 to 10"));
        assert!(p.licenses("n", -1).is_err());
    }

    #[test]
    fn an_unknown_product_is_not_found() {
        let e = catalog().product("product_id", "nope").unwrap_err();
        assert_eq!(e.reason, "PRODUCT_NOT_FOUND");
        assert_eq!(
            catalog()
                .product("product_id", "")
                .unwrap_err()
                .violations
                .len(),
            1
        );
    }
}
