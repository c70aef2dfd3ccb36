//! The identity rules, free of transport and storage: value types that parse
//! at the boundary, roles, and the access policy.

/// Ids are shared with every service; see [`sovra_runtime::ids`].
pub mod ids {
    pub use sovra_runtime::ids::{TenantId, UserId};
}
pub mod password;
pub mod policy;
pub mod profile;
pub mod roles;
pub mod values;
