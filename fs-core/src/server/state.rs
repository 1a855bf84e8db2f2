//! The metadata server's state: volumes, sessions, tokens, and the background work (lease
//! expiry, certificate reload, scheduled GC). [`crate::server::grpc`] puts gRPC on top of it and
//! [`run`] serves both gRPC (TLS) and the plain-HTTP metrics and health endpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use rand::RngCore;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use sha2::{Digest, Sha256};

use super::config::ServerConfig;
use crate::blockstore::{BackendSpec, check_backend, layout, open_backend};
use crate::server::access::{Caller, SessionId};
use crate::server::data;
use crate::server::metrics::Metrics;
use crate::server::store::schema::{self, *};
use crate::server::store::tx::{ROOT_INO, now, ts_nanos};
use crate::server::store::volume::{VolumeDb, check_block_size};
use crate::server::store::writer::Writer;
use crate::wire::error::{MetaError, MetaResult};
use crate::wire::{DEFAULT_BLOCK_SIZE, DEFAULT_RETENTION_SECS};
use crate::wire::{PROTOCOL_VERSION, pb, rec};

/// A live session.
pub struct SessionState {
    pub id: SessionId,
    pub volume: Arc<VolumeDb>,
    pub rec: rec::Session,
    deadline: Mutex<Instant>,
    /// The session's Watch stream, while it has one open.
    pub events: Mutex<Option<crate::server::deleg::Events>>,
}

impl SessionState {
    /// The caller of a request of this session, with the process credentials it states.
    pub fn caller(&self, ctx: &pb::Context) -> Caller {
        Caller {
            session: self.id,
            root: self.rec.root_ino,
            read_only: self.rec.read_only,
            root_squash: self.rec.root_squash,
            opaque_names: self.volume.encrypted(),
            uid: ctx.uid,
            gid: ctx.gid,
            groups: ctx.groups.clone(),
            pid: ctx.pid,
            request: ctx.request,
        }
    }
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.trim().as_bytes()).to_vec()
}

fn unauthenticated(msg: impl Into<String>) -> MetaError {
    MetaError::Unauthenticated(msg.into())
}

pub struct MetaServer {
    pub cfg: ServerConfig,
    server_db: Arc<Database>,
    server_writer: Writer,
    pub(super) volumes: RwLock<HashMap<String, Arc<VolumeDb>>>,
    names: RwLock<HashMap<String, String>>,
    pub(super) sessions: RwLock<HashMap<SessionId, Arc<SessionState>>>,
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
    /// A deleted claim waits in a volume's trash (`claims.rs`): the background task empties it.
    pub trash_pending: AtomicBool,
}

