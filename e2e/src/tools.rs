//! Where the pinned external tools live.
//!
//! `e2e/tools/versions` is the one pin file; it is compiled in, so the harness and the installer
//! can never disagree about a version.

use std::path::PathBuf;

use crate::{HarnessError, Result};

const PINS: &str = include_str!("../tools/versions");

/// The root of the tool cache: `$STRATUSFS_TOOLS` or `/var/cache/stratusfs/tools`.
pub fn root() -> PathBuf {
    std::env::var_os("STRATUSFS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/stratusfs/tools"))
}

/// Every pinned tool as `(name, version)`, in the pin file's order.
pub fn pins() -> impl Iterator<Item = (&'static str, &'static str)> {
    PINS.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).filter_map(|l| {
        let mut words = l.split_whitespace();
        Some((words.next()?, words.next()?))
    })
}

/// The pinned version of `tool`.
pub fn version(tool: &str) -> Result<&'static str> {
    pins().find(|(name, _)| *name == tool).map(|(_, v)| v).ok_or_else(|| HarnessError::NoPin { tool: tool.to_string() })
}

/// The path of the installed binary `bin` of `tool` (usually `bin == tool`).
pub fn binary_of(tool: &str, bin: &str) -> Result<PathBuf> {
    binary_in(&root(), tool, bin)
}

fn binary_in(root: &std::path::Path, tool: &str, bin: &str) -> Result<PathBuf> {
    let version = version(tool)?;
    let path = root.join(format!("{tool}-{version}/bin/{bin}"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::ToolMissing { tool: tool.to_string(), version: version.to_string(), path })
    }
}

/// The path of the installed binary of `tool`.
pub fn binary(tool: &str) -> Result<PathBuf> {
    binary_of(tool, tool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_the_harness_starts_is_pinned() {
        for tool in [
            "minio",
            "fake-gcs-server",
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
            "helm",
            "csi-sanity",
            "azurite",
            "pjdfstest",
            "fsx",
            "cargo-fuzz",
        ] {
            assert!(version(tool).is_ok(), "{tool} is not pinned");
        }
        assert!(matches!(version("nope"), Err(HarnessError::NoPin { .. })));
    }

    #[test]
    fn a_missing_tool_names_the_install_command() {
        let empty = tempfile::tempdir().unwrap();
        let err = binary_in(empty.path(), "minio", "minio").unwrap_err();
        assert!(err.to_string().contains("run `e2e/tools/install minio`"), "{err}");
    }
}
