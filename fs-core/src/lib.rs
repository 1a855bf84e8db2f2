//! stratusfs core: everything the `stratusfs` command runs.
//!
//! The modules grow with the issues; today they hold what every other part needs first:
//! the process-wide TLS set-up ([`tls`]) and the object-storage backends under the block store
//! ([`blockstore`]).

pub mod blockstore;
pub mod tls;
