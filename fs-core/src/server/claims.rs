//! Claims (dynamic provisioning, the CSI controller's calls): a directory with its quota and a
//! token limited to it, made in one call; deleting one revokes its tokens, moves its directory
//! into the volume's trash (`/.stratusfs-trash`) at once and empties the trash in the background,
//! also after a restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::server::access::Caller;
use crate::server::state::MetaServer;
use crate::server::store::tx::ROOT_INO;
use crate::server::store::volume::VolumeDb;
use crate::wire::error::{MetaError, MetaResult};
use crate::wire::{claim_comment, pb, rec};

/// The directory in a volume's root that holds deleted claims until they are emptied.
pub const TRASH: &str = ".stratusfs-trash";

/// How many entries one background step removes per volume before it lets other work run.
const TRASH_STEP: usize = 2000;

fn claim_path(path: &str) -> MetaResult<String> {
    let path = path.trim_matches('/').to_string();
    if path.is_empty() {
        return Err(MetaError::fs(libc::EINVAL, "a claim needs a directory of its own, not the volume's root"));
    }
    if path.split('/').any(|p| p.is_empty() || p == "." || p == "..")
        || path == TRASH
        || path.starts_with(&format!("{TRASH}/"))
    {
        return Err(MetaError::fs(libc::EINVAL, format!("claim path {path:?}: give a plain path such as /pvc-1234")));
    }
    Ok(path)
}

