//! The relationships rules, free of transport and storage: lifecycles,
//! the email draft, and how customer search pages are cut.

pub mod email;
pub mod search;
pub mod states;
