//! The block store: where file data lives, as immutable block objects in object storage.
//!
//! [`backend`] turns a [`BackendSpec`] (what a volume's record says about its bucket) into an
//! `object_store` client; [`layout`] names the objects; [`codec`] is the block object format
//! (chunk table, compressed and checksummed chunks); [`io`] reads and writes block objects through
//! a mount's L1 cache ([`cache`]) and its L2 on disk ([`disk`]); [`local`] reads and writes a local folder's objects directly;
//! [`url`] reads a `--block-store` URL and the environment; [`probe`] checks a store before use.

pub(crate) mod backend;
pub(crate) mod cache;
pub(crate) mod codec;
pub(crate) mod disk;
pub(crate) mod io;
pub(crate) mod layout;
pub(crate) mod local;
pub(crate) mod probe;
pub(crate) mod url;

pub use backend::{BackendError, BackendSpec, Sse, Tuning, open_backend, open_backend_with};
pub(crate) use local::LocalFiles;
pub use probe::{check_backend, delete_volume_objects};
pub use url::{AZURITE_ACCOUNT, AZURITE_KEY, BLOCK_STORE_ENV};
