//! What can go wrong while starting the test world.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{tool} {version} is not installed at {path}: run `e2e/tools/install {tool}`")]
    ToolMissing { tool: String, version: String, path: PathBuf },
    #[error("{tool} has no pin in e2e/tools/versions: add a line `{tool} VERSION`")]
    NoPin { tool: String },
    #[error("starting {service} ({program}): {source}")]
    Spawn { service: String, program: PathBuf, source: std::io::Error },
    #[error("{service} exited with {status} before it was ready; its log ({log}) ends:\n{tail}")]
    Exited { service: String, status: std::process::ExitStatus, log: PathBuf, tail: String },
    #[error("{service} was not ready after {timeout:?} ({last}); its log ({log}) ends:\n{tail}")]
    NotReady { service: String, timeout: Duration, last: String, log: PathBuf, tail: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {message}")]
    Setup { what: String, message: String },
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
        let what = what.into();
        move |source| HarnessError::Io { what, source }
    }

    pub(crate) fn setup(what: impl Into<String>, message: impl std::fmt::Display) -> HarnessError {
        HarnessError::Setup { what: what.into(), message: message.to_string() }
    }
}
