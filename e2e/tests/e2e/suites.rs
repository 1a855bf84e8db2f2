//! The third-party tools the later tests rely on run here: helm, csi-sanity, and the pjdfstest and
//! fsx suites against a plain local directory (the reference every FUSE run is compared with).

use std::process::Command;

use e2e::tools;

fn run(tool: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tools::binary(tool).unwrap()).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn helm_reports_its_pinned_version() {
    let (ok, text) = run("helm", &["version", "--short"]);
    assert!(ok, "{text}");
    let pinned = tools::version("helm").unwrap();
    assert!(text.starts_with(pinned), "helm version {text:?}, pinned {pinned}");
}

#[test]
fn csi_sanity_runs() {
    let (_, text) = run("csi-sanity", &["--help"]);
    assert!(text.contains("-csi.endpoint"), "{text}");
}

#[test]
fn pjdfstest_passes_on_a_local_directory() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("pjd");
    std::fs::create_dir(&dir).unwrap();
    // A directory on another filesystem (tmpfs) enables the EXDEV cases.
    let other = tempfile::tempdir_in("/dev/shm").unwrap();
    let summary = e2e::suites::pjdfstest(&dir, Some(other.path()), &[], false).unwrap();
    eprintln!("pjdfstest on a local ext4 directory: {}", summary.line());
    assert_eq!(summary.failed, 0, "failures: {:?}\n{}", summary.failures(), summary.output);
    assert!(summary.passed > 300, "{}", summary.line());
    // The only skips are the EROFS cases, which remount the filesystem under test (the machine's root
    // here): see e2e/suites/pjdfstest.toml.
    assert_eq!(
        summary.skipped,
        summary.output.matches("Remounts (allow_remount) are not allowed").count() as u32,
        "{}",
        summary.output
    );
}

/// fsx's configuration for the local reference: every operation Linux filesystems support.
pub const FSX_LOCAL: &str = r#"
flen = 1048576
[opsize]
max = 131072
[weights]
close_open = 1
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 2
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 1
copy_file_range = 1
"#;

#[test]
fn fsx_passes_on_a_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = e2e::suites::fsx(&dir.path().join("fsx.file"), FSX_LOCAL, 20_000, 1, dir.path()).unwrap();
    assert!(run.ok, "{}", run.output);
}

#[test]
fn fsx_detects_a_file_changed_behind_its_back() {
    // fsx must be able to fail: a file rewritten by someone else mid-run is caught on read.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fsx.file");
    let writer = {
        let file = file.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                if let Ok(meta) = std::fs::metadata(&file)
                    && meta.len() > 4096
                {
                    let _ = std::fs::write(&file, vec![0xA5u8; meta.len() as usize]);
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let run = e2e::suites::fsx(&file, FSX_LOCAL, 2_000_000, 2, dir.path()).unwrap();
    writer.join().unwrap();
    assert!(!run.ok, "fsx did not notice its file being overwritten");
}

#[test]
#[ignore = "soak: fsx for 1,000,000 operations on a local file (the reference for stratusfs runs)"]
fn soak_fsx_one_million_ops_on_a_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let run = e2e::suites::fsx(&dir.path().join("fsx.file"), FSX_LOCAL, 1_000_000, 7, dir.path()).unwrap();
    assert!(run.ok, "{}", run.output);
    eprintln!("soak: fsx 1,000,000 ops on local ext4 in {:?}", start.elapsed());
}
