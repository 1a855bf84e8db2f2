//! Which threads may block on local I/O (a read of a local-folder block store) or long CPU work
//! (checking a whole block) instead of handing it to tokio's blocking pool. The FUSE reader
//! threads may: they exist to wait on the kernel, a request polled on one of them first runs there
//! (see `fuse::session`), and handing a local read of a few microseconds to another thread and
//! back costs more than the read. Runtime workers may not: a slow disk would stall every task on
//! them.
//!
//! Nothing here is process-wide: which threads may block is a property of each thread (a mount's
//! readers mark themselves), and each mount has its own [`DurableSlot`].

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one that may block on local I/O.
pub fn allow_on_this_thread() {
    MAY_BLOCK.with(|b| b.set(true));
}

/// Whether the calling thread may block on local I/O.
pub fn allowed() -> bool {
    MAY_BLOCK.with(|b| b.get())
}

/// Runs `f` (blocking local I/O) here when this thread may block, else on tokio's blocking pool.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    if allowed() { Some(f()) } else { tokio::task::spawn_blocking(f).await.ok() }
}

/// One mount's permit for a reader thread to run durable I/O itself (see [`run_durable`]): 1 while
/// one of its FUSE reader threads is inside a [`run_durable`] call.
#[derive(Debug, Default)]
pub struct DurableSlot(AtomicUsize);

/// [`run`] for I/O that waits for the disk (a write and its fsync, milliseconds on a slow disk or
/// NFS): at most one FUSE reader thread of a mount (`slot`) at a time runs such a call itself, so
/// concurrent fsyncs cannot leave the mount with no thread to read the kernel's next request; the
/// others go to tokio's blocking pool.
pub async fn run_durable<T: Send + 'static>(slot: &DurableSlot, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    if allowed() && slot.0.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Release);
            }
        }
        let _leave = Leave(&slot.0);
        return Some(f());
    }
    tokio::task::spawn_blocking(f).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn only_one_reader_thread_of_a_mount_at_a_time_runs_durable_io_itself() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let start = Arc::new(Barrier::new(3));
        let (slot, other) = (Arc::new(DurableSlot::default()), Arc::new(DurableSlot::default()));
        let readers: Vec<_> = (0..3)
            .map(|i| {
                let (rt, start) = (rt.handle().clone(), start.clone());
                // Two readers of one mount, and one of another mount.
                let slot = if i < 2 { slot.clone() } else { other.clone() };
                std::thread::spawn(move || {
                    allow_on_this_thread();
                    let me = std::thread::current().id();
                    start.wait();
                    rt.block_on(run_durable(&slot, move || {
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        std::thread::current().id() == me
                    }))
                    .unwrap()
                })
            })
            .collect();
        let here: Vec<bool> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        assert_eq!(
            here[..2].iter().filter(|&&h| h).count(),
            1,
            "of one mount's readers, one ran on its thread, the other on the pool: {here:?}"
        );
        assert!(here[2], "another mount's reader is not held back by the first mount: {here:?}");
        // Both done: the next call runs on its reader thread again.
        allow_on_this_thread();
        let me = std::thread::current().id();
        assert_eq!(rt.block_on(run_durable(&slot, move || std::thread::current().id() == me)), Some(true));
    }
}
