//! An in-process metadata server for tests and benchmarks: a temporary data dir, an account
//! token, volumes on a local-folder block store, sessions over real TLS on loopback.

use std::sync::Arc;
use std::time::Duration;

use crate::blockstore::BackendSpec;
use crate::metaclient::{AdminClient, Session, connect};
use crate::server::state::MetaServer;
use crate::server::{Running, ServerConfig, start};
use crate::tls::ClientTrust;
use crate::wire::pb;

/// The generated admin client with the account token on every call.
pub type RawAdmin = pb::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, crate::metaclient::admin::AccountToken>,
>;

pub struct TestServer {
    pub running: Running,
    pub dir: tempfile::TempDir,
    pub admin_token: String,
    pub cfg: ServerConfig,
}

impl TestServer {
    /// A configuration on loopback with free ports and the given data dir.
    pub fn config(dir: &std::path::Path) -> ServerConfig {
        let mut cfg = ServerConfig::new(dir.join("data"));
        cfg.listen = "127.0.0.1:0".parse().expect("an address literal");
        cfg.http_listen = "127.0.0.1:0".parse().expect("an address literal");
        cfg.admin_token_file = Some(dir.join("admin.token"));
        cfg.gc_interval = Duration::ZERO;
        cfg
    }

    /// Starts a server; `tweak` adjusts the configuration (sync, lease, grace).
    pub async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let admin_token = uuid::Uuid::new_v4().to_string();
        std::fs::write(dir.path().join("admin.token"), &admin_token).expect("writing the admin token");
        let mut cfg = Self::config(dir.path());
        tweak(&mut cfg);
        let running = start(cfg.clone()).await.expect("the test server starts");
        TestServer { running, dir, admin_token, cfg }
    }

    /// Stops the server and starts it again on the same data and the same ports, so clients'
    /// channels reconnect by themselves.
    pub async fn restart(self) -> TestServer {
        let TestServer { running, dir, admin_token, mut cfg } = self;
        cfg.listen = running.grpc_addr;
        cfg.http_listen = running.http_addr;
        running.stop().await;
        let running = start(cfg.clone()).await.expect("the test server restarts");
        TestServer { running, dir, admin_token, cfg }
    }

    pub fn addr(&self) -> String {
        self.running.grpc_addr.to_string()
    }

    pub fn trust(&self) -> ClientTrust {
        ClientTrust { ca_file: None, fingerprint: Some(self.running.fingerprint.clone()), ..Default::default() }
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        connect(&self.addr(), &self.trust(), Duration::ZERO).await.expect("connecting to the test server")
    }

    /// The server's state, for tests that look inside (metrics, a volume's tables).
    pub fn server(&self) -> &std::sync::Arc<MetaServer> {
        &self.running.server
    }

    /// The typed admin client.
    pub async fn admin_client(&self) -> AdminClient {
        AdminClient::new(self.channel().await, &self.admin_token).expect("an admin client")
    }

    /// The admin service's protocol client (tests of the protocol itself).
    pub async fn admin(&self) -> RawAdmin {
        self.admin_client().await.raw()
    }

    /// Creates a volume on a local-folder block store in the data dir; returns it and a
    /// full-access token.
    pub async fn volume(
        &self,
        name: &str,
        tweak: impl FnOnce(&mut pb::CreateVolumeRequest),
    ) -> (pb::VolumeInfo, String) {
        let mut admin = self.admin().await;
        let mut req = pb::CreateVolumeRequest {
            name: name.into(),
            backend_json: serde_json::to_string(&BackendSpec::Local {
                path: self.dir.path().join("blocks"),
                prefix: String::new(),
            })
            .expect("a spec serializes"),
            ..Default::default()
        };
        tweak(&mut req);
        let info = admin.create_volume(req).await.expect("creating a volume").into_inner();
        let token = self.token(name, |_| {}).await;
        (info, token)
    }

    pub async fn token(&self, volume: &str, tweak: impl FnOnce(&mut pb::CreateTokenRequest)) -> String {
        let mut req = pb::CreateTokenRequest { volume: volume.into(), ..Default::default() };
        tweak(&mut req);
        self.admin().await.create_token(req).await.expect("creating a token").into_inner().token
    }

    pub async fn session(&self, volume: &str, token: &str) -> Arc<Session> {
        Session::open(self.channel().await, volume, token, "test").await.expect("opening a session")
    }
}
