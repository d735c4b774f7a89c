//! The retry and dead-letter sources mqtrace declared in this process: their history headers
//! are read whatever the [`Trust`](crate::Trust) policy says about them.

use std::collections::HashSet;
use std::sync::{LazyLock, PoisonError, RwLock};

static DECLARED: LazyLock<RwLock<HashSet<Box<str>>>> =
    LazyLock::new(|| RwLock::new(HashSet::new()));

/// Records `source` (a queue, topic or subscription, by the name the trust policy is asked
/// about) as one that mqtrace's retry types declared and fill with copies. Called by the
/// broker crates' `declare`; a process declares a handful, so the set stays small.
///
/// ```
/// mqtrace::retry::declare_source("orders.retry.2");
/// assert!(mqtrace::retry::is_declared_source("orders.retry.2"));
/// assert!(!mqtrace::retry::is_declared_source("orders"));
/// ```
pub fn declare_source(source: &str) {
    let mut set = DECLARED.write().unwrap_or_else(PoisonError::into_inner);
    if !set.contains(source) {
        set.insert(source.into());
    }
}

/// Whether [`declare_source`] recorded `source`.
///
/// ```
/// assert!(!mqtrace::retry::is_declared_source("never-declared"));
/// ```
pub fn is_declared_source(source: &str) -> bool {
    DECLARED
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(source)
}
