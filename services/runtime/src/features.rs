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
}

impl Feature {
    pub const ALL: [Feature; 6] = [
        Feature::Trials,
        Feature::PurchaseOffers,
        Feature::ProductKeys,
        Feature::DelegatedAdmin,
        Feature::ResellerRelationships,
        Feature::CustomerManagement,
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
        }
    }

    /// Every flag with its state, in a stable order.
    pub fn list(&self) -> impl Iterator<Item = (Feature, bool)> + '_ {
        Feature::ALL.into_iter().map(|f| (f, self.is_enabled(f)))
    }
}
