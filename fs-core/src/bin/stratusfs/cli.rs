//! The `stratusfs` command line: flags (clap) and the thin glue from each subcommand to the
//! library. The binary only installs the TLS provider and logging and calls [`run`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use fs_core::admin::{Compression, Quota, TokenScope, VolumeSpec, VolumeUpdate};
use fs_core::crypto::Secret;
use fs_core::{
    AdminClient, BackendSpec, ClientTrust, Credentials, Mount, MountOptions, MountSpec, ServerConfig, Source,
};

#[derive(Parser)]
#[command(
    name = "stratusfs",
    version,
    about = "A cloud POSIX filesystem: data in object storage, metadata on a metadata server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a metadata server.
    Meta(MetaArgs),
    /// Administer a metadata server: volumes, tokens, quotas, usage.
    Admin(AdminArgs),
    /// Delete the block objects of a volume that nothing may need any more.
    Gc(GcArgs),
    /// Mount a volume: stratusfs://HOST:PORT/VOLUME[/SUBPATH] on a directory. Also runs as
    /// mount.stratusfs, and as `stratusfs SOURCE DIR -o OPTIONS` (what mount.fuse calls for
    /// fstab entries of type fuse.stratusfs).
    Mount(MountCliArgs),
    /// Everything on this machine with no configuration: a metadata server, a local block
    /// store, a default volume, mounted on --mountpoint; Ctrl-C stops it all.
    Up(UpArgs),
    /// Install the mount(8) helpers (links to this program) so that `mount -t stratusfs`,
    /// fstab entries and `mount -o remount` find it: DIR/mount.stratusfs and
    /// DIR/mount.fuse.stratusfs.
    InstallHelpers {
        #[arg(long, default_value = "/sbin")]
        dir: PathBuf,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args)]
pub struct MountCliArgs {
    /// stratusfs://HOST:PORT/VOLUME[/SUBPATH]
    pub source: String,
    pub mountpoint: PathBuf,
    /// File holding the volume token (or -o token_file=PATH).
    #[arg(long, env = "STRATUSFS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA (or server certificate) file to verify the server with (or -o ca_file=PATH).
    #[arg(long, env = "STRATUSFS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the server certificate (or -o fingerprint=HEX).
    #[arg(long, env = "STRATUSFS_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Mount options, comma separated as for mount(8): ro, allow_other, noatime, noexec, nosuid,
    /// nodev, umask=OCTAL, attr_ttl=SECS, entry_ttl=SECS, negative_ttl=SECS, cache_mib=N, dirty_mib=N, threads=N, meta_wait=SECS, store_wait=SECS, disk_cache_dir=PATH, disk_cache_mib=N
    /// (how long requests wait for an unreachable metadata server, default 60), nodelegations
    /// (no write-back creates, docs/write-back-metadata.md), token_file=,
    /// ca_file=, fingerprint=, log_file=.
    #[arg(short = 'o')]
    pub options: Vec<String>,
    /// Mount read-only (the same as -o ro).
    #[arg(short = 'r', long)]
    pub read_only: bool,
    /// Stay in the foreground, logging to stderr (default: detach once mounted, as mount(8)
    /// helpers do, logging to log_file or /var/log/stratusfs/).
    #[arg(short = 'F', long)]
    pub foreground: bool,
    /// Do nothing (mount(8) -f).
    #[arg(long, hide = true)]
    pub fake: bool,
}

