//! The typed admin client: what an operator, the CSI controller and `stratusfs admin` do with a
//! metadata server (volumes, tokens, quotas, usage and sessions, claims, garbage collection),
//! in the library's own types rather than protocol messages. Every call carries an account token.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{ClientError, connect};
use crate::blockstore::BackendSpec;
use crate::tls::ClientTrust;
use crate::wire::{ACCOUNT_TOKEN_KEY, MetaError, pb};

/// How a volume's blocks are compressed (each 64 KiB chunk on its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    #[default]
    Lz4,
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Compression, ClientError> {
        match s {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(ClientError::BadInput(format!("compression {other:?}: use none, lz4 or zstd"))),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

impl Compression {
    fn to_pb(self) -> pb::Compression {
        let kind = match self {
            Compression::None => pb::compression::Kind::None,
            Compression::Lz4 => pb::compression::Kind::Lz4,
            Compression::Zstd => pb::compression::Kind::Zstd,
        };
        pb::Compression { kind: kind as i32, level: 0 }
    }

    fn of_pb(c: Option<pb::Compression>) -> Compression {
        match c.map(|c| c.kind()) {
            Some(pb::compression::Kind::None) => Compression::None,
            Some(pb::compression::Kind::Zstd) => Compression::Zstd,
            _ => Compression::Lz4,
        }
    }
}

/// A limit on bytes and inodes; 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub bytes: u64,
    pub inodes: u64,
}

impl Quota {
    /// No limit.
    pub const NONE: Quota = Quota { bytes: 0, inodes: 0 };

    fn to_pb(self) -> pb::Quota {
        pb::Quota { max_bytes: self.bytes, max_inodes: self.inodes }
    }

    fn of_pb(q: Option<pb::Quota>) -> Quota {
        q.map(|q| Quota { bytes: q.max_bytes, inodes: q.max_inodes }).unwrap_or_default()
    }
}

/// A volume to create.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// 1..=63 letters, digits, '-', '_' or '.'.
    pub name: String,
    pub block_store: BackendSpec,
    /// A power of two from 256 KiB to 8 MiB; `None`: 4 MiB. Fixed at creation.
    pub block_size: Option<u32>,
    pub compression: Compression,
    /// Seconds of history kept (-1 forever, 0 none); `None`: 7 days.
    pub retention_secs: Option<i64>,
    pub quota: Quota,
    /// Encrypt the volume with this secret (docs/encryption.md): the data key is made and
    /// wrapped here, the server keeps only the envelope. Fixed at creation; never serialised.
    #[serde(skip)]
    pub encryption: Option<crate::crypto::Secret>,
}

impl VolumeSpec {
    /// A volume with the defaults: 4 MiB blocks, lz4, 7 days of history, no quota.
    pub fn new(name: impl Into<String>, block_store: BackendSpec) -> VolumeSpec {
        VolumeSpec {
            name: name.into(),
            block_store,
            block_size: None,
            compression: Compression::Lz4,
            retention_secs: None,
            quota: Quota::NONE,
            encryption: None,
        }
    }
}

/// A volume as the server has it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub uuid: String,
    pub block_size: u32,
    pub compression: Compression,
    pub retention_secs: i64,
    pub quota: Quota,
    pub block_store: BackendSpec,
    /// The volume's data is encrypted (its key envelope is on the server).
    pub encrypted: bool,
}

impl Volume {
    fn of_pb(v: pb::VolumeInfo) -> Result<Volume, ClientError> {
        let block_store = serde_json::from_str(&v.backend_json).map_err(|e| {
            ClientError::BadInput(format!("the server's block-store spec of volume {:?} does not parse: {e}", v.name))
        })?;
        Ok(Volume {
            block_size: v.block_size,
            compression: Compression::of_pb(v.compression),
            retention_secs: v.retention_secs,
            quota: Quota::of_pb(v.quota),
            encrypted: v.encryption.is_some(),
            block_store,
            uuid: v.uuid,
            name: v.name,
        })
    }
}

/// What [`AdminClient::update_volume`] changes (`None`: unchanged).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VolumeUpdate {
    pub retention_secs: Option<i64>,
    pub quota: Option<Quota>,
    /// A new spec for the same bucket content (credential rotation).
    pub block_store: Option<BackendSpec>,
}

/// What a volume token allows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenScope {
    /// The directory the token is limited to ("" or "/": the whole volume).
    pub subpath: String,
    pub read_only: bool,
    /// Requests as root act as nobody.
    pub root_squash: bool,
    pub comment: String,
}

