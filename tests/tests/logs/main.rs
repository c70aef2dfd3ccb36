//! The logs test, alone in its binary: it sets the process's global
//! subscriber, and no other test may have requests in flight meanwhile.

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/journey.rs"]
mod journey;

mod logs;
