//! The block store: where file data lives, as immutable block objects in object storage.
//!
//! [`backend`] turns a [`BackendSpec`] (what a volume's record says about its bucket) into an
//! `object_store` client; [`layout`] names the objects.

pub mod backend;
pub mod codec;
pub mod layout;

pub use backend::{BackendError, BackendSpec, LocalFiles, open_backend};
