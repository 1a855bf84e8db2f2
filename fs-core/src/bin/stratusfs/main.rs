//! The `stratusfs` command: every role of stratusfs as a subcommand (also mount.stratusfs). It
//! holds no logic of its own: flags, logging, and calls of the `fs_core` library's face.

mod cli;
mod daemon;
mod up;

use clap::Parser;
use cli::{Cli, detach_to, helper_args, run};
use daemon::{Forked, daemonize};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(helper_args(std::env::args_os().collect()));
    // A detached mount forks now, before any thread exists.
    let ready = match detach_to(&cli) {
        Some(log) => match daemonize(&log) {
            Ok(Forked::Parent(code)) => return code,
            Ok(Forked::Child(ready)) => Some(ready),
            Err(e) => {
                eprintln!("stratusfs: detaching the mount (log {}): {e}", log.display());
                return std::process::ExitCode::FAILURE;
            }
        },
        None => None,
    };
    fs_core::tls::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // object_store logs each retry of a failing store; the mount's own line says
                // what failed once the retries are over.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,object_store=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stratusfs: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli, ready)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratusfs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
