//! Metadata server tests: a real server in this process, reached over TLS on loopback by real
//! gRPC clients (the same the mounts use).

mod admin;
mod bad_input;
mod crash;
mod delegations;
mod fs;
mod locks;
mod model;
mod posix;
mod quota_gc;
mod restart;
mod server_ops;
mod tokens;

use fs::Fs;
use fs_core::testkit::TestServer;

/// A server with one volume "v" and a root session on it.
pub async fn setup() -> (TestServer, Fs) {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let s = srv.session("v", &token).await;
    (srv, Fs::new(s))
}
