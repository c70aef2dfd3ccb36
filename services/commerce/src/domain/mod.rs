//! Commerce's rules, free of tonic and sqlx.

pub mod catalog;
pub mod product_key;
pub mod states;
