//! A small process the end-to-end tests drive to act on a mount as a separate program would:
//! take and hold locks (to see them conflict across mounts, wake, be interrupted by a signal or
//! released by kill -9), and write with fsync while reporting what is durable (crash tests).
//!
//! fsprobe lock PATH posix|flock read|write START LEN wait|nowait
//!     prints `locked` once it holds the lock, then holds it until stdin closes; prints `busy`
//!     (exit 2) when nowait conflicts, `eintr` (exit 3) when SIGUSR1 interrupts the wait.
//! fsprobe writer PATH RECORD
//!     appends RECORD-byte records (record i filled with byte i % 251) with fsync after each and
//!     prints `synced N` after the N-th fsync returned, until killed.
//! fsprobe steady PATH RECORD
//!     holds PATH open (made empty) with an fcntl write lock on its first RECORD bytes and keeps
//!     writing RECORD-byte records (record i filled with byte i % 251), each followed by fsync and
//!     a read back of it, and a read back of the whole file every 16 records, printing `ok N`
//!     after the N-th; when stdin closes it finishes the record, prints `done N`, closes the file
//!     and exits 0. Any failed call or different byte: the error on stderr, exit 1.
//! fsprobe steady PATH RECORD lost-is-eio
//!     the same, but an fsync answered EIO (the writes it covered were lost, as a crashed node
//!     plugin reports them) prints `lost N` and writes record N again; a close answered EIO prints
//!     `close_lost`. Any other failure: exit 1.
//! fsprobe reader PATH
//!     reads PATH whole, prints `ready`, then keeps reading 64 KiB pieces of it through the same
//!     open file (a piece every 20 ms), checking each against the first read, and prints
//!     `reads N` after the N-th; exits 1 with the error on a failed or different read.
//! fsprobe smallfiles DIR COUNT SIZE
//!     COUNT cycles of create + write SIZE bytes + close, stat, unlink in DIR; prints
//!     `cycles_per_sec X` (the benchmark's small-file figure).

use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

extern "C" fn on_usr1(_: libc::c_int) {}

fn fail(msg: &str) -> ! {
    eprintln!("fsprobe: {msg}");
    std::process::exit(1)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn lock(args: &[String]) {
    let [path, kind, typ, start, len, wait] = args else {
        fail("usage: fsprobe lock PATH posix|flock read|write START LEN wait|nowait")
    };
    // SIGUSR1 interrupts a blocked wait (no SA_RESTART): the call returns EINTR.
    // SAFETY: installing a handler that does nothing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| fail(&format!("opening {path}: {e}")));
    let write = typ == "write";
    let wait = wait == "wait";
    let r = if kind == "flock" {
        let op = if write { libc::LOCK_EX } else { libc::LOCK_SH } | if wait { 0 } else { libc::LOCK_NB };
        // SAFETY: flock on an fd we own.
        unsafe { libc::flock(f.as_raw_fd(), op) }
    } else {
        // SAFETY: a zeroed flock is valid; fields set below.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = start.parse().unwrap_or_else(|_| fail("START"));
        fl.l_len = len.parse().unwrap_or_else(|_| fail("LEN"));
        // SAFETY: fcntl with a valid flock pointer.
        unsafe { libc::fcntl(f.as_raw_fd(), if wait { libc::F_SETLKW } else { libc::F_SETLK }, &fl) }
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {
                say("eintr");
                std::process::exit(3)
            }
            Some(libc::EAGAIN) | Some(libc::EACCES) => {
                say("busy");
                std::process::exit(2)
            }
            _ => fail(&format!("locking {path}: {e}")),
        }
    }
    say("locked");
    // Hold until stdin closes.
    for _ in std::io::stdin().lock().lines() {}
}