#[derive(Args)]
pub struct UpArgs {
    /// Where to mount the volume (created if missing).
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// Metadata, blocks, tokens and certificate (default: $XDG_DATA_HOME/stratusfs or
    /// ~/.local/share/stratusfs).
    #[arg(long, env = "STRATUSFS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The metadata server's gRPC (TLS) address.
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub listen: SocketAddr,
    /// Its plain-HTTP address (/metrics, /healthz).
    #[arg(long, default_value = "127.0.0.1:7481")]
    pub http_listen: SocketAddr,
    /// Compression of the volume made on the first run: none, lz4 or zstd.
    #[arg(long, default_value = "lz4")]
    pub compression: String,
    /// Block size of the volume made on the first run.
    #[arg(long, default_value_t = 4194304)]
    pub block_size: u32,
    /// History retention of the volume made on the first run, in seconds (-1 forever, 0 none;
    /// default 7 days).
    #[arg(long, allow_hyphen_values = true)]
    pub retention_secs: Option<i64>,
    /// Seconds between garbage collections of block objects nothing needs any more.
    #[arg(long, default_value_t = 3600)]
    pub gc_interval_secs: u64,
    /// Where the volume made on the first run keeps its blocks: s3://BUCKET/PREFIX,
    /// gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or file:///DIR (default: blocks/ in the data
    /// dir). Credentials and endpoints come from the cloud's usual environment variables
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION,
    /// GOOGLE_APPLICATION_CREDENTIALS, STORAGE_EMULATOR_HOST, AZURE_STORAGE_ACCOUNT_NAME,
    /// AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_ENDPOINT), read once.
    #[arg(long)]
    pub block_store: Option<String>,
    /// Encrypt the volume made on the first run end to end with the secret in FILE (`-`: stdin);
    /// later runs need the same file.
    #[arg(long, value_name = "FILE")]
    pub encryption_secret_file: Option<PathBuf>,
    /// Mount options (see `stratusfs mount --help`).
    #[arg(short = 'o')]
    pub options: Vec<String>,
}

/// A `--block-store` URL with the environment's credentials, checked: the store answered a
/// write, a read and a delete.
async fn block_store_from_url(url: &str) -> anyhow::Result<BackendSpec> {
    let spec = BackendSpec::from_url(url, |k| std::env::var(k).ok())?;
    fs_core::check_backend(&spec).await?;
    Ok(spec)
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Metadata operations over TLS against the in-process store, and memory per idle session.
    /// Starts its own server on loopback; takes at most 5 minutes.
    Meta {
        /// Idle sessions to open for the memory figure (raise `ulimit -n` for many).
        #[arg(long, default_value_t = 500)]
        sessions: usize,
        /// Files per concurrency level.
        #[arg(long, default_value_t = 4000)]
        files: usize,
        /// Session counts to measure with.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        concurrency: Vec<usize>,
        /// Run the server with --sync.
        #[arg(long)]
        sync: bool,
    },
    /// The object store written and read directly with a mount's client code and concurrency:
    /// the ceiling of a mount's sequential figures. Credentials and endpoint from the
    /// environment, as for `--block-store`; the objects are deleted at the end.
    Store {
        /// `s3://BUCKET/PREFIX`, `gs://...`, `az://...` or `file:///DIR`.
        #[arg(long)]
        block_store: String,
        /// MiB written and read per level of concurrency.
        #[arg(long, default_value_t = 512)]
        mib: u64,
        /// Size of each object in MiB (a volume's block size).
        #[arg(long, default_value_t = 4)]
        object_mib: u64,
        /// Requests in flight to measure with (a mount allows 16).
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        in_flight: Vec<usize>,
    },
}

#[derive(Args)]
pub struct MetaArgs {
    /// The whole configuration as a YAML or JSON file (camelCase fields of
    /// fs_core::ServerConfig: dataDir, listen, httpListen, tlsCert {cert, key}, tlsNames, sync,
    /// leaseSecs, adminTokenFile, gcIntervalSecs, gcGraceSecs); replaces every other flag.
    #[arg(long, conflicts_with_all = ["data_dir", "tls_cert", "sync", "admin_token_file"])]
    pub config: Option<PathBuf>,
    /// Where the databases, the generated certificate and the volumes live.
    #[arg(long, env = "STRATUSFS_DATA_DIR", required_unless_present = "config")]
    pub data_dir: Option<PathBuf>,
    /// gRPC (TLS) address.
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub listen: SocketAddr,
    /// Plain-HTTP address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:7481")]
    pub http_listen: SocketAddr,
    /// Server certificate (PEM); reloaded when the file changes. Without it a self-signed one is
    /// generated once and kept in DATA_DIR/tls.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Names (DNS or IP) for a generated certificate.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    pub tls_names: Vec<String>,
    /// Make every change durable before replying (otherwise: flush/fsync commits always are, other
    /// changes within 1 s).
    #[arg(long)]
    pub sync: bool,
    /// Session lease in seconds: a client silent this long loses its session, locks and opens.
    #[arg(long, default_value_t = 30)]
    pub lease_secs: u64,
    /// A file whose content is an account token to accept (bootstrap).
    #[arg(long, env = "STRATUSFS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Seconds between scheduled garbage collections (0: never).
    #[arg(long, default_value_t = 3600)]
    pub gc_interval_secs: u64,
    /// Seconds an uploaded block that no commit references is kept.
    #[arg(long, default_value_t = 3600)]
    pub gc_grace_secs: u64,
}

