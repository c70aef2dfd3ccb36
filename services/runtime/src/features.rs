//! Feature flags: whole capabilities switched per instance and region, and
//! narrowed per tenant. [`Features`] is the live, reloadable view every
//! service checks.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, RwLock},
};

use serde::Deserialize;

/// The capabilities a flag can switch off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
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

    /// Every flag with its state, in a stable order.
    pub fn list(&self) -> impl Iterator<Item = (Feature, bool)> + '_ {
        Feature::ALL.into_iter().map(|f| (f, self.is_enabled(f)))
    }
}

/// `[[feature_overrides]]`: capabilities turned off for one tenant (an
/// override can only narrow what the instance and region allow).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantOverride {
    pub tenant_id: String,
    /// Flag names, as in `[features]`.
    pub off: Vec<String>,
}

/// One flag that changed on a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagChange {
    pub feature: Feature,
    /// None: the instance-wide flag; Some: a tenant's override.
    pub tenant: Option<String>,
    pub enabled: bool,
}

impl std::fmt::Display for FlagChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.enabled { "on" } else { "off" };
        match &self.tenant {
            None => write!(f, "{} turned {state}", self.feature.name()),
            Some(t) => write!(f, "{} turned {state} for tenant {t}", self.feature.name()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FlagSet {
    flags: FeatureFlags,
    /// Tenant id → the features turned off for it.
    off_for: BTreeMap<String, BTreeSet<Feature>>,
}

impl FlagSet {
    fn new(flags: FeatureFlags, overrides: &[TenantOverride]) -> Self {
        let mut off_for: BTreeMap<String, BTreeSet<Feature>> = BTreeMap::new();
        for o in overrides {
            off_for
                .entry(o.tenant_id.clone())
                .or_default()
                .extend(o.off.iter().filter_map(|n| Feature::from_name(n)));
        }
        Self { flags, off_for }
    }

    fn tenant_off(&self, f: Feature, tenant: Option<&str>) -> bool {
        tenant
            .and_then(|t| self.off_for.get(t))
            .is_some_and(|off| off.contains(&f))
    }
}

/// The live flags of this instance and region, with per-tenant overrides.
/// Cheap to clone; [`Features::update`] swaps in a reloaded configuration.
#[derive(Debug, Clone)]
pub struct Features {
    instance: Arc<str>,
    current: Arc<RwLock<Arc<FlagSet>>>,
}

impl Features {
    pub fn new(instance: &str, flags: FeatureFlags, overrides: &[TenantOverride]) -> Self {
        Self {
            instance: instance.into(),
            current: Arc::new(RwLock::new(Arc::new(FlagSet::new(flags, overrides)))),
        }
    }

    fn set(&self) -> Arc<FlagSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `f` is on, for `tenant` when given.
    pub fn is_enabled(&self, f: Feature, tenant: Option<&str>) -> bool {
        let set = self.set();
        set.flags.is_enabled(f) && !set.tenant_off(f, tenant)
    }

    /// Ok when `f` is on (for `tenant` when given); else FAILED_PRECONDITION
    /// FEATURE_DISABLED naming the feature, the instance and the tenant
    /// when only its override turns it off.
    pub fn require(&self, f: Feature, tenant: Option<&str>) -> Result<(), crate::Error> {
        // The tenant a feature is checked for is the one the call acts for.
        if let Some(t) = tenant {
            crate::telemetry::record_tenant(t);
        }
        let set = self.set();
        let message = if !set.flags.is_enabled(f) {
            format!(
                "the `{}` feature is turned off in instance `{}`",
                f.name(),
                self.instance
            )
        } else if set.tenant_off(f, tenant) {
            format!(
                "the `{}` feature is turned off for tenant `{}` in instance `{}`",
                f.name(),
                tenant.unwrap_or_default(),
                self.instance
            )
        } else {
            return Ok(());
        };
        Err(crate::Error::failed_precondition(
            "FEATURE_DISABLED",
            message,
        ))
    }

    /// Every flag with its effective state for `tenant` (or the instance).
    pub fn effective(&self, tenant: Option<&str>) -> Vec<(Feature, bool)> {
        Feature::ALL
            .into_iter()
            .map(|f| (f, self.is_enabled(f, tenant)))
            .collect()
    }

    /// What [`Features::update`] with these flags would change, without
    /// changing anything: the reloader records the changes first, so that a
    /// caller who sees a new flag also finds its audit event.
    pub fn changes(&self, flags: FeatureFlags, overrides: &[TenantOverride]) -> Vec<FlagChange> {
        let old = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        diff(&old, &FlagSet::new(flags, overrides))
    }

    /// Swaps in reloaded flags and overrides; returns what changed.
    pub fn update(&self, flags: FeatureFlags, overrides: &[TenantOverride]) -> Vec<FlagChange> {
        let new = FlagSet::new(flags, overrides);
        let mut slot = self.current.write().unwrap_or_else(|p| p.into_inner());
        let changes = diff(&slot, &new);
        *slot = Arc::new(new);
        changes
    }
}

/// Each instance-wide flag, then each tenant override, that differs.
fn diff(old: &FlagSet, new: &FlagSet) -> Vec<FlagChange> {
    let mut changes = Vec::new();
    for f in Feature::ALL {
        if old.flags.is_enabled(f) != new.flags.is_enabled(f) {
            changes.push(FlagChange {
                feature: f,
                tenant: None,
                enabled: new.flags.is_enabled(f),
            });
        }
    }
    let tenants: BTreeSet<&String> = old.off_for.keys().chain(new.off_for.keys()).collect();
    for t in tenants {
        for f in Feature::ALL {
            let (was, is) = (old.tenant_off(f, Some(t)), new.tenant_off(f, Some(t)));
            if was != is {
                changes.push(FlagChange {
                    feature: f,
                    tenant: Some(t.clone()),
                    enabled: !is,
                });
            }
        }
    }
    changes
}

/// One service's live flags and the database its flag changes are audited in.
#[derive(Debug, Clone)]
pub struct Reloadable {
    pub service: &'static str,
    pub features: Features,
    pub db: crate::db::Db,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_ON: FeatureFlags = FeatureFlags {
        trials: true,
        purchase_offers: true,
        product_keys: true,
        delegated_admin: true,
        reseller_relationships: true,
        customer_management: true,
        customer_self_service: true,
    };

    #[test]
    fn a_tenant_override_narrows_only_that_tenant_and_names_it() {
        let f = Features::new(
            "global",
            ALL_ON,
            &[TenantOverride {
                tenant_id: "global_a".into(),
                off: vec!["product_keys".into()],
            }],
        );
        assert!(f.is_enabled(Feature::ProductKeys, Some("global_b")));
        assert!(f.is_enabled(Feature::ProductKeys, None));
        let e = f
            .require(Feature::ProductKeys, Some("global_a"))
            .unwrap_err();
        assert!(e.message.contains("tenant `global_a`"), "{}", e.message);
        assert!(e.message.contains("instance `global`"), "{}", e.message);
    }

    #[test]
    fn update_reports_each_change_once() {
        let f = Features::new("china", ALL_ON, &[]);
        let mut off = ALL_ON;
        off.product_keys = false;
        let overrides = [TenantOverride {
            tenant_id: "china_x".into(),
            off: vec!["trials".into()],
        }];
        let staged = f.changes(off, &overrides);
        assert_eq!(staged.len(), 2, "{staged:?}");
        assert!(
            f.is_enabled(Feature::ProductKeys, None),
            "changes() applies nothing"
        );
        let changes = f.update(off, &overrides);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(changes[0].to_string(), "product_keys turned off");
        assert_eq!(
            changes[1].to_string(),
            "trials turned off for tenant china_x"
        );
        assert!(f
            .update(
                off,
                &[TenantOverride {
                    tenant_id: "china_x".into(),
                    off: vec!["trials".into()]
                }]
            )
            .is_empty());
        let back = f.update(ALL_ON, &[]);
        assert_eq!(back.len(), 2);
        assert!(back.iter().all(|c| c.enabled));
    }
}
