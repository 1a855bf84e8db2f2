//! POSIX details through a real mount that the suites do not look at closely: ACLs enforced by
//! the kernel, holes that are not stored, SEEK_DATA/SEEK_HOLE, O_APPEND, special files, xattrs,
//! shared writable mmap, statfs.

use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::process::Command;

use e2e::stratusfs::{MetaServer, Mount};

fn as_nobody(cmd: &str) -> std::process::Output {
    Command::new("su").args(["nobody", "-s", "/bin/sh", "-c", cmd]).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posix_acls_are_enforced_and_inherited() {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let f = m.path.join("secret");
    std::fs::write(&f, b"for nobody's eyes").unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cat = format!("cat {}", f.display());
    assert!(!as_nobody(&cat).status.success(), "mode 0600 let nobody read");
    let st = Command::new("setfacl").args(["-m", "u:nobody:r"]).arg(&f).status().unwrap();
    assert!(st.success());
    let out = as_nobody(&cat);
    if !out.status.success() {
        let dbg = as_nobody(&format!(
            "ls -ld {} {} {}; id",
            m.path.parent().unwrap().display(),
            m.path.display(),
            f.display()
        ));
        panic!(
            "the ACL did not let nobody read: {}\n{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&dbg.stdout),
            String::from_utf8_lossy(&dbg.stderr)
        );
    }
    assert_eq!(out.stdout, b"for nobody's eyes");
    // The mode's group bits show the ACL mask.
    assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o640);
    // A default ACL is inherited by new files (and the umask does not apply then).
    let d = m.path.join("shared");
    std::fs::create_dir(&d).unwrap();
    assert!(Command::new("setfacl").args(["-d", "-m", "u:nobody:rw"]).arg(&d).status().unwrap().success());
    std::fs::write(d.join("new"), b"x").unwrap();
    let acl = Command::new("getfacl").arg("-c").arg(d.join("new")).output().unwrap();
    assert!(
        String::from_utf8_lossy(&acl.stdout).contains("user:nobody:rw-"),
        "{}",
        String::from_utf8_lossy(&acl.stdout)
    );
    let out = as_nobody(&format!("echo more >> {}", d.join("new").display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // New directories inherit the default ACL itself.
    std::fs::create_dir(d.join("sub")).unwrap();
    let acl = Command::new("getfacl").arg("-c").arg(d.join("sub")).output().unwrap();
    assert!(
        String::from_utf8_lossy(&acl.stdout).contains("default:user:nobody:rw-"),
        "{}",
        String::from_utf8_lossy(&acl.stdout)
    );

    // chmod rewrites the access ACL (as on ext4): after `chmod 640` the mask allows r-- only, so
    // nobody's rw- entry no longer lets it write, and other loses its r--.
    let g = m.path.join("shared-file");
    std::fs::write(&g, b"before").unwrap();
    std::fs::set_permissions(&g, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    assert!(Command::new("setfacl").args(["-m", "u:nobody:rw"]).arg(&g).status().unwrap().success());
    let append = format!("echo by-nobody >> {}", g.display());
    assert!(as_nobody(&append).status.success(), "the ACL should let nobody write");
    std::fs::set_permissions(&g, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let acl = String::from_utf8(Command::new("getfacl").arg("-c").arg(&g).output().unwrap().stdout).unwrap();
    assert!(acl.contains("mask::r--") && acl.contains("other::---"), "after chmod 640:\n{acl}");
    let out = as_nobody(&append);
    assert!(!out.status.success(), "chmod 640 left nobody able to write through its ACL entry");
    assert_eq!(as_nobody(&format!("cat {}", g.display())).stdout, b"beforeby-nobody\n");
    // An ACL set by someone outside the file's group clears setgid (as on ext4).
    let h = m.path.join("setgid-file");
    std::fs::write(&h, b"").unwrap();
    std::os::unix::fs::chown(&h, Some(65534), Some(0)).unwrap();
    std::fs::set_permissions(&h, std::os::unix::fs::PermissionsExt::from_mode(0o2775)).unwrap();
    let out = as_nobody(&format!("setfacl -m u:root:r {}", h.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&h).unwrap().mode() & 0o7777, 0o775, "setgid survived nobody's setfacl");
    // An ACL that says no more than the mode leaves no ACL behind (`ls` shows no '+').
    assert!(Command::new("setfacl").args(["-b"]).arg(&g).status().unwrap().success());
    assert!(Command::new("setfacl").args(["-m", "u::rwx,g::r,o::r"]).arg(&g).status().unwrap().success());
    assert_eq!(std::fs::metadata(&g).unwrap().mode() & 0o777, 0o744);
    let xattrs = Command::new("getfattr").args(["-m", "-", "-d"]).arg(&g).output().unwrap();
    assert!(!String::from_utf8_lossy(&xattrs.stdout).contains("posix_acl_access"), "{xattrs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holes_are_not_stored_and_seek_finds_data_and_holes() {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |r| r.block_size = Some(256 * 1024)).await.unwrap();
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let p = m.path.join("sparse");
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
    // Data in block 0 and block 8, a hole between, and a hole after up to 100 MiB.
    std::os::unix::fs::FileExt::write_all_at(&f, b"start", 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 8 * 256 * 1024 + 10).unwrap();
    f.set_len(100 << 20).unwrap();
    f.sync_all().unwrap();
    let md = std::fs::metadata(&p).unwrap();
    assert_eq!(md.len(), 100 << 20);
    assert!(md.blocks() * 512 < 1 << 20, "{} bytes stored for 11 bytes of data", md.blocks() * 512);
    let stored: u64 = e2e::files_under(&meta.blocks_dir()).iter().map(|o| std::fs::metadata(o).unwrap().len()).sum();
    assert!(stored < 64 * 1024, "the block store holds {stored} bytes for a sparse 100 MiB file");
    let fd = f.as_raw_fd();
    // SAFETY: lseek on an fd we own.
    let seek = |off: i64, whence: i32| unsafe { libc::lseek(fd, off, whence) };
    assert_eq!(seek(0, libc::SEEK_DATA), 0);
    assert_eq!(seek(0, libc::SEEK_HOLE), 256 * 1024);
    assert_eq!(seek(300 * 1024, libc::SEEK_DATA), 8 * 256 * 1024);
    assert_eq!(seek(8 * 256 * 1024, libc::SEEK_HOLE), 9 * 256 * 1024);
    assert_eq!(seek(9 * 256 * 1024, libc::SEEK_DATA), -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENXIO));
    // The holes read as zeros.
    let data = std::fs::read(&p).unwrap();
    assert_eq!(&data[..5], b"start");
    assert!(data[5..8 * 256 * 1024 + 10].iter().all(|&b| b == 0));
    assert_eq!(&data[8 * 256 * 1024 + 10..8 * 256 * 1024 + 16], b"middle");
    assert!(data[8 * 256 * 1024 + 16..].iter().all(|&b| b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_special_files_xattrs_mmap_and_statfs() {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |r| r.quota = fs_core::admin::Quota { bytes: 1 << 30, inodes: 1000 }).await.unwrap();
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    // O_APPEND from two descriptors interleaves, never overwrites.
    let p = m.path.join("log");
    let mut a = std::fs::OpenOptions::new().append(true).create(true).open(&p).unwrap();
    let mut b = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    for i in 0..10 {
        writeln!(a, "a{i}").unwrap();
        writeln!(b, "b{i}").unwrap();
    }
    drop((a, b));
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 20, "{text}");
    // Named pipes, sockets and device nodes.
    let fifo = m.path.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let sock = m.path.join("sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    assert!(std::fs::metadata(&sock).unwrap().file_type().is_socket());
    let dev = m.path.join("null");
    nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let md = std::fs::metadata(&dev).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), nix::sys::stat::makedev(1, 3));
    // A FIFO works across two processes through the mount.
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::read_to_string(fifo).unwrap()
    });
    std::fs::write(&fifo, b"through the pipe").unwrap();
    assert_eq!(reader.join().unwrap(), "through the pipe");
    // xattrs: set, get, list, remove, with create/replace flags.
    let x = m.path.join("x");
    std::fs::write(&x, b"").unwrap();
    assert!(Command::new("setfattr").args(["-n", "user.colour", "-v", "blue"]).arg(&x).status().unwrap().success());
    let out = Command::new("getfattr").args(["-d", "--absolute-names"]).arg(&x).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("user.colour=\"blue\""));
    assert!(Command::new("setfattr").args(["-x", "user.colour"]).arg(&x).status().unwrap().success());
    assert!(!Command::new("getfattr").args(["-n", "user.colour"]).arg(&x).status().unwrap().success());
    // Shared writable mmap: stores reach the file (msync), another open sees them.
    let mm = m.path.join("mapped");
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&mm).unwrap();
    f.set_len(8192).unwrap();
    // SAFETY: a shared mapping of 8192 bytes of a file we own, unmapped below.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(b"mapped bytes".as_ptr(), (ptr as *mut u8).add(4096), 12);
        assert_eq!(libc::msync(ptr, 8192, libc::MS_SYNC), 0);
        libc::munmap(ptr, 8192);
    }
    drop(f);
    let data = std::fs::read(&mm).unwrap();
    assert_eq!(&data[4096..4108], b"mapped bytes");
    // statfs reports the volume quota as the size.
    let st = nix::sys::statvfs::statvfs(&m.path).unwrap();
    assert_eq!(st.blocks() * st.fragment_size(), 1 << 30);
    assert_eq!(st.files(), 1000);
    // lseek(SEEK_END) sees the size.
    let mut f = std::fs::File::open(&p).unwrap();
    assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), text.len() as u64);
    let _ = std::fs::OpenOptions::new().custom_flags(libc::O_NOATIME).read(true).open(&p).unwrap();
}

