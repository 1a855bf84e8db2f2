//! End-to-end tests: one test binary, so the heavy dependencies link once.
//!
//! Each test starts the real services it needs (see the `e2e` library) and drops them at the end.

mod harness;
mod kubernetes;
mod object_stores;
mod suites;