/// A token just made: shown once (the server keeps only its hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    pub token: String,
    pub id: String,
}

/// A volume token as listed (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub subpath: String,
    /// The inode of the directory it is limited to (the root's when it is not).
    pub root_ino: u64,
    pub read_only: bool,
    pub root_squash: bool,
    pub comment: String,
}

/// A quota and what is used under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUsage {
    /// The directory ("" for the volume's own quota).
    pub path: String,
    pub ino: u64,
    pub quota: Quota,
    pub used_bytes: u64,
    pub used_inodes: u64,
}

/// A live session (a mount).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    /// What the mount said it is (host and mount point).
    pub client: String,
    pub token_id: String,
    pub open_files: u32,
    pub locks: u32,
}

/// A volume's usage, quotas and sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
    pub stored_blocks: u64,
    pub pending_gc_blocks: u64,
    pub quotas: Vec<QuotaUsage>,
    pub sessions: Vec<SessionInfo>,
}

/// What a garbage collection did (or would do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub deleted: u64,
    pub kept_retention: u64,
    pub kept_grace: u64,
}

/// A directory to make for a claim (dynamic provisioning): its quota and the token a mount of
/// it uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimSpec {
    /// The directory inside the volume, e.g. `/pvc-1234`; its parent must exist.
    pub path: String,
    pub quota: Quota,
    /// Mode, owner and group of the directory when it is made (an existing one keeps its own).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The claim's token is read-only.
    pub read_only: bool,
}

/// A claim as the server has it: its token (by id) and its quota with what is used under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimState {
    pub token_id: String,
    pub read_only: bool,
    /// The quota of its directory and what is used (`None`: made without a quota).
    pub quota: Option<QuotaUsage>,
}

/// A claim's directory and its token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub ino: u64,
    pub token: NewToken,
    /// The directory was made by this call (false: it existed, from an earlier call).
    pub created: bool,
}

pub(crate) type Rpc = pb::admin_client::AdminClient<InterceptedService<Channel, AccountToken>>;

/// A client of a metadata server's admin service.
#[derive(Clone)]
pub struct AdminClient {
    rpc: Rpc,
}

/// Puts the account token on every call.
#[derive(Clone)]
pub struct AccountToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AccountToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(ACCOUNT_TOKEN_KEY, self.0.clone());
        Ok(req)
    }
}

impl AdminClient {
    /// Connects to the server at `addr` (`HOST:PORT`), trusted as `trust` says.
    pub async fn connect(addr: &str, trust: &ClientTrust, account_token: &str) -> Result<AdminClient, ClientError> {
        AdminClient::new(connect(addr, trust, Duration::ZERO).await?, account_token)
    }

    /// A client on an open channel.
    pub fn new(channel: Channel, account_token: &str) -> Result<AdminClient, ClientError> {
        let v = account_token.trim().parse().map_err(|_| {
            MetaError::Unauthenticated("the account token contains characters not allowed in a header".into())
        })?;
        Ok(AdminClient { rpc: pb::admin_client::AdminClient::with_interceptor(channel, AccountToken(v)) })
    }

    /// The protocol client under this one (tests and tools that exercise the protocol itself).
    #[cfg(any(test, feature = "testkit"))]
    pub fn raw(&self) -> Rpc {
        self.rpc.clone()
    }

    // --- volumes ------------------------------------------------------------------------------

    /// Creates a volume. Fails with EEXIST (in [`ClientError::Meta`]) when the name is taken, and
    /// EINVAL naming what is wrong with the spec.
    pub async fn create_volume(&mut self, v: &VolumeSpec) -> Result<Volume, ClientError> {
        let encryption = match &v.encryption {
            Some(secret) => {
                let secret = secret.clone();
                let env = tokio::task::spawn_blocking(move || {
                    crate::crypto::create_envelope(secret.expose(), crate::crypto::KdfParams::default())
                })
                .await
                .map_err(|e| ClientError::BadInput(format!("making the volume's key: {e}")))?;
                Some(env.map_err(|e| ClientError::BadInput(format!("volume {:?}: {e}", v.name)))?)
            }
            None => None,
        };
        let req = pb::CreateVolumeRequest {
            name: v.name.clone(),
            block_size: v.block_size.unwrap_or(0),
            compression: Some(v.compression.to_pb()),
            retention_secs: v.retention_secs,
            quota: Some(v.quota.to_pb()),
            backend_json: serde_json::to_string(&v.block_store).expect("a spec serialises"),
            encryption,
        };
        Volume::of_pb(self.rpc.create_volume(req).await?.into_inner())
    }

