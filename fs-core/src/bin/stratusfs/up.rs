//! `stratusfs up` (glue over the library's face): a working mount with one command and no configuration. A metadata server
//! with its data in the data dir, a folder there as the block store, a default volume and token
//! made on the first run and reused after, the volume mounted in this process; Ctrl-C (SIGINT or
//! SIGTERM) unmounts and stops everything.

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use fs_core::admin::{Compression, TokenScope, VolumeSpec};
use fs_core::{
    AdminClient, BackendSpec, ClientTrust, Credentials, Mount, MountOptions, MountSpec, ServerConfig, Source,
};

/// The volume `up` makes and mounts.
pub const VOLUME: &str = "default";

pub struct UpConfig {
    pub mountpoint: PathBuf,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// For the volume made on the first run.
    pub compression: Compression,
    pub block_size: u32,
    pub retention_secs: Option<i64>,
    /// How often the server collects garbage.
    pub gc_interval: std::time::Duration,
    pub options: MountOptions,
    /// The block store of the volume made on the first run (checked); `None`: blocks/ in the
    /// data dir.
    pub block_store: Option<BackendSpec>,
    /// The secret of an encrypted default volume (made encrypted on the first run).
    pub encryption_secret_file: Option<PathBuf>,
}

/// The data dir when none is given: `$XDG_DATA_HOME/stratusfs`, else `~/.local/share/stratusfs`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("stratusfs");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/stratusfs"),
        None => PathBuf::from("/var/lib/stratusfs"),
    }
}

/// A secret kept in a file of the data dir, if it is there.
fn read_secret(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Keeps a secret in a file only its owner can read.
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{secret}\n").as_bytes())?;
    Ok(())
}

pub async fn up(cfg: UpConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating the data dir {}", dir.display()))?;
    std::fs::create_dir_all(&cfg.mountpoint)
        .with_context(|| format!("creating the mount point {}", cfg.mountpoint.display()))?;
    let admin_file = dir.join("admin.token");
    let admin_token = match read_secret(&admin_file) {
        Some(t) => t,
        None => {
            let t = uuid::Uuid::new_v4().to_string();
            write_secret(&admin_file, &t)?;
            t
        }
    };
    let mut server_cfg = ServerConfig::new(dir.join("meta"));
    server_cfg.listen = cfg.listen;
    server_cfg.http_listen = cfg.http_listen;
    server_cfg.admin_token_file = Some(admin_file.clone());
    server_cfg.gc_interval = cfg.gc_interval;
    let running = fs_core::server::start(server_cfg).await.with_context(|| {
        format!(
            "starting the metadata server on {} (another `stratusfs up` running? give --listen and --http-listen)",
            cfg.listen
        )
    })?;
    let addr = running.grpc_addr.to_string();
    let trust = ClientTrust { ca_file: None, fingerprint: Some(running.fingerprint.clone()), ..Default::default() };
    let result = async {
        let mut admin = AdminClient::connect(&addr, &trust, &admin_token).await?;
        let existing = admin.volume(VOLUME).await?;
        let exists = existing.is_some();
        match (existing.as_ref().map(|v| v.encrypted), &cfg.encryption_secret_file) {
            (Some(true), None) => anyhow::bail!(
                "the default volume in {} is encrypted: give its secret with --encryption-secret-file FILE",
                dir.display()
            ),
            (Some(false), Some(_)) => anyhow::bail!(
                "the default volume in {} was made without encryption, which cannot be added to it; \
                 drop --encryption-secret-file, or give another --data-dir for an encrypted volume",
                dir.display()
            ),
            _ => {}
        }
        let encryption = match &cfg.encryption_secret_file {
            Some(path) => Some(fs_core::crypto::Secret::read(path)?),
            None => None,
        };
        // The volume's block store: the one it has, else the one asked for, else blocks/ here.
        let store = match (existing, &cfg.block_store) {
            (Some(v), Some(wanted)) if v.block_store.url() != wanted.url() => anyhow::bail!(
                "the volume in {} keeps its blocks in {}, not {}; give that --block-store (or none), or another --data-dir",
                dir.display(),
                v.block_store.url(),
                wanted.url()
            ),
            (Some(v), _) => v.block_store,
            (None, Some(wanted)) => wanted.clone(),
            (None, None) => {
                let blocks = dir.join("blocks");
                std::fs::create_dir_all(&blocks)?;
                BackendSpec::Local { path: blocks, prefix: String::new() }
            }
        };
        if !exists {
            let spec = VolumeSpec {
                block_size: Some(cfg.block_size),
                compression: cfg.compression,
                retention_secs: cfg.retention_secs,
                encryption: encryption.clone(),
                ..VolumeSpec::new(VOLUME, store.clone())
            };
            admin.create_volume(&spec).await.context("creating the default volume")?;
        }
        let token_file = dir.join(format!("{VOLUME}.token"));
        let token = match read_secret(&token_file) {
            Some(t) => t,
            None => {
                // Only the token's hash is on the server: a lost token file means a new token.
                let scope = TokenScope { comment: "stratusfs up".into(), ..Default::default() };
                let t = admin.create_token(VOLUME, &scope).await.context("creating a token for the default volume")?.token;
                write_secret(&token_file, &t)?;
                t
            }
        };
        let source = Source { server: addr.clone(), volume: VOLUME.into(), subpath: String::new() };
        let mut options = cfg.options.clone();
        options.fs.encryption_secret = encryption;
        let spec = MountSpec {
            source: source.clone(),
            mountpoint: cfg.mountpoint.clone(),
            credentials: Credentials { token, trust: trust.clone() },
            options,
        };
        let fingerprint = running.fingerprint.clone();
        let (mountpoint, data_dir) = (cfg.mountpoint.display().to_string(), dir.display().to_string());
        let mount = Mount::start(spec).await?;
        {
            println!("stratusfs up: {}", if exists { "reusing the data of an earlier run" } else { "first run: made the default volume and its token" });
            println!("  data        {data_dir} (metadata in meta/)");
            println!("  blocks      {}", store.url());
            if let Some(f) = &cfg.encryption_secret_file {
                println!("  encryption  end to end (AES-256-GCM), secret from {}", f.display());
            }
            println!("  metadata    {addr} (TLS, fingerprint {fingerprint}); metrics on http://{}/metrics", running.http_addr);
            println!("  volume      {source} mounted on {mountpoint}");
            let secret = match &cfg.encryption_secret_file {
                Some(f) => format!(" -o encryption_secret_file={}", f.display()),
                None => String::new(),
            };
            println!(
                "  mount again stratusfs mount {source} DIR --token-file {} --fingerprint {fingerprint}{secret}",
                token_file.display()
            );
            println!("  admin       STRATUSFS_ACCOUNT_TOKEN_FILE={} stratusfs admin --server {addr} --fingerprint {fingerprint} usage {VOLUME}", admin_file.display());
            println!("Ctrl-C unmounts and stops.");
        }
        Ok::<_, anyhow::Error>(mount.serve_until(shutdown).await?)
    }
    .await;
    running.stop().await;
    println!("stratusfs up: unmounted {} and stopped the metadata server", cfg.mountpoint.display());
    result
}