/// A program running from the mount cannot be opened for writing or truncated (ETXTBSY), and the
/// attempt changes nothing: the file keeps its bytes and the program runs on. Each file is
/// created, written, made executable, run and opened right away, as pjdfstest's `open::etxtbsy`
/// does, many times, in a directory a burst of creates gets delegated (the creates are applied
/// while the program starts) and in one that is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_program_is_text_busy_and_keeps_its_bytes() {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let program = std::fs::read("/bin/sleep").unwrap();
    let (plain, burst) = (m.path.join("plain"), m.path.join("burst"));
    std::fs::create_dir(&plain).unwrap();
    std::fs::create_dir(&burst).unwrap();
    for i in 0..40 {
        // A burst of creates in `burst` (its delegation), one file at a time in a new directory
        // of `plain`.
        let dir = if i % 2 == 0 {
            for j in 0..3 {
                std::fs::write(burst.join(format!("filler-{i}-{j}")), b"x").unwrap();
            }
            burst.clone()
        } else {
            let d = plain.join(format!("d{i}"));
            std::fs::create_dir(&d).unwrap();
            d
        };
        let exe = dir.join(format!("prog-{i}"));
        {
            let mut f = std::fs::File::create(&exe).unwrap();
            f.write_all(&program).unwrap();
        }
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut child = Command::new(&exe).arg("2").spawn().unwrap();
        for (what, opts) in [
            ("O_WRONLY", std::fs::OpenOptions::new().write(true).clone()),
            ("O_RDWR", std::fs::OpenOptions::new().read(true).write(true).clone()),
            ("O_RDONLY|O_TRUNC", std::fs::OpenOptions::new().read(true).custom_flags(libc::O_TRUNC).clone()),
        ] {
            let r = opts.open(&exe);
            assert_eq!(
                r.as_ref().err().and_then(|e| e.raw_os_error()),
                Some(libc::ETXTBSY),
                "round {i}: {what} of a running program gave {r:?}"
            );
        }
        assert_eq!(std::fs::metadata(&exe).unwrap().len(), program.len() as u64, "round {i}: the program lost bytes");
        child.kill().unwrap();
        let status = child.wait().unwrap();
        // Killed by us, not by a SIGBUS from a truncated text.
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "round {i}: {status:?}"
        );
        assert_eq!(std::fs::read(&exe).unwrap(), program, "round {i}: the program's bytes changed");
    }
}
