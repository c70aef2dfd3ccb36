//! The identity rules, free of transport and storage: value types that parse
//! at the boundary, roles, and the access policy.

pub mod ids;
pub mod password;
pub mod policy;
pub mod profile;
pub mod roles;
pub mod values;