fn writer(args: &[String]) {
    let [path, record] = args else { fail("usage: fsprobe writer PATH RECORD") };
    let record: usize = record.parse().unwrap_or_else(|_| fail("RECORD"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| fail(&format!("opening {path}: {e}")));
    for i in 0u64.. {
        let buf = vec![(i % 251) as u8; record];
        f.write_all_at(&buf, i * record as u64).unwrap_or_else(|e| fail(&format!("writing record {i}: {e}")));
        f.sync_all().unwrap_or_else(|e| fail(&format!("fsync after record {i}: {e}")));
        say(&format!("synced {}", i + 1));
    }
}

fn steady(args: &[String]) {
    let (path, record, tolerate) = match args {
        [path, record] => (path, record, false),
        [path, record, t] if t == "lost-is-eio" => (path, record, true),
        _ => fail("usage: fsprobe steady PATH RECORD [lost-is-eio]"),
    };
    let record: usize = record.parse().unwrap_or_else(|_| fail("RECORD"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| fail(&format!("opening {path}: {e}")));
    // SAFETY: a zeroed flock is valid; fields set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_len = record as i64;
    // SAFETY: fcntl with a valid flock pointer on an fd we own.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } != 0 {
        fail(&format!("locking {path}: {}", std::io::Error::last_os_error()));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopper = stop.clone();
    std::thread::spawn(move || {
        for _ in std::io::stdin().lock().lines() {}
        stopper.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let fill = |i: u64| vec![(i % 251) as u8; record];
    let mut back = vec![0u8; record];
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let at = n * record as u64;
        f.write_all_at(&fill(n), at).unwrap_or_else(|e| fail(&format!("writing record {n}: {e}")));
        match f.sync_all() {
            Ok(()) => {}
            Err(e) if tolerate && e.raw_os_error() == Some(libc::EIO) => {
                say(&format!("lost {n}"));
                continue;
            }
            Err(e) => fail(&format!("fsync after record {n}: {e}")),
        }
        f.read_exact_at(&mut back, at).unwrap_or_else(|e| fail(&format!("reading record {n} back: {e}")));
        if back != fill(n) {
            fail(&format!("record {n} read back different bytes"));
        }
        n += 1;
        if n.is_multiple_of(16) {
            let mut whole = vec![0u8; n as usize * record];
            f.read_exact_at(&mut whole, 0).unwrap_or_else(|e| fail(&format!("reading {n} records back: {e}")));
            for (i, r) in whole.chunks(record).enumerate() {
                if r != fill(i as u64) {
                    fail(&format!("record {i} of {n} read back different bytes"));
                }
            }
        }
        say(&format!("ok {n}"));
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    use std::os::fd::IntoRawFd;
    // SAFETY: closing the fd this function owns, once (into_raw_fd gave up the File's claim).
    if unsafe { libc::close(f.into_raw_fd()) } != 0 {
        let e = std::io::Error::last_os_error();
        if !(tolerate && e.raw_os_error() == Some(libc::EIO)) {
            fail(&format!("closing {path}: {e}"));
        }
        say("close_lost");
    }
    say(&format!("done {n}"));
}

fn reader(args: &[String]) {
    let [path] = args else { fail("usage: fsprobe reader PATH") };
    let f = std::fs::File::open(path).unwrap_or_else(|e| fail(&format!("opening {path}: {e}")));
    let len = f.metadata().unwrap_or_else(|e| fail(&format!("stat {path}: {e}"))).len() as usize;
    const PIECE: usize = 64 << 10;
    if len < 2 * PIECE {
        fail("the file must hold two pieces of 64 KiB at least");
    }
    let mut whole = vec![0u8; len];
    f.read_exact_at(&mut whole, 0).unwrap_or_else(|e| fail(&format!("reading {path}: {e}")));
    say("ready");
    let mut buf = vec![0u8; PIECE];
    for n in 1u64.. {
        let at = (n as usize * 7919 * 4096) % (len - PIECE);
        f.read_exact_at(&mut buf, at as u64).unwrap_or_else(|e| fail(&format!("read {n} at {at}: {e}")));
        if buf[..] != whole[at..at + PIECE] {
            fail(&format!("read {n} at {at}: different bytes"));
        }
        say(&format!("reads {n}"));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn smallfiles(args: &[String]) {
    let [dir, count, size] = args else { fail("usage: fsprobe smallfiles DIR COUNT SIZE") };
    let count: usize = count.parse().unwrap_or_else(|_| fail("COUNT"));
    let data = vec![7u8; size.parse().unwrap_or_else(|_| fail("SIZE"))];
    let dir = std::path::Path::new(dir);
    let start = std::time::Instant::now();
    for i in 0..count {
        let p = dir.join(format!("f{i}"));
        std::fs::write(&p, &data).unwrap_or_else(|e| fail(&format!("writing {}: {e}", p.display())));
        let md = std::fs::metadata(&p).unwrap_or_else(|e| fail(&format!("stat {}: {e}", p.display())));
        if md.len() != data.len() as u64 {
            fail(&format!("{} has {} bytes, wrote {}", p.display(), md.len(), data.len()));
        }
        std::fs::remove_file(&p).unwrap_or_else(|e| fail(&format!("unlink {}: {e}", p.display())));
    }
    say(&format!("cycles_per_sec {:.1}", count as f64 / start.elapsed().as_secs_f64()));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("lock") => lock(&args[1..]),
        Some("writer") => writer(&args[1..]),
        Some("reader") => reader(&args[1..]),
        Some("steady") => steady(&args[1..]),
        Some("smallfiles") => smallfiles(&args[1..]),
        _ => fail("usage: fsprobe lock ... | fsprobe writer ..."),
    }
}
