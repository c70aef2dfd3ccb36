//! Feature flags: whole capabilities switched per instance and region.

use serde::Deserialize;

/// The capabilities a flag can switch off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    Trials,
    PurchaseOffers,
    ProductKeys,
    DelegatedAdmin,
    ResellerRelationships,
    CustomerManagement,
    CustomerSelfService,
}

impl Feature {
    pub const ALL: [Feature; 7] = [
        Feature::Trials,
        Feature::PurchaseOffers,
        Feature::ProductKeys,
        Feature::DelegatedAdmin,
        Feature::ResellerRelationships,
        Feature::CustomerManagement,
        Feature::CustomerSelfService,
    ];

    /// The flag's name in configuration and in `GetFeatures`.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Trials => "trials",
            Feature::PurchaseOffers => "purchase_offers",
            Feature::ProductKeys => "product_keys",
            Feature::DelegatedAdmin => "delegated_admin",
            Feature::ResellerRelationships => "reseller_relationships",
            Feature::CustomerManagement => "customer_management",
            Feature::CustomerSelfService => "customer_self_service",
        }
    }
}

/// `[features]`: every flag must be given, so a typo can't silently leave one on.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FeatureFlags {
    pub trials: bool,
    pub purchase_offers: bool,
    pub product_keys: bool,
    pub delegated_admin: bool,
    pub reseller_relationships: bool,
    pub customer_management: bool,
    /// Customers' own admins buy and change subscriptions (else only partners do).
    pub customer_self_service: bool,
}

impl FeatureFlags {
    pub fn is_enabled(&self, f: Feature) -> bool {
        match f {
            Feature::Trials => self.trials,
            Feature::PurchaseOffers => self.purchase_offers,
            Feature::ProductKeys => self.product_keys,
            Feature::DelegatedAdmin => self.delegated_admin,
            Feature::ResellerRelationships => self.reseller_relationships,
            Feature::CustomerManagement => self.customer_management,
            Feature::CustomerSelfService => self.customer_self_service,
        }
    }

    /// Ok when `f` is on; else FAILED_PRECONDITION naming it and `instance`.
    pub fn require(&self, f: Feature, instance: &str) -> Result<(), crate::Error> {
        if self.is_enabled(f) {
            Ok(())
        } else {
            Err(crate::Error::failed_precondition(
                "FEATURE_DISABLED",
                format!(
                    "the `{}` feature is turned off in instance `{instance}`",
                    f.name()
                ),
            ))
        }
    }

    /// Every flag with its state, in a stable order.
    pub fn list(&self) -> impl Iterator<Item = (Feature, bool)> + '_ {
        Feature::ALL.into_iter().map(|f| (f, self.is_enabled(f)))
    }
}
