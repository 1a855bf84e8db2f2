//! `stratusfs bench`: measurements printed for people, never asserted.

mod meta;
mod store;

pub use meta::{BenchArgs, bench_meta};
pub use store::{StoreBenchArgs, bench_store};