    /// Changes an encrypted volume's secret from `old` to `new`: the same data key is wrapped
    /// anew (a new salt), so no block object is rewritten. Mounts that are up keep working; new
    /// mounts need `new`. A wrong `old` changes nothing.
    pub async fn rekey_volume(
        &mut self,
        name: &str,
        old: &crate::crypto::Secret,
        new: &crate::crypto::Secret,
    ) -> Result<Volume, ClientError> {
        let (_, env) = self.envelope(name, "there is no secret to change").await?;
        let (old, new) = (old.clone(), new.clone());
        let env = tokio::task::spawn_blocking(move || crate::crypto::rewrap(&env, old.expose(), new.expose(), None))
            .await
            .map_err(|e| ClientError::BadInput(format!("rewrapping the volume's key: {e}")))?
            .map_err(|e| ClientError::BadInput(format!("volume {name:?}: {e}")))?;
        let req = pb::UpdateVolumeRequest { volume: name.to_string(), encryption: Some(env), ..Default::default() };
        Volume::of_pb(self.rpc.update_volume(req).await?.into_inner())
    }

    /// Whether `secret` opens encrypted volume `name`'s key (an operator asks before rewrapping,
    /// so a rekey already done is not done again).
    pub async fn secret_opens(&mut self, name: &str, secret: &crate::crypto::Secret) -> Result<bool, ClientError> {
        let (uuid, env) = self.envelope(name, "no secret opens it").await?;
        let secret = secret.clone();
        tokio::task::spawn_blocking(move || crate::crypto::VolumeKeys::open(&env, secret.expose(), &uuid).is_ok())
            .await
            .map_err(|e| ClientError::BadInput(format!("opening the volume's key: {e}")))
    }