/// How to reach a server.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The metadata server, HOST:PORT.
    #[arg(long, env = "STRATUSFS_SERVER", default_value = "127.0.0.1:7480")]
    pub server: String,
    /// CA (or server certificate) file to verify the server with.
    #[arg(long, env = "STRATUSFS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the server certificate (the server logs it at start).
    #[arg(long, env = "STRATUSFS_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// File holding an account token.
    #[arg(long, env = "STRATUSFS_ACCOUNT_TOKEN_FILE")]
    pub account_token_file: Option<PathBuf>,
}

impl ServerArgs {
    async fn admin(&self) -> anyhow::Result<AdminClient> {
        let trust =
            ClientTrust { ca_file: self.ca_file.clone(), fingerprint: self.fingerprint.clone(), ..Default::default() };
        let path =
            self.account_token_file.as_ref().context("give --account-token-file (or STRATUSFS_ACCOUNT_TOKEN_FILE)")?;
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading the account token from {}", path.display()))?;
        Ok(AdminClient::connect(&self.server, &trust, &token).await?)
    }
}

#[derive(Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Volumes: create (encrypted or not), list, update, rekey, delete.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Volume tokens: what mounts present.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Account tokens: what admin commands present.
    #[command(subcommand)]
    AccountToken(AccountTokenCommand),
    /// Quotas on directories.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Usage, quotas and live sessions of a volume.
    Usage { volume: String },
}

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create a volume.
    Create {
        name: String,
        /// Where the blocks go: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or
        /// file:///DIR, with credentials from the environment (see `stratusfs up --help`).
        #[arg(long, conflicts_with_all = ["local", "backend_json"])]
        block_store: Option<String>,
        /// Block-store spec as JSON, e.g. {"backend":"s3","bucket":"b","endpoint":"http://..."}.
        #[arg(long, conflicts_with = "local")]
        backend_json: Option<String>,
        /// Shorthand for a local-folder block store.
        #[arg(long)]
        local: Option<PathBuf>,
        /// Block size in bytes: a power of two from 262144 to 8388608.
        #[arg(long, default_value_t = 4194304)]
        block_size: u32,
        /// none, lz4 or zstd.
        #[arg(long, default_value = "lz4")]
        compression: String,
        /// History retention in seconds (-1 forever, 0 none).
        #[arg(long, allow_hyphen_values = true)]
        retention_secs: Option<i64>,
        #[arg(long, default_value_t = 0)]
        quota_bytes: u64,
        #[arg(long, default_value_t = 0)]
        quota_inodes: u64,
        /// Encrypt the volume end to end (docs/encryption.md) with the secret read from
        /// --secret-file; it cannot be added later.
        #[arg(long, requires = "secret_file")]
        encrypt: bool,
        /// The encryption secret: a file, or `-` for stdin (never an argument).
        #[arg(long, value_name = "FILE|-", requires = "encrypt")]
        secret_file: Option<PathBuf>,
    },
    /// Change an encrypted volume's secret; no data is rewritten.
    Rekey {
        name: String,
        /// The current secret: a file, or `-` for stdin.
        #[arg(long, value_name = "FILE|-")]
        old_secret_file: PathBuf,
        /// The new secret: a file, or `-` for stdin (not both on stdin).
        #[arg(long, value_name = "FILE|-")]
        new_secret_file: PathBuf,
    },
    /// List volumes.
    List,
    /// Delete a volume's metadata (block objects stay in the bucket).
    Delete { name: String },
    /// Change a volume's retention.
    Update {
        name: String,
        #[arg(long, allow_hyphen_values = true)]
        retention_secs: Option<i64>,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a volume token; prints the token (shown once).
    Create {
        volume: String,
        /// Limit the token to this directory of the volume.
        #[arg(long, default_value = "/")]
        subpath: String,
        #[arg(long)]
        read_only: bool,
        #[arg(long)]
        root_squash: bool,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// List a volume's tokens (ids, never the tokens).
    List { volume: String },
    /// Revoke a token by id; its live sessions end.
    Revoke { volume: String, id: String },
}

#[derive(Subcommand)]
pub enum AccountTokenCommand {
    /// Create another account token; prints it (shown once).
    Create {
        #[arg(long, default_value = "")]
        comment: String,
    },
}

#[derive(Subcommand)]
pub enum QuotaCommand {
    /// Set a quota on a directory ("/" for the volume). 0 means no limit.
    Set {
        volume: String,
        path: String,
        #[arg(long, default_value_t = 0)]
        bytes: u64,
        #[arg(long, default_value_t = 0)]
        inodes: u64,
    },
}

#[derive(Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    pub volume: String,
    /// Count what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The server configuration `stratusfs meta` was given: a file, or its flags.
fn server_config(a: MetaArgs) -> anyhow::Result<ServerConfig> {
    if let Some(path) = a.config {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        return serde_saphyr::from_str(&text)
            .with_context(|| format!("{}: not a server configuration", path.display()));
    }
    let mut cfg = ServerConfig::new(a.data_dir.context("give --data-dir or --config")?);
    cfg.listen = a.listen;
    cfg.http_listen = a.http_listen;
    cfg.tls_cert = a.tls_cert.zip(a.tls_key).map(|(cert, key)| fs_core::server::TlsFiles { cert, key });
    cfg.tls_names = a.tls_names;
    cfg.sync = a.sync;
    cfg.lease = Duration::from_secs(a.lease_secs.max(1));
    cfg.admin_token_file = a.admin_token_file;
    cfg.gc_interval = Duration::from_secs(a.gc_interval_secs);
    cfg.gc_grace = Duration::from_secs(a.gc_grace_secs);
    Ok(cfg)
}

/// Runs a command; `ready` is the report pipe of a detached mount ([`detach_to`]).
pub async fn run(cli: Cli, ready: Option<crate::daemon::ReadyPipe>) -> anyhow::Result<()> {
    match cli.command {
        Command::Meta(a) => {
            let running = fs_core::server::start(server_config(a)?).await?;
            println!(
                "stratusfs meta listening on {} (TLS, fingerprint {}), metrics on http://{}/metrics",
                running.grpc_addr, running.fingerprint, running.http_addr
            );
            shutdown_signal().await;
            tracing::info!("stopping");
            running.stop().await;
            Ok(())
        }
        Command::Admin(a) => admin(a).await,
        Command::Mount(m) => mount_cmd(m, ready).await,
        Command::InstallHelpers { dir } => {
            let exe = std::env::current_exe().context("finding this program's path")?;
            for name in ["mount.stratusfs", "mount.fuse.stratusfs"] {
                let link = dir.join(name);
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&exe, &link)
                    .with_context(|| format!("linking {} to {}", link.display(), exe.display()))?;
                println!("{} -> {}", link.display(), exe.display());
            }
            Ok(())
        }
        Command::Up(u) => {
            let cfg = crate::up::UpConfig {
                mountpoint: u.mountpoint,
                data_dir: u.data_dir.unwrap_or_else(crate::up::default_data_dir),
                listen: u.listen,
                http_listen: u.http_listen,
                compression: u.compression.parse()?,
                block_size: u.block_size,
                retention_secs: u.retention_secs,
                gc_interval: Duration::from_secs(u.gc_interval_secs),
                options: MountOptions::parse(&u.options)?,
                // Checked before anything starts: a bad store fails the command at once.
                block_store: match &u.block_store {
                    Some(url) => Some(block_store_from_url(url).await?),
                    None => None,
                },
                encryption_secret_file: u.encryption_secret_file,
            };
            fs_core::mount::keep_freed_buffers();
            crate::up::up(cfg, shutdown_signal()).await
        }
        Command::Bench(BenchCommand::Meta { sessions, files, concurrency, sync }) => {
            let args = fs_core::bench::BenchArgs { concurrency, files, idle_sessions: sessions, sync };
            Ok(fs_core::bench::bench_meta(args).await?)
        }
        Command::Bench(BenchCommand::Store { block_store, mib, object_mib, in_flight }) => {
            let spec = block_store_from_url(&block_store).await?;
            let args = fs_core::bench::StoreBenchArgs { spec, total_mib: mib, object_mib, in_flight };
            fs_core::bench::bench_store(args).await
        }
        Command::Gc(g) => {
            let r = g.server.admin().await?.gc(&g.volume, g.dry_run).await?;
            println!(
                "{} {} block objects; kept {} for retention and {} uploads in their grace period",
                if g.dry_run { "would delete" } else { "deleted" },
                r.deleted,
                r.kept_retention,
                r.kept_grace
            );
            Ok(())
        }
    }
}

