//! The metadata database: one redb file per volume (`volumes/UUID.redb`) and one per server
//! (`server.redb`: account tokens and the volume names).
//!
//! Values are protobuf records (`proto/store.proto`); keys are redb tuples. The schema version is
//! stored in the `meta` table; a server refuses a database whose version it does not know.

use prost::Message;
use redb::{ReadableDatabase, TableDefinition};

use crate::wire::error::{MetaError, MetaResult};

/// The version of the layout below. Bump it with every incompatible change and teach
/// [`check_version`] to migrate or refuse.
pub const SCHEMA_VERSION: u32 = 1;

// --- both files -----------------------------------------------------------------------------------
/// Small named values: `schema_version`, `kind` (`volume`/`server`), `volume` (VolumeInfo),
/// `counters` (Counters).
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

// --- a volume file ---------------------------------------------------------------------------------
/// ino → Inode
pub const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
/// (parent ino, name) → Dentry
pub const DENTRIES: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("dentries");
/// (directory ino, cookie) → name: readdir order, stable under concurrent changes
pub const DIR_COOKIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("dir_cookies");
/// (ino, name) → value
pub const XATTRS: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("xattrs");
/// (ino, block index) → Block
pub const BLOCKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("blocks");
/// block id → allocation time (ns since the epoch): uploads no commit has referenced yet
pub const UPLOADS: TableDefinition<u64, i64> = TableDefinition::new("uploads");
/// (time the block was dereferenced in ns, block id) → stored length: blocks waiting for retention
pub const GC_PENDING: TableDefinition<(i64, u64), u32> = TableDefinition::new("gc_pending");
/// block object id → how many block-map entries name it beyond the first (a rewrite that kept
/// some of its chunks); absent: one. The object is dereferenced when the last one goes.
pub const SHARED_REFS: TableDefinition<u64, u32> = TableDefinition::new("shared_refs");
/// directory ino → QuotaDir
pub const QUOTAS: TableDefinition<u64, &[u8]> = TableDefinition::new("quotas");
/// sha256(token) → Token
pub const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens");
/// session id → Session
pub const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
/// open id → OpenFile
pub const OPEN_FILES: TableDefinition<u64, &[u8]> = TableDefinition::new("open_files");
/// (ino, open id) → (): which inodes are open
pub const OPEN_BY_INO: TableDefinition<(u64, u64), ()> = TableDefinition::new("open_by_ino");
/// ino → (): inodes with no links left that stay until their last close
pub const ORPHANS: TableDefinition<u64, ()> = TableDefinition::new("orphans");
/// ino → LockList: granted locks
pub const LOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("locks");
/// (session id ++ request number, big-endian) → (applied at, ms since the epoch, little-endian) ++
/// the change's result: what a retried request is answered with (`store::replay`).
pub const REPLIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("replies");

// --- the server file -------------------------------------------------------------------------------
/// sha256(token) → AccountToken
pub const ACCOUNT_TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("account_tokens");
/// volume name → volume UUID
pub const VOLUME_NAMES: TableDefinition<&str, &str> = TableDefinition::new("volume_names");

/// Decodes a record; a record that does not decode is corruption, reported as such.
pub fn dec<M: Message + Default>(bytes: &[u8]) -> MetaResult<M> {
    Ok(M::decode(bytes)?)
}

/// Writes the schema version and the file's kind into a new database.
pub fn init_version(txn: &redb::WriteTransaction, kind: &str) -> MetaResult<()> {
    let mut t = txn.open_table(META)?;
    t.insert("schema_version", SCHEMA_VERSION.to_le_bytes().as_slice())?;
    t.insert("kind", kind.as_bytes())?;
    Ok(())
}

/// Refuses a database this build does not know: a newer schema, another kind of file, or none.
pub fn check_version(db: &redb::Database, path: &std::path::Path, kind: &str) -> MetaResult<()> {
    let txn = db.begin_read()?;
    let t = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(MetaError::Protocol(format!(
                "{} is not a stratusfs database (no meta table); move it away or point --data-dir elsewhere",
                path.display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let version = t.get("schema_version")?.and_then(|v| v.value().try_into().ok().map(u32::from_le_bytes));
    let found_kind = t.get("kind")?.map(|v| String::from_utf8_lossy(v.value()).into_owned());
    match version {
        Some(SCHEMA_VERSION) if found_kind.as_deref() == Some(kind) => Ok(()),
        Some(SCHEMA_VERSION) => Err(MetaError::Protocol(format!(
            "{} is a stratusfs {} database, expected a {kind} database",
            path.display(),
            found_kind.unwrap_or_default()
        ))),
        Some(v) => Err(MetaError::Protocol(format!(
            "{} has schema version {v}; this stratusfs knows version {SCHEMA_VERSION} only{}",
            path.display(),
            if v > SCHEMA_VERSION { " (it was written by a newer stratusfs: upgrade this one)" } else { "" }
        ))),
        None => Err(MetaError::Protocol(format!(
            "{} has no schema version; it is not a stratusfs database",
            path.display()
        ))),
    }
}

/// Opens (creating if absent) a redb file, logging any repair after an unclean stop. A repair whose
/// first step reports progress 0.3 means the last commit's pages did not verify and redb fell back
/// to the commit before it: that is logged as an error, since a reply may have promised it.
pub fn open_database(path: &std::path::Path) -> MetaResult<redb::Database> {
    let shown = path.display().to_string();
    let db = redb::Builder::new()
        .set_repair_callback(move |s| {
            let p = s.progress();
            if p < 0.1 {
                tracing::warn!(file = %shown, "the database was not closed cleanly; checking its last commit");
            } else if (0.2..0.5).contains(&p) {
                tracing::error!(
                    file = %shown,
                    "the database's last commit did not verify; redb falls back to the commit before it"
                );
            } else {
                tracing::info!(file = %shown, progress = p, "repairing the database");
            }
        })
        .create(path)?;
    Ok(db)
}
