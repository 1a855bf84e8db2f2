//! Which threads may block on local I/O (a read of a local-folder block store) or long CPU work
//! (checking a whole block) instead of handing it to tokio's blocking pool. The FUSE reader
//! threads may: they exist to wait on the kernel, a request polled on one of them first runs there
//! (see `fuse::session`), and handing a local read of a few microseconds to another thread and
//! back costs more than the read. Runtime workers may not: a slow disk would stall every task on
//! them.

use std::cell::Cell;

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
