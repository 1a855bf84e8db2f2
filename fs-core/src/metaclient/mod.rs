//! Clients of the metadata server: the channel ([`channel`]), the session a mount holds
//! ([`session`]) and the typed admin client ([`admin`]) that operators, the CSI controller and
//! `stratusfs admin` use.

pub mod admin;
pub mod channel;
pub mod session;

pub use admin::AdminClient;
pub use channel::{ClientError, MetaChannel, connect};

/// A session's client of the `Meta` service.
pub type MetaRpc = crate::wire::pb::meta_client::MetaClient<MetaChannel>;
pub use session::Session;