    /// Encrypted volume `name`'s uuid and key envelope; `open`: what an open volume's error says.
    async fn envelope(&mut self, name: &str, open: &str) -> Result<(String, pb::EncryptionEnvelope), ClientError> {
        let volumes = self.rpc.list_volumes(pb::Empty {}).await?.into_inner().volumes;
        let v = volumes
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| ClientError::Meta(MetaError::fs(libc::ENOENT, format!("no volume named {name:?}"))))?;
        match v.encryption {
            Some(env) => Ok((v.uuid, env)),
            None => Err(ClientError::BadInput(format!("volume {name:?} is not encrypted: {open}"))),
        }
    }

    pub async fn volumes(&mut self) -> Result<Vec<Volume>, ClientError> {
        self.rpc.list_volumes(pb::Empty {}).await?.into_inner().volumes.into_iter().map(Volume::of_pb).collect()
    }

    /// The volume named `name`, if the server has one.
    pub async fn volume(&mut self, name: &str) -> Result<Option<Volume>, ClientError> {
        Ok(self.volumes().await?.into_iter().find(|v| v.name == name))
    }

    pub async fn update_volume(&mut self, name: &str, u: &VolumeUpdate) -> Result<Volume, ClientError> {
        let req = pb::UpdateVolumeRequest {
            volume: name.to_string(),
            retention_secs: u.retention_secs,
            quota: u.quota.map(Quota::to_pb),
            backend_json: u
                .block_store
                .as_ref()
                .map(|s| serde_json::to_string(s).expect("a spec serialises"))
                .unwrap_or_default(),
            encryption: None,
        };
        Volume::of_pb(self.rpc.update_volume(req).await?.into_inner())
    }

    /// Deletes a volume's metadata; its block objects stay in the bucket.
    pub async fn delete_volume(&mut self, name: &str) -> Result<(), ClientError> {
        self.rpc.delete_volume(pb::VolumeRef { volume: name.to_string() }).await?;
        Ok(())
    }

    // --- tokens -------------------------------------------------------------------------------

    pub async fn create_token(&mut self, volume: &str, scope: &TokenScope) -> Result<NewToken, ClientError> {
        let req = pb::CreateTokenRequest {
            volume: volume.to_string(),
            subpath: scope.subpath.clone(),
            read_only: scope.read_only,
            root_squash: scope.root_squash,
            comment: scope.comment.clone(),
        };
        let r = self.rpc.create_token(req).await?.into_inner();
        Ok(NewToken { token: r.token, id: r.id })
    }

    pub async fn tokens(&mut self, volume: &str) -> Result<Vec<TokenInfo>, ClientError> {
        let r = self.rpc.list_tokens(pb::VolumeRef { volume: volume.to_string() }).await?.into_inner();
        Ok(r.tokens
            .into_iter()
            .map(|t| TokenInfo {
                id: t.id,
                subpath: if t.subpath.is_empty() { "/".into() } else { t.subpath },
                root_ino: t.root_ino,
                read_only: t.read_only,
                root_squash: t.root_squash,
                comment: t.comment,
            })
            .collect())
    }

    /// Revokes a volume token; its live sessions end.
    pub async fn revoke_token(&mut self, volume: &str, id: &str) -> Result<(), ClientError> {
        self.rpc.revoke_token(pb::RevokeTokenRequest { volume: volume.to_string(), id: id.to_string() }).await?;
        Ok(())
    }

    pub async fn create_account_token(&mut self, comment: &str) -> Result<NewToken, ClientError> {
        let r = self.rpc.create_account_token(pb::CreateAccountTokenRequest { comment: comment.to_string() }).await?;
        let r = r.into_inner();
        Ok(NewToken { token: r.token, id: r.id })
    }

    // --- quotas, usage, claims ----------------------------------------------------------------

    /// Sets the quota of directory `path` ("/" or "": the volume's).
    pub async fn set_quota(&mut self, volume: &str, path: &str, quota: Quota) -> Result<(), ClientError> {
        let req =
            pb::SetQuotaRequest { volume: volume.to_string(), path: path.to_string(), quota: Some(quota.to_pb()) };
        self.rpc.set_quota(req).await?;
        Ok(())
    }

    pub async fn usage(&mut self, volume: &str) -> Result<Usage, ClientError> {
        let u = self.rpc.usage(pb::VolumeRef { volume: volume.to_string() }).await?.into_inner();
        Ok(Usage {
            bytes: u.used_bytes,
            inodes: u.used_inodes,
            stored_blocks: u.stored_blocks,
            pending_gc_blocks: u.pending_gc_blocks,
            quotas: u
                .quotas
                .into_iter()
                .map(|q| QuotaUsage {
                    path: q.path,
                    ino: q.ino,
                    quota: Quota::of_pb(q.quota),
                    used_bytes: q.used_bytes,
                    used_inodes: q.used_inodes,
                })
                .collect(),
            sessions: u
                .sessions
                .into_iter()
                .map(|s| SessionInfo {
                    id: s.id,
                    client: s.client,
                    token_id: s.token_id,
                    open_files: s.open_files,
                    locks: s.locks,
                })
                .collect(),
        })
    }

    /// Makes (or finds) a claim's directory, sets its quota and issues a token limited to it, in
    /// one call. Tokens an earlier call issued for the same claim are revoked, so a retried call
    /// leaves one valid token.
    pub async fn create_claim(&mut self, volume: &str, c: &ClaimSpec) -> Result<Claim, ClientError> {
        let req = pb::CreateClaimRequest {
            volume: volume.to_string(),
            path: c.path.clone(),
            quota: Some(c.quota.to_pb()),
            mode: c.mode,
            uid: c.uid,
            gid: c.gid,
            read_only: c.read_only,
        };
        let r = self.rpc.create_claim(req).await?.into_inner();
        Ok(Claim { ino: r.ino, token: NewToken { token: r.token, id: r.token_id }, created: r.created })
    }

    /// The claim at `path` (`/pvc-1`), if it exists: one made by [`AdminClient::create_claim`]
    /// whose token is still valid.
    pub async fn claim(&mut self, volume: &str, path: &str) -> Result<Option<ClaimState>, ClientError> {
        let comment = crate::wire::claim_comment(path);
        let Some(token) = self.tokens(volume).await?.into_iter().find(|t| t.comment == comment) else {
            return Ok(None);
        };
        let quota = self.usage(volume).await?.quotas.into_iter().find(|q| q.ino == token.root_ino);
        Ok(Some(ClaimState { token_id: token.id, read_only: token.read_only, quota }))
    }

    /// Deletes a claim: revokes its tokens and moves its directory into the volume's trash, which
    /// the server empties in the background. A claim already gone is not an error.
    pub async fn delete_claim(&mut self, volume: &str, path: &str) -> Result<(), ClientError> {
        let req = pb::DeleteClaimRequest { volume: volume.to_string(), path: path.to_string() };
        self.rpc.delete_claim(req).await?;
        Ok(())
    }

    /// Deletes the block objects of `volume` nothing may need any more (or counts them).
    pub async fn gc(&mut self, volume: &str, dry_run: bool) -> Result<GcReport, ClientError> {
        let r = self.rpc.gc(pb::GcRequest { volume: volume.to_string(), dry_run }).await?.into_inner();
        Ok(GcReport { deleted: r.deleted, kept_retention: r.kept_retention, kept_grace: r.kept_grace })
    }
}
