//! A local-folder block store's objects read and written straight to their files (see
//! [`LocalFiles`]).

use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;

use super::backend::BackendSpec;

/// Reads and writes of a local-folder block store straight to its files, on the calling thread:
/// positioned reads into fresh buffers, and uploads written to a staged file that is fsynced and
/// renamed into place (object_store's local backend zero-fills its read buffers and hops to a
/// blocking thread for each read and write). Deletes and listings still go through object_store,
/// which lays the files out; this asks it where each object's file is, and names staged files as
/// it does (`KEY#DIGITS`), so its listings skip them.
#[derive(Clone, Debug)]
pub struct LocalFiles {
    fs: Arc<LocalFileSystem>,
    prefix: object_store::path::Path,
}

impl LocalFiles {
    /// The files of a local-folder spec whose directory exists; `None` otherwise (and for every
    /// other backend), so reads and writes go through object_store.
    pub fn of(spec: &BackendSpec) -> Option<LocalFiles> {
        let BackendSpec::Local { path, prefix } = spec else { return None };
        let fs = LocalFileSystem::new_with_prefix(path).ok()?;
        Some(LocalFiles { fs: Arc::new(fs), prefix: object_store::path::Path::from(prefix.trim_matches('/')) })
    }

    /// The file of object `key`.
    fn path_of(&self, key: &object_store::path::Path) -> std::io::Result<PathBuf> {
        // The key as the volume's PrefixStore hands it to the local backend.
        let full: object_store::path::Path = self.prefix.parts().chain(key.parts()).collect();
        self.fs.path_to_filesystem(&full).map_err(std::io::Error::other)
    }

    /// Stores object `key` as the concatenation of `parts`, durably: the bytes and the name are
    /// on disk when this returns, and a reader sees the whole object or none. Blocks the calling
    /// thread for the file system's time (fsync included).
    pub fn write(&self, key: &object_store::path::Path, parts: &[Bytes]) -> std::io::Result<()> {
        static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let path = self.path_of(key)?;
        let dir = path.parent().ok_or_else(|| std::io::Error::other(format!("{} has no parent", path.display())))?;
        let mut staged = path.clone().into_os_string();
        let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        staged.push(format!("#{}{n:06}", std::process::id()));
        let staged = PathBuf::from(staged);
        let create = || std::fs::OpenOptions::new().write(true).create_new(true).open(&staged);
        let mut file = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                create()?
            }
            other => other?,
        };
        let written = (|| {
            let mut slices: Vec<std::io::IoSlice<'_>> = parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                match std::io::Write::write_vectored(&mut file, rest) {
                    Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                    Ok(n) => std::io::IoSlice::advance_slices(&mut rest, n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            file.sync_all()?;
            std::fs::rename(&staged, &path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        written
    }

    /// Object `key`, or `range` of it. Blocks the calling thread for the file system's time.
    pub fn read(&self, key: &object_store::path::Path, range: Option<Range<u64>>) -> std::io::Result<Bytes> {
        let path = self.path_of(key)?;
        let file = std::fs::File::open(&path)?;
        let range = match range {
            Some(r) => r,
            None => 0..file.metadata()?.len(),
        };
        let len = usize::try_from(range.end.saturating_sub(range.start)).map_err(std::io::Error::other)?;
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            let filled = buf.len();
            // SAFETY: pread writes at most `len - filled` bytes into the spare capacity that
            // starts at `filled`; the length is raised only by what it reports written.
            let n = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    buf.as_mut_ptr().add(filled).cast(),
                    len - filled,
                    (range.start + filled as u64) as libc::off_t,
                )
            };
            match n {
                0 => {
                    let msg = format!("{} ends before byte {}", path.display(), range.end);
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, msg));
                }
                n if n > 0 => {
                    // SAFETY: the kernel initialised these `n` bytes.
                    unsafe { buf.set_len(filled + n as usize) }
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockstore::open_backend;
    use object_store::{ObjectStoreExt, PutPayload};

    #[tokio::test]
    async fn local_files_read_and_write_what_the_local_backend_sees() {
        let dir = tempfile::tempdir().unwrap();
        let spec = BackendSpec::Local { path: dir.path().join("blocks"), prefix: "/p q/100%/".into() };
        let store = open_backend(&spec).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let key = crate::blockstore::layout::block_key("vol", 7);
        store.put(&key, PutPayload::from(data.clone())).await.unwrap();
        // object_store escapes the prefix's '%' in the file's path: the reader must find it there.
        let on_disk = dir.path().join("blocks/p q/100%25").join(key.as_ref());
        assert!(on_disk.exists(), "{} is not where the local backend put the object", on_disk.display());
        let reader = LocalFiles::of(&spec).unwrap();
        assert_eq!(&reader.read(&key, None).unwrap()[..], &data[..]);
        assert_eq!(&reader.read(&key, Some(5000..70_000)).unwrap()[..], &data[5000..70_000]);
        let past = reader.read(&key, Some(99_000..100_001)).unwrap_err();
        assert_eq!(past.kind(), std::io::ErrorKind::UnexpectedEof, "{past}");
        let missing = reader.read(&crate::blockstore::layout::block_key("vol", 8), None).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        assert!(LocalFiles::of(&BackendSpec::Memory { prefix: String::new() }).is_none());
        // Written directly (into a directory that does not exist yet), read through object_store.
        let key9 = crate::blockstore::layout::block_key("vol", 9);
        let parts = [Bytes::from_static(b"table"), Bytes::from(data.clone())];
        reader.write(&key9, &parts).unwrap();
        let got = store.get(&key9).await.unwrap().bytes().await.unwrap();
        assert_eq!(got, [&b"table"[..], &data[..]].concat());
        // A staged file left by a crash is not an object in listings.
        let staged = dir.path().join("blocks/p q/100%25").join(format!("{}#4242", key9.as_ref()));
        std::fs::write(&staged, b"partial").unwrap();
        use futures::TryStreamExt;
        let mut listed: Vec<String> = store.list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        listed.sort();
        assert_eq!(listed, [key.to_string(), key9.to_string()]);
    }
}