impl MetaServer {
    /// A claim's directory, its quota and a token limited to it (see the `CreateClaim` RPC).
    pub async fn create_claim(&self, req: pb::CreateClaimRequest) -> MetaResult<pb::CreateClaimReply> {
        let v = self.volume(&req.volume)?;
        let path = claim_path(&req.path)?;
        let (parent_path, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        let parent = self.resolve_path(&v, parent_path)?;
        let admin = Caller::admin();
        let found = |r: MetaResult<(u64, rec::Inode)>| -> MetaResult<Option<u64>> {
            match r {
                Ok((ino, inode)) if crate::server::store::tx::kind_of(&inode) == pb::FileKind::Directory => {
                    Ok(Some(ino))
                }
                Ok(_) => Err(MetaError::fs(libc::ENOTDIR, format!("claim path /{path} exists and is not a directory"))),
                Err(e) if e.errno() == libc::ENOENT => Ok(None),
                Err(e) => Err(e),
            }
        };
        let (ino, created) = match found(v.lookup(&admin, parent, name.as_bytes()))? {
            Some(ino) => (ino, false),
            None => {
                let maker = Caller { uid: req.uid, gid: req.gid, ..Caller::admin() };
                let mk = pb::MkNodRequest {
                    parent,
                    name: name.as_bytes().to_vec(),
                    kind: pb::FileKind::Directory as i32,
                    perm: if req.mode == 0 { 0o755 } else { req.mode & 0o7777 },
                    ..Default::default()
                };
                match v.mknod(&maker, mk).await {
                    Ok((ino, _)) => (ino, true),
                    // Made meanwhile by a call racing this one.
                    Err(e) if e.errno() == libc::EEXIST => {
                        let ino = found(v.lookup(&admin, parent, name.as_bytes()))?.ok_or(e)?;
                        (ino, false)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let subpath = format!("/{path}");
        if let Some(q) = req.quota.filter(|q| q.max_bytes > 0 || q.max_inodes > 0) {
            let sq = pb::SetQuotaRequest { volume: req.volume.clone(), path: subpath.clone(), quota: Some(q) };
            self.set_quota(sq).await?;
        }
        let comment = claim_comment(&subpath);
        for t in self.list_tokens(&req.volume)? {
            if t.comment == comment {
                self.revoke_token(&req.volume, &t.id).await?;
            }
        }
        let t = self
            .create_token(pb::CreateTokenRequest {
                volume: req.volume.clone(),
                subpath: subpath.clone(),
                read_only: req.read_only,
                root_squash: false,
                comment,
            })
            .await?;
        tracing::info!(volume = %req.volume, path = %subpath, ino, created, token = %t.id, "claim ready");
        Ok(pb::CreateClaimReply { ino, token: t.token, token_id: t.id, created })
    }

    /// Deletes a claim: its tokens are revoked (ending their sessions), its directory is moved
    /// into the trash in the same call, and emptied in the background. A claim already gone is
    /// not an error (a retried delete).
    pub async fn delete_claim(&self, volume: &str, path: &str) -> MetaResult<()> {
        let v = self.volume(volume)?;
        let path = claim_path(path)?;
        let subpath = format!("/{path}");
        let comment = claim_comment(&subpath);
        for t in self.list_tokens(volume)? {
            if t.comment == comment {
                self.revoke_token(volume, &t.id).await?;
            }
        }
        let admin = Caller::admin();
        let (parent_path, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        let parent = match self.resolve_path(&v, parent_path) {
            Ok(p) => p,
            Err(e) if e.errno() == libc::ENOENT => return Ok(()),
            Err(e) => return Err(e),
        };
        match v.lookup(&admin, parent, name.as_bytes()) {
            Ok(_) => {}
            Err(e) if e.errno() == libc::ENOENT => {
                tracing::info!(volume, path = %subpath, "claim deleted already");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let trash = self.trash_dir(&v, true).await?.expect("made when missing");
        let new_name = format!("{name}.{}", uuid::Uuid::new_v4().simple());
        let req = pb::RenameRequest {
            parent,
            name: name.as_bytes().to_vec(),
            new_parent: trash,
            new_name: new_name.into_bytes(),
            ..Default::default()
        };
        v.rename(&admin, req).await?;
        self.trash_pending.store(true, Ordering::SeqCst);
        tracing::info!(volume, path = %subpath, "claim deleted: its directory is in the trash, emptied in the background");
        Ok(())
    }

    /// The trash directory of a volume (made when `make` and missing).
    async fn trash_dir(&self, v: &VolumeDb, make: bool) -> MetaResult<Option<u64>> {
        let admin = Caller::admin();
        match v.lookup(&admin, ROOT_INO, TRASH.as_bytes()) {
            Ok((ino, _)) => return Ok(Some(ino)),
            Err(e) if e.errno() == libc::ENOENT && make => {}
            Err(e) if e.errno() == libc::ENOENT => return Ok(None),
            Err(e) => return Err(e),
        }
        let mk = pb::MkNodRequest {
            parent: ROOT_INO,
            name: TRASH.as_bytes().to_vec(),
            kind: pb::FileKind::Directory as i32,
            perm: 0o700,
            ..Default::default()
        };
        match v.mknod(&admin, mk).await {
            Ok((ino, _)) => Ok(Some(ino)),
            Err(e) if e.errno() == libc::EEXIST => Ok(Some(v.lookup(&admin, ROOT_INO, TRASH.as_bytes())?.0)),
            Err(e) => Err(e),
        }
    }

    /// One step of emptying every volume's trash (the background task calls it while
    /// `trash_pending` is set, and once after a start). Returns whether anything remains.
    pub async fn empty_trash(self: &Arc<Self>) -> bool {
        let mut more = false;
        for v in self.volumes() {
            let name = v.info().name;
            let r = async {
                let Some(trash) = self.trash_dir(&v, false).await? else {
                    return Ok(false);
                };
                let mut budget = TRASH_STEP;
                let emptied = remove_children(&v, trash, &mut budget).await?;
                let removed = TRASH_STEP - budget;
                if removed > 0 {
                    tracing::info!(volume = %name, removed, emptied, "emptying the trash of deleted claims");
                }
                Ok::<bool, MetaError>(!emptied)
            }
            .await;
            match r {
                Ok(m) => more |= m,
                Err(e) => {
                    tracing::warn!(volume = %name, error = %e, "emptying the trash of deleted claims failed; trying again");
                    more = true;
                }
            }
        }
        more
    }
}

/// Removes what is inside `dir`, depth first, up to `budget` entries. Returns whether `dir` is
/// empty now.
async fn remove_children(v: &VolumeDb, dir: u64, budget: &mut usize) -> MetaResult<bool> {
    let admin = Caller::admin();
    loop {
        // Cookie 2: after `.` and `..`.
        let (entries, _) = v.readdir(&admin, dir, 2, 512, false)?;
        if entries.is_empty() {
            return Ok(true);
        }
        for e in entries {
            if *budget == 0 {
                return Ok(false);
            }
            if e.kind == pb::FileKind::Directory as i32 {
                if !Box::pin(remove_children(v, e.ino, budget)).await? {
                    return Ok(false);
                }
                v.rmdir(&admin, dir, e.name).await?;
            } else {
                v.unlink(&admin, dir, e.name).await?;
            }
            *budget -= 1;
        }
    }
}