async fn admin(a: AdminArgs) -> anyhow::Result<()> {
    let mut c = a.server.admin().await?;
    match a.command {
        AdminCommand::Volume(VolumeCommand::Create {
            name,
            block_store,
            backend_json,
            local,
            block_size,
            compression,
            retention_secs,
            quota_bytes,
            quota_inodes,
            encrypt,
            secret_file,
        }) => {
            let block_store = match (block_store, backend_json, local) {
                (Some(url), _, _) => block_store_from_url(&url).await?,
                (None, Some(j), _) => serde_json::from_str(&j).context("--backend-json: not a block-store spec")?,
                (None, None, Some(path)) => BackendSpec::Local { path, prefix: String::new() },
                (None, None, None) => {
                    bail!("give the block store: --block-store URL, --local DIR or --backend-json JSON")
                }
            };
            let spec = VolumeSpec {
                block_size: Some(block_size),
                compression: compression.parse::<Compression>()?,
                retention_secs,
                quota: Quota { bytes: quota_bytes, inodes: quota_inodes },
                encryption: match (encrypt, secret_file) {
                    (true, Some(f)) => Some(Secret::read(&f)?),
                    _ => None,
                },
                ..VolumeSpec::new(name, block_store)
            };
            let v = c.create_volume(&spec).await?;
            let how = if v.encrypted { ", encrypted" } else { "" };
            println!("created volume {} ({}{how})", v.name, v.uuid);
        }
        AdminCommand::Volume(VolumeCommand::Rekey { name, old_secret_file, new_secret_file }) => {
            if old_secret_file.as_os_str() == "-" && new_secret_file.as_os_str() == "-" {
                bail!("only one of --old-secret-file and --new-secret-file can be stdin (-)");
            }
            let (old, new) = (Secret::read(&old_secret_file)?, Secret::read(&new_secret_file)?);
            let v = c.rekey_volume(&name, &old, &new).await?;
            println!("volume {}: secret changed (no data rewritten); mounts need the new secret from now on", v.name);
        }
        AdminCommand::Volume(VolumeCommand::List) => {
            for v in c.volumes().await? {
                println!(
                    "{}\t{}\tblock_size={}\tretention_secs={}\tencrypted={}",
                    v.name, v.uuid, v.block_size, v.retention_secs, v.encrypted
                );
            }
        }
        AdminCommand::Volume(VolumeCommand::Delete { name }) => {
            c.delete_volume(&name).await?;
            println!("deleted volume {name}");
        }
        AdminCommand::Volume(VolumeCommand::Update { name, retention_secs }) => {
            let v = c.update_volume(&name, &VolumeUpdate { retention_secs, ..Default::default() }).await?;
            println!("volume {}: retention_secs={}", v.name, v.retention_secs);
        }
        AdminCommand::Token(TokenCommand::Create { volume, subpath, read_only, root_squash, comment }) => {
            let t = c.create_token(&volume, &TokenScope { subpath, read_only, root_squash, comment }).await?;
            println!("{}", t.token);
            eprintln!("token id {} (the token is shown only now)", t.id);
        }
        AdminCommand::Token(TokenCommand::List { volume }) => {
            for t in c.tokens(&volume).await? {
                println!(
                    "{}\tsubpath={}\tread_only={}\troot_squash={}\t{}",
                    t.id, t.subpath, t.read_only, t.root_squash, t.comment
                );
            }
        }
        AdminCommand::Token(TokenCommand::Revoke { volume, id }) => {
            c.revoke_token(&volume, &id).await?;
            println!("revoked token {id}");
        }
        AdminCommand::AccountToken(AccountTokenCommand::Create { comment }) => {
            println!("{}", c.create_account_token(&comment).await?.token);
        }
        AdminCommand::Quota(QuotaCommand::Set { volume, path, bytes, inodes }) => {
            c.set_quota(&volume, &path, Quota { bytes, inodes }).await?;
            println!("quota on {path}: bytes={bytes} inodes={inodes} (0 = no limit)");
        }
        AdminCommand::Usage { volume } => {
            let u = c.usage(&volume).await?;
            println!(
                "used_bytes={} used_inodes={} stored_blocks={} pending_gc_blocks={}",
                u.bytes, u.inodes, u.stored_blocks, u.pending_gc_blocks
            );
            for q in u.quotas {
                println!(
                    "quota {}: bytes {}/{} inodes {}/{}",
                    q.path, q.used_bytes, q.quota.bytes, q.used_inodes, q.quota.inodes
                );
            }
            for s in u.sessions {
                println!(
                    "session {} client={} token={} open_files={} locks={}",
                    s.id, s.client, s.token_id, s.open_files, s.locks
                );
            }
        }
    }
    Ok(())
}