impl MetaServer {
    /// Opens (or creates) the server's data directory and every volume in it.
    pub fn open(cfg: ServerConfig) -> MetaResult<Arc<MetaServer>> {
        let dir = &cfg.data_dir;
        std::fs::create_dir_all(dir.join("volumes"))
            .map_err(|e| MetaError::Internal(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("server.redb");
        let fresh = !path.exists();
        let db = schema::open_database(&path)?;
        if fresh {
            let txn = db.begin_write()?;
            schema::init_version(&txn, "server")?;
            txn.open_table(ACCOUNT_TOKENS)?;
            txn.open_table(VOLUME_NAMES)?;
            txn.commit()?;
        }
        schema::check_version(&db, &path, "server")?;
        let db = Arc::new(db);
        let server_writer = Writer::start(db.clone(), "server", true);
        let names: HashMap<String, String> = {
            let r = db.begin_read()?;
            let t = r.open_table(VOLUME_NAMES)?;
            let mut m = HashMap::new();
            for item in t.iter()? {
                let (k, v) = item?;
                m.insert(k.value().to_string(), v.value().to_string());
            }
            m
        };
        let mut volumes = HashMap::new();
        for uuid in names.values() {
            let v = VolumeDb::open_db(&dir.join(format!("volumes/{uuid}.redb")), cfg.sync)?;
            v.delegations.set_recall_timeout(cfg.lease);
            volumes.insert(uuid.clone(), v);
        }
        let server = Arc::new(MetaServer {
            server_db: db,
            server_writer,
            volumes: RwLock::new(volumes),
            names: RwLock::new(names),
            sessions: RwLock::new(HashMap::new()),
            metrics: Arc::new(Metrics::new()),
            ready: AtomicBool::new(false),
            // A trash left by an earlier run is emptied after a start.
            trash_pending: AtomicBool::new(true),
            cfg,
        });
        server.restore_sessions()?;
        Ok(server)
    }

    /// Loads persisted sessions; each gets a full lease from now.
    fn restore_sessions(&self) -> MetaResult<()> {
        let deadline = Instant::now() + self.cfg.lease;
        let mut map = self.sessions.write();
        for v in self.volumes.read().values() {
            let r = v.read()?;
            let t = r.open_table(SESSIONS)?;
            for item in t.iter()? {
                let (k, val) = item?;
                let Ok(id) = <SessionId>::try_from(k.value()) else {
                    continue;
                };
                let rec: rec::Session = schema::dec(val.value())?;
                map.insert(
                    id,
                    Arc::new(SessionState {
                        id,
                        volume: v.clone(),
                        rec,
                        deadline: Mutex::new(deadline),
                        events: Mutex::new(None),
                    }),
                );
            }
        }
        self.metrics.sessions.set(map.len() as i64);
        Ok(())
    }

    /// Accepts the account token in `cfg.admin_token_file` (added once, by hash).
    pub async fn bootstrap_admin_token(&self) -> MetaResult<()> {
        let Some(path) = &self.cfg.admin_token_file else {
            return Ok(());
        };
        let token = std::fs::read_to_string(path)
            .map_err(|e| MetaError::Internal(format!("reading the admin token file {}: {e}", path.display())))?;
        if token.trim().is_empty() {
            return Err(MetaError::Internal(format!("the admin token file {} is empty", path.display())));
        }
        let hash = hash_token(&token);
        let rec = rec::AccountToken {
            id: "bootstrap".into(),
            comment: format!("from {}", path.display()),
            created: Some(now()),
        };
        self.server_writer
            .write(true, move |txn| {
                let mut t = txn.open_table(ACCOUNT_TOKENS)?;
                if t.get(hash.as_slice())?.is_none() {
                    t.insert(hash.as_slice(), rec.encode_to_vec().as_slice())?;
                }
                Ok(())
            })
            .await
    }

    // --- volumes ----------------------------------------------------------------------------------

    /// A volume by name or UUID.
    pub fn volume(&self, name_or_uuid: &str) -> MetaResult<Arc<VolumeDb>> {
        let uuid = self.names.read().get(name_or_uuid).cloned().unwrap_or_else(|| name_or_uuid.to_string());
        self.volumes
            .read()
            .get(&uuid)
            .cloned()
            .ok_or_else(|| MetaError::fs(libc::ENOENT, format!("no volume named {name_or_uuid:?} on this server")))
    }

    pub fn volumes(&self) -> Vec<Arc<VolumeDb>> {
        self.volumes.read().values().cloned().collect()
    }

    pub async fn create_volume(&self, req: pb::CreateVolumeRequest) -> MetaResult<pb::VolumeInfo> {
        let name = req.name.trim().to_string();
        if name.is_empty()
            || name.len() > 63
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(MetaError::fs(
                libc::EINVAL,
                format!("volume name {name:?}: use 1..=63 letters, digits, '-', '_' or '.'"),
            ));
        }
        let block_size = if req.block_size == 0 { DEFAULT_BLOCK_SIZE } else { req.block_size };
        check_block_size(block_size)?;
        let retention = req.retention_secs.unwrap_or(DEFAULT_RETENTION_SECS);
        if retention < -1 {
            return Err(MetaError::fs(
                libc::EINVAL,
                format!("retention {retention}: give seconds, 0 (no history) or -1 (forever)"),
            ));
        }
        if req.backend_json.is_empty() {
            return Err(MetaError::fs(libc::EINVAL, "a volume needs a block store (backend_json)"));
        }
        let spec: BackendSpec = serde_json::from_str(&req.backend_json)
            .map_err(|e| MetaError::fs(libc::EINVAL, format!("block-store spec does not parse: {e}")))?;
        let mut compression = req.compression.unwrap_or_default();
        if compression.kind() == pb::compression::Kind::Unspecified {
            compression.set_kind(pb::compression::Kind::Lz4);
        }
        if self.names.read().contains_key(&name) {
            return Err(MetaError::fs(libc::EEXIST, format!("a volume named {name:?} exists")));
        }
        // Nothing is made on a store this server cannot use: a missing bucket, wrong keys or an
        // endpoint nobody answers on fail here, named.
        check_backend(&spec).await.map_err(|e| MetaError::fs(libc::EINVAL, e.to_string()))?;
        let info = pb::VolumeInfo {
            uuid: uuid::Uuid::new_v4().to_string(),
            name: name.clone(),
            block_size,
            compression: Some(compression),
            retention_secs: retention,
            quota: req.quota,
            backend_json: serde_json::to_string(&spec).expect("a spec serializes"),
            encryption: req.encryption,
            created: Some(now()),
        };
        let path = self.cfg.data_dir.join(format!("volumes/{}.redb", info.uuid));
        let v = VolumeDb::create_db(&path, info.clone(), self.cfg.sync)?;
        v.delegations.set_recall_timeout(self.cfg.lease);
        v.writer.sync().await?;
        let (n, u) = (name.clone(), info.uuid.clone());
        self.server_writer
            .write(true, move |txn| {
                txn.open_table(VOLUME_NAMES)?.insert(n.as_str(), u.as_str())?;
                Ok(())
            })
            .await?;
        self.volumes.write().insert(info.uuid.clone(), v);
        self.names.write().insert(name, info.uuid.clone());
        tracing::info!(volume = %info.name, uuid = %info.uuid, "created volume");
        Ok(info)
    }

    /// Deletes a volume's metadata (its block objects are left in the bucket; the docs say so).
    pub async fn delete_volume(&self, name: &str) -> MetaResult<()> {
        let v = self.volume(name)?;
        let ids: Vec<SessionId> =
            self.sessions.read().values().filter(|s| Arc::ptr_eq(&s.volume, &v)).map(|s| s.id).collect();
        for id in ids {
            self.end_session(&id, "volume deleted").await;
        }
        let vname = v.info().name;
        self.server_writer
            .write(true, move |txn| {
                txn.open_table(VOLUME_NAMES)?.remove(vname.as_str())?;
                Ok(())
            })
            .await?;
        self.names.write().remove(&v.info().name);
        self.volumes.write().remove(&v.uuid);
        let path = v.path.clone();
        drop(v);
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    pub async fn update_volume(&self, req: pb::UpdateVolumeRequest) -> MetaResult<pb::VolumeInfo> {
        let v = self.volume(&req.volume)?;
        let mut info = v.info();
        if let Some(r) = req.retention_secs {
            if r < -1 {
                return Err(MetaError::fs(libc::EINVAL, format!("retention {r}: give seconds, 0 or -1")));
            }
            info.retention_secs = r;
        }
        if req.quota.is_some() {
            // Delegations are not granted under a quota: holders apply their creates first.
            v.delegations.recall_all().await;
            info.quota = req.quota;
        }
        if !req.backend_json.is_empty() {
            let spec: BackendSpec = serde_json::from_str(&req.backend_json)
                .map_err(|e| MetaError::fs(libc::EINVAL, format!("block-store spec does not parse: {e}")))?;
            info.backend_json = serde_json::to_string(&spec).expect("a spec serializes");
        }
        if req.encryption.is_some() {
            // A new envelope of the same data key (rekey); encryption is never added afterwards:
            // the volume's blocks and names are open.
            if info.encryption.is_none() {
                return Err(MetaError::fs(
                    libc::EINVAL,
                    format!("volume {:?} is not encrypted: encryption is chosen when a volume is created", info.name),
                ));
            }
            info.encryption = req.encryption;
        }
        v.update_info(info.clone()).await?;
        Ok(info)
    }

    // --- tokens -----------------------------------------------------------------------------------

    pub fn check_account_token(&self, token: &str) -> MetaResult<()> {
        let r = self.server_db.begin_read()?;
        let t = r.open_table(ACCOUNT_TOKENS)?;
        if t.get(hash_token(token).as_slice())?.is_some() {
            Ok(())
        } else {
            tracing::warn!("an admin request with an unknown account token was refused");
            Err(unauthenticated(
                "unknown account token: give a token created by `stratusfs admin` or the --admin-token-file",
            ))
        }
    }

    pub async fn create_account_token(&self, comment: String) -> MetaResult<pb::CreateTokenReply> {
        let token = uuid::Uuid::new_v4().to_string();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let rec = rec::AccountToken { id: id.clone(), comment, created: Some(now()) };
        let hash = hash_token(&token);
        self.server_writer
            .write(true, move |txn| {
                txn.open_table(ACCOUNT_TOKENS)?.insert(hash.as_slice(), rec.encode_to_vec().as_slice())?;
                Ok(())
            })
            .await?;
        Ok(pb::CreateTokenReply { token, id })
    }

    /// Resolves a path inside a volume (as the admin) to its inode.
    pub fn resolve_path(&self, v: &VolumeDb, path: &str) -> MetaResult<u64> {
        let admin = Caller::admin();
        let mut ino = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                return Err(MetaError::fs(libc::EINVAL, format!("path {path:?} may not contain '..'")));
            }
            ino = v.lookup(&admin, ino, part.as_bytes())?.0;
        }
        Ok(ino)
    }

