//! End-to-end tests: one test binary, so the heavy dependencies link once.
//!
//! Each test starts the real services it needs (see the `e2e` library) and drops them at the end.

mod block_store_url;
mod fuse_delegations;
mod fuse_failures;
mod fuse_handover;
mod fuse_model;
mod fuse_posix;
mod fuse_suites;
mod fuse_two_mounts;
mod fuse_up;
mod harness;
mod kubernetes;
mod meta_failures;
mod object_stores;
mod store_failures;
mod store_reads;
mod suites;