/// The parsed options of a mount command, with the token read.
fn mount_spec(m: &MountCliArgs) -> anyhow::Result<MountSpec> {
    let source: Source = m.source.parse()?;
    let mut options = MountOptions::parse(&m.options)?;
    options.kernel.read_only |= m.read_only;
    let token_file = m
        .token_file
        .clone()
        .or_else(|| options.token_file.clone())
        .context("give the volume token: --token-file PATH or -o token_file=PATH")?;
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading the token from {}", token_file.display()))?;
    let trust = ClientTrust {
        ca_file: m.ca_file.clone().or_else(|| options.ca_file.clone()),
        fingerprint: m.fingerprint.clone().or_else(|| options.fingerprint.clone()),
        ..Default::default()
    };
    Ok(MountSpec {
        source,
        mountpoint: m.mountpoint.clone(),
        credentials: Credentials { token: token.trim().to_string(), trust },
        options,
    })
}

/// What the process must do before its runtime starts: detach a mount from the terminal.
/// Returns the log file to detach to, or `None` to stay in the foreground.
pub fn detach_to(cli: &Cli) -> Option<PathBuf> {
    let Command::Mount(m) = &cli.command else { return None };
    let options = MountOptions::parse(&m.options).ok()?;
    if m.foreground || m.fake || options.remount {
        return None;
    }
    Some(options.log_file.unwrap_or_else(|| crate::daemon::default_log(&m.mountpoint)))
}

