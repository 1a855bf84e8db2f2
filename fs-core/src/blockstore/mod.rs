//! The block store: where file data lives, as immutable block objects in object storage.
//!
//! [`backend`] turns a [`BackendSpec`] (what a volume's record says about its bucket) into an
//! `object_store` client. The block layout and caches build on it.

pub mod backend;

pub use backend::{BackendError, BackendSpec, open_backend};