    pub async fn create_token(&self, req: pb::CreateTokenRequest) -> MetaResult<pb::CreateTokenReply> {
        let v = self.volume(&req.volume)?;
        let root = self.resolve_path(&v, &req.subpath)?;
        let inode = v.getattr(&Caller::admin(), root)?;
        if crate::server::store::tx::kind_of(&inode) != pb::FileKind::Directory {
            return Err(MetaError::fs(libc::ENOTDIR, format!("token subpath {:?} is not a directory", req.subpath)));
        }
        let token = uuid::Uuid::new_v4().to_string();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let rec = rec::Token {
            id: id.clone(),
            root_ino: root,
            subpath: req.subpath.clone(),
            read_only: req.read_only,
            root_squash: req.root_squash,
            comment: req.comment,
            created: Some(now()),
        };
        let hash = hash_token(&token);
        v.change(true, move |w| {
            w.tokens.insert(hash.as_slice(), rec.encode_to_vec().as_slice())?;
            Ok(())
        })
        .await?;
        Ok(pb::CreateTokenReply { token, id })
    }

    pub fn list_tokens(&self, volume: &str) -> MetaResult<Vec<pb::TokenInfo>> {
        let v = self.volume(volume)?;
        let r = v.read()?;
        let t = r.open_table(TOKENS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, val) = item?;
            let tk: rec::Token = schema::dec(val.value())?;
            out.push(pb::TokenInfo {
                id: tk.id,
                volume: v.info().name,
                subpath: tk.subpath,
                root_ino: tk.root_ino,
                read_only: tk.read_only,
                root_squash: tk.root_squash,
                comment: tk.comment,
                created: tk.created,
            });
        }
        Ok(out)
    }

    /// Revokes a volume token and ends its live sessions.
    pub async fn revoke_token(&self, volume: &str, id: &str) -> MetaResult<()> {
        let v = self.volume(volume)?;
        let id_owned = id.to_string();
        let found = v
            .change(true, move |w| {
                let mut hit = None;
                for item in w.tokens.iter()? {
                    let (k, val) = item?;
                    let tk: rec::Token = schema::dec(val.value())?;
                    if tk.id == id_owned {
                        hit = Some(k.value().to_vec());
                        break;
                    }
                }
                if let Some(k) = &hit {
                    w.tokens.remove(k.as_slice())?;
                }
                Ok(hit.is_some())
            })
            .await?;
        if !found {
            return Err(MetaError::fs(libc::ENOENT, format!("no token {id:?} on volume {volume:?}")));
        }
        let ids: Vec<SessionId> = self
            .sessions
            .read()
            .values()
            .filter(|s| Arc::ptr_eq(&s.volume, &v) && s.rec.token_id == id)
            .map(|s| s.id)
            .collect();
        for sid in ids {
            self.end_session(&sid, "its token was revoked").await;
        }
        tracing::info!(volume, token = id, "revoked token");
        Ok(())
    }

    // --- sessions ---------------------------------------------------------------------------------

    pub async fn open_session(&self, req: pb::OpenSessionRequest) -> MetaResult<pb::OpenSessionReply> {
        if req.protocol_version != PROTOCOL_VERSION as i32 {
            return Err(MetaError::Protocol(format!(
                "client speaks protocol version {}, this server speaks {}; upgrade the {}",
                req.protocol_version,
                PROTOCOL_VERSION as i32,
                if req.protocol_version > PROTOCOL_VERSION as i32 { "server" } else { "client" }
            )));
        }
        let v = self.volume(&req.volume)?;
        let token = {
            let r = v.read()?;
            let t = r.open_table(TOKENS)?;
            match t.get(hash_token(&req.token).as_slice())? {
                Some(val) => schema::dec::<rec::Token>(val.value())?,
                None => {
                    tracing::warn!(volume = %req.volume, client = %req.client, "session refused: unknown or revoked volume token");
                    return Err(unauthenticated(format!("unknown or revoked token for volume {:?}", req.volume)));
                }
            }
        };
        let deadline = Instant::now() + self.cfg.lease;
        if let Ok(id) = SessionId::try_from(req.resume.as_slice()) {
            let existing = self.sessions.read().get(&id).cloned();
            if let Some(s) = existing
                && Arc::ptr_eq(&s.volume, &v)
                && s.rec.token_id == token.id
            {
                *s.deadline.lock() = deadline;
                tracing::info!(session = %hex::encode(id), client = %req.client, "session resumed");
                return Ok(self.session_reply(&s, true, &token.subpath));
            }
        }
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let rec = rec::Session {
            token_id: token.id.clone(),
            client: req.client.clone(),
            root_ino: token.root_ino,
            read_only: token.read_only,
            root_squash: token.root_squash,
            opened: Some(now()),
        };
        let bytes = rec.encode_to_vec();
        // Durable before the reply: a session the server acknowledged survives its crash, so a
        // mount never finds its session gone after a restart (requests would get EACCES).
        v.change(true, move |w| {
            w.sessions.insert(id.as_slice(), bytes.as_slice())?;
            Ok(())
        })
        .await?;
        let s = Arc::new(SessionState { id, volume: v, rec, deadline: Mutex::new(deadline), events: Mutex::new(None) });
        let n = {
            let mut m = self.sessions.write();
            m.insert(id, s.clone());
            m.len()
        };
        self.metrics.sessions.set(n as i64);
        tracing::info!(session = %hex::encode(id), client = %req.client, token = %token.id, "session opened");
        Ok(self.session_reply(&s, false, &token.subpath))
    }

    fn session_reply(&self, s: &SessionState, resumed: bool, subpath: &str) -> pb::OpenSessionReply {
        // Token limits bind the namespace, not the bucket: every session, read-only ones too, receives
        // the block store's spec with its credentials (docs/metadata-server.md says so).
        let volume = s.volume.info();
        pb::OpenSessionReply {
            session: s.id.to_vec(),
            root_ino: s.rec.root_ino,
            volume: Some(volume),
            read_only: s.rec.read_only,
            root_squash: s.rec.root_squash,
            lease_ms: self.cfg.lease.as_millis() as u32,
            resumed,
            subpath: subpath.to_string(),
        }
    }

    /// The session a request names, renewing its lease.
    pub fn session(&self, ctx: Option<&pb::Context>) -> MetaResult<(Arc<SessionState>, Caller)> {
        let ctx = ctx.ok_or_else(|| MetaError::Protocol("request without a context".into()))?;
        let id = SessionId::try_from(ctx.session.as_slice())
            .map_err(|_| unauthenticated("the request names no session; open one first"))?;
        let s = self.sessions.read().get(&id).cloned().ok_or_else(|| {
            unauthenticated("unknown or expired session (its token may have been revoked); open a new one")
        })?;
        *s.deadline.lock() = Instant::now() + self.cfg.lease;
        let c = s.caller(ctx);
        Ok((s, c))
    }

    /// Ends a session: its locks and open files are released, its record removed.
    pub async fn end_session(&self, id: &SessionId, reason: &str) {
        let Some(s) = self.sessions.write().remove(id) else {
            return;
        };
        self.metrics.sessions.set(self.sessions.read().len() as i64);
        let v = s.volume.clone();
        v.reservations.drop_session(id);
        v.delegations.drop_session(id);
        for ino in v.locks.inodes_of(id) {
            v.drop_locks(ino, |l| &l.session == id);
        }
        let sid = *id;
        let r = v
            .change(false, move |w| {
                let mut mine = Vec::new();
                for item in w.open_files.iter()? {
                    let (k, val) = item?;
                    let of: rec::OpenFile = schema::dec(val.value())?;
                    if of.session == sid {
                        mine.push(k.value());
                    }
                }
                for open_id in mine {
                    data::release(w, open_id)?;
                }
                w.sessions.remove(sid.as_slice())?;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::error!(session = %hex::encode(id), error = %e, "releasing the session's open files failed");
        }
        tracing::info!(session = %hex::encode(id), client = %s.rec.client, reason, "session ended");
    }

    /// Ends sessions whose lease ran out.
    pub async fn expire_sessions(&self) {
        let now = Instant::now();
        let expired: Vec<SessionId> =
            self.sessions.read().values().filter(|s| *s.deadline.lock() < now).map(|s| s.id).collect();
        for id in expired {
            self.end_session(&id, "its lease expired").await;
        }
    }

    pub fn session_infos(&self, v: &Arc<VolumeDb>) -> Vec<pb::SessionInfo> {
        let open_counts: HashMap<Vec<u8>, u32> = (|| -> MetaResult<HashMap<Vec<u8>, u32>> {
            let r = v.read()?;
            let t = r.open_table(OPEN_FILES)?;
            let mut m = HashMap::new();
            for item in t.iter()? {
                let (_, val) = item?;
                let of: rec::OpenFile = schema::dec(val.value())?;
                *m.entry(of.session).or_insert(0) += 1;
            }
            Ok(m)
        })()
        .unwrap_or_default();
        self.sessions
            .read()
            .values()
            .filter(|s| Arc::ptr_eq(&s.volume, v))
            .map(|s| pb::SessionInfo {
                id: hex::encode(s.id),
                client: s.rec.client.clone(),
                token_id: s.rec.token_id.clone(),
                opened: s.rec.opened,
                open_files: open_counts.get(s.id.as_slice()).copied().unwrap_or(0),
                locks: v.locks.count_of(&s.id) as u32,
            })
            .collect()
    }

    // --- quotas and usage -------------------------------------------------------------------------

    /// Sets a quota on a directory (or, for "/" or "", the volume).
    pub async fn set_quota(&self, req: pb::SetQuotaRequest) -> MetaResult<()> {
        let v = self.volume(&req.volume)?;
        // Delegations are not granted under a quota: holders apply their creates first.
        v.delegations.recall_all().await;
        let r = self.set_quota_in(&v, req).await;
        v.delegations.recall_all().await;
        r
    }

    async fn set_quota_in(&self, v: &Arc<VolumeDb>, req: pb::SetQuotaRequest) -> MetaResult<()> {
        let v = v.clone();
        let quota = req.quota.unwrap_or_default();
        let path = req.path.trim_end_matches('/').to_string();
        if path.is_empty() {
            let mut info = v.info();
            info.quota = Some(quota);
            return v.update_info(info).await;
        }
        let dir = self.resolve_path(&v, &path)?;
        v.change(true, move |w| crate::server::quota::set_dir_quota(w, dir, quota, &path)).await
    }

    pub fn usage(&self, volume: &str) -> MetaResult<pb::UsageReply> {
        let v = self.volume(volume)?;
        let r = v.read()?;
        let counters: rec::Counters = match r.open_table(META)?.get("counters")? {
            Some(val) => schema::dec(val.value())?,
            None => Default::default(),
        };
        let pending = r.open_table(GC_PENDING)?.len()?;
        let mut quotas = Vec::new();
        for item in r.open_table(QUOTAS)?.iter()? {
            let (k, val) = item?;
            let q: rec::QuotaDir = schema::dec(val.value())?;
            quotas.push(pb::QuotaUsage {
                path: q.path,
                ino: k.value(),
                quota: q.quota,
                used_bytes: q.used_bytes,
                used_inodes: q.used_inodes,
            });
        }
        Ok(pb::UsageReply {
            used_bytes: counters.used_bytes,
            used_inodes: counters.used_inodes,
            stored_blocks: counters.stored_blocks,
            pending_gc_blocks: pending,
            sessions: self.session_infos(&v),
            quotas,
        })
    }

    // --- garbage collection -----------------------------------------------------------------------

    /// Deletes the block objects of `volume` that may go now (see [`data::collectable`]).
    pub async fn gc(&self, volume: &str, dry_run: bool) -> MetaResult<pb::GcReply> {
        let v = self.volume(volume)?;
        let info = v.info();
        let now_ns = ts_nanos(&now());
        let (dereferenced, abandoned) = data::collectable(&v.read()?, now_ns, info.retention_secs, self.cfg.gc_grace)?;
        let (kept_retention, kept_grace) = {
            let r = v.read()?;
            (
                r.open_table(GC_PENDING)?.len()? - dereferenced.len() as u64,
                r.open_table(UPLOADS)?.len()? - abandoned.len() as u64,
            )
        };
        if dry_run {
            return Ok(pb::GcReply {
                deleted: (dereferenced.len() + abandoned.len()) as u64,
                kept_retention,
                kept_grace,
            });
        }
        let spec: BackendSpec = serde_json::from_str(&info.backend_json)
            .map_err(|e| MetaError::Internal(format!("volume {} has a bad block-store spec: {e}", info.name)))?;
        let store = open_backend(&spec).map_err(|e| MetaError::Internal(e.to_string()))?;
        let ids: Vec<u64> = dereferenced.iter().map(|k| k.1).chain(abandoned.iter().copied()).collect();
        let uuid = info.uuid.clone();
        let keys = futures::stream::iter(ids.into_iter().map(move |id| Ok(layout::block_key(&uuid, id))));
        let mut results = store.delete_stream(keys.boxed());
        let mut failed = 0u64;
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    failed += 1;
                    tracing::warn!(volume = %info.name, error = %e, "deleting a block object failed; it stays listed for the next run");
                }
            }
        }
        if failed > 0 {
            return Err(MetaError::Internal(format!(
                "{failed} block objects of volume {} could not be deleted; the next run retries",
                info.name
            )));
        }
        let n = (dereferenced.len() + abandoned.len()) as u64;
        v.change(false, move |w| {
            for k in dereferenced {
                w.gc.remove(k)?;
            }
            for id in abandoned {
                w.uploads.remove(id)?;
            }
            Ok(())
        })
        .await?;
        self.metrics.gc_deleted.inc_by(n);
        tracing::info!(volume = %info.name, deleted = n, kept_retention, kept_grace, "garbage collection");
        Ok(pb::GcReply { deleted: n, kept_retention, kept_grace })
    }
}

impl Drop for MetaServer {
    fn drop(&mut self) {
        self.server_writer.stop();
    }
}