async fn mount_cmd(m: MountCliArgs, ready: Option<crate::daemon::ReadyPipe>) -> anyhow::Result<()> {
    if m.fake {
        return Ok(());
    }
    let parsed = MountOptions::parse(&m.options)?;
    if parsed.remount {
        return Ok(fs_core::mount::remount(&m.mountpoint, &parsed)?);
    }
    fs_core::mount::keep_freed_buffers();
    let mounted = match mount_spec(&m) {
        Ok(spec) => Mount::start(spec).await.map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    let mount = match mounted {
        Ok(mount) => {
            if let Some(r) = ready {
                r.ok();
            }
            mount
        }
        Err(e) => {
            if let Some(r) = ready {
                r.fail(&format!("{e:#}"));
            }
            return Err(e);
        }
    };
    serve_until_shutdown(mount).await
}

/// Serves until SIGINT/SIGTERM (then unmounts) or an unmount from outside.
pub async fn serve_until_shutdown(mount: Mount) -> anyhow::Result<()> {
    Ok(mount.serve_until(shutdown_signal()).await?)
}

/// Rewrites the arguments of the mount helper conventions into `stratusfs mount ...`:
/// `mount.stratusfs SOURCE DIR [-sfnv] [-o OPTS]` (mount -t stratusfs) and
/// `stratusfs SOURCE DIR -o OPTS` (what mount.fuse runs for type fuse.stratusfs).
pub fn helper_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let argv0 = args.first().and_then(|a| Path::new(a).file_name()).map(|n| n.to_string_lossy().into_owned());
    let is_helper = argv0.as_deref().is_some_and(|n| n.starts_with("mount.stratusfs") || n == "mount.fuse.stratusfs")
        || args.get(1).is_some_and(|a| a.to_string_lossy().starts_with("stratusfs://"));
    if !is_helper {
        return args;
    }
    let mut out: Vec<std::ffi::OsString> = vec!["stratusfs".into(), "mount".into()];
    let mut rest = args.into_iter().skip(1);
    while let Some(a) = rest.next() {
        match a.to_str() {
            // mount(8): sloppy, no mtab, verbose: nothing to do for us.
            Some("-s" | "-n" | "-v") => {}
            Some("-f") => out.push("--fake".into()),
            Some("-t" | "-N") => {
                rest.next();
            }
            _ => out.push(a),
        }
    }
    out
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
