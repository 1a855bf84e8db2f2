//! Runners for the third-party filesystem suites: pjdfstest (POSIX conformance) and fsx (random
//! I/O with verification). Both run against any directory: a local one as the reference, a
//! stratusfs mount under test.

use std::path::Path;
use std::process::Command;

use crate::{HarnessError, Result, tools};

/// The pjdfstest configuration the project runs with: `e2e/suites/pjdfstest.toml` (every
/// setting that makes a case skip is explained there).
pub const PJDFSTEST_CONFIG: &str = include_str!("../suites/pjdfstest.toml");

/// pjdfstest's closing line: `Summary: F failed, S skipped, P passed, E expected failures, T total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PjdfstestSummary {
    pub failed: u32,
    pub skipped: u32,
    pub passed: u32,
    pub expected_failures: u32,
    pub total: u32,
    /// The whole output, for the failing cases' names and messages.
    pub output: String,
}

impl PjdfstestSummary {
    /// Parses the summary line from pjdfstest's output (colour codes removed first).
    pub fn parse(output: &str) -> Option<PjdfstestSummary> {
        let plain = strip_ansi(output);
        let line = plain.lines().rev().find(|l| l.starts_with("Summary:"))?;
        let mut n = line
            .trim_start_matches("Summary:")
            .split(',')
            .map(|part| part.split_whitespace().next().and_then(|w| w.parse::<u32>().ok()));
        Some(PjdfstestSummary {
            failed: n.next()??,
            skipped: n.next()??,
            passed: n.next()??,
            expected_failures: n.next()??,
            total: n.next()??,
            output: plain,
        })
    }

    /// The names of the cases reported FAILED.
    pub fn failures(&self) -> Vec<&str> {
        self.output
            .lines()
            .filter(|l| l.trim_end().ends_with("FAILED"))
            .filter_map(|l| l.split_whitespace().next())
            .collect()
    }

    /// The closing line as pjdfstest printed it.
    pub fn line(&self) -> String {
        format!(
            "Summary: {} failed, {} skipped, {} passed, {} expected failures, {} total",
            self.failed, self.skipped, self.passed, self.expected_failures, self.total
        )
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs pjdfstest (all cases, or those matching `patterns`) in `dir` with the project's
/// configuration. `dir` must be writable by root. `secondary`, a directory on another filesystem,
/// enables the cases that rename across filesystems (EXDEV). `allow_remount` lets the EROFS cases
/// remount the filesystem under test read-only and back (never the machine's root).
pub fn pjdfstest(
    dir: &Path,
    secondary: Option<&Path>,
    patterns: &[&str],
    allow_remount: bool,
) -> Result<PjdfstestSummary> {
    // The configuration lives beside the test directory, not in it: pjdfstest creates and removes
    // entries under the path it is given.
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("run");
    let config = dir.with_file_name(format!(".{name}.pjdfstest.toml"));
    let text = if allow_remount {
        PJDFSTEST_CONFIG.replace("allow_remount = false", "allow_remount = true")
    } else {
        PJDFSTEST_CONFIG.to_string()
    };
    std::fs::write(&config, text).map_err(HarnessError::io(format!("writing {}", config.display())))?;
    let out = Command::new(tools::binary("pjdfstest")?)
        // Verbose: each skipped case is followed by the reason it skipped.
        .arg("-v")
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(dir)
        .args(secondary.into_iter().flat_map(|s| [std::ffi::OsStr::new("-s"), s.as_os_str()]))
        .args(patterns)
        .env("NO_COLOR", "1")
        .output()
        .map_err(HarnessError::io("running pjdfstest"));
    let _ = std::fs::remove_file(&config);
    let out = out?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    PjdfstestSummary::parse(&text)
        .ok_or_else(|| HarnessError::setup("running pjdfstest", format!("no summary line in its output:\n{text}")))
}

/// fsx 0.3.2 never unmaps what a mapped read mapped (`domapread` has no `munmap`), so a run
/// leaks one mapping per mapped read and fails with ENOMEM from mmap once it holds
/// `vm.max_map_count` of them (65,530 by default: about 450,000 operations with our weights). A
/// run of `ops` operations gets a limit above what it can leak; the limit is only ever raised.
fn allow_fsx_mappings(ops: u64) -> Result<()> {
    const SYSCTL: &str = "/proc/sys/vm/max_map_count";
    let current: u64 = std::fs::read_to_string(SYSCTL)
        .map_err(HarnessError::io(format!("reading {SYSCTL}")))?
        .trim()
        .parse()
        .map_err(|e| HarnessError::setup(format!("reading {SYSCTL}"), format!("not a number: {e}")))?;
    let need = ops + 65_530;
    if current >= need {
        return Ok(());
    }
    std::fs::write(SYSCTL, need.to_string()).map_err(|e| {
        HarnessError::setup(
            "running fsx",
            format!(
                "fsx leaks one mapping per mapped read, so {ops} operations need vm.max_map_count >= {need} \
                 (it is {current}) and raising it failed ({e}); run as root or raise it first"
            ),
        )
    })?;
    eprintln!("fsx: raised vm.max_map_count from {current} to {need} (fsx leaks one mapping per mapped read)");
    Ok(())
}

/// The result of one fsx run.
#[derive(Debug)]
pub struct FsxRun {
    pub ok: bool,
    /// stdout and stderr; on failure fsx prints the operation log leading to the mismatch.
    pub output: String,
}

/// Runs fsx on `file` for `ops` operations with `seed`, using `config` (TOML, see fsx's
/// doc/fsx.toml). fsx keeps its good copy (`NAME.fsxgood`) and logs in `artifacts`.
pub fn fsx(file: &Path, config: &str, ops: u64, seed: u64, artifacts: &Path) -> Result<FsxRun> {
    allow_fsx_mappings(ops)?;
    let cfg = artifacts.join(format!("fsx-{seed}.toml"));
    std::fs::write(&cfg, config).map_err(HarnessError::io(format!("writing {}", cfg.display())))?;
    let out = Command::new(tools::binary("fsx")?)
        .arg("-f")
        .arg(&cfg)
        .args(["-N", &ops.to_string(), "-S", &seed.to_string()])
        .arg("-P")
        .arg(artifacts)
        .arg(file)
        .env("RUST_LOG", "warn")
        .output()
        .map_err(HarnessError::io("running fsx"))?;
    Ok(FsxRun {
        ok: out.status.success(),
        output: format!(
            "{}{}fsx ended with {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line_with_colours() {
        let out = "chmod::foo                 ok\nrename::bar            \u{1b}[31mFAILED\u{1b}[0m\n\n\u{1b}[1;31mSummary\u{1b}[0m: 1 \u{1b}[1;31mfailed\u{1b}[0m, 42 \u{1b}[33mskipped\u{1b}[0m, 355 passed, 0 expected failures, 398 total\n";
        let s = PjdfstestSummary::parse(out).unwrap();
        assert_eq!((s.failed, s.skipped, s.passed, s.expected_failures, s.total), (1, 42, 355, 0, 398));
        assert_eq!(s.failures(), ["rename::bar"]);
        assert!(PjdfstestSummary::parse("no summary").is_none());
    }
}
