//! The `stratusfs` command: every role of stratusfs as a subcommand.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fs_core::tls::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match fs_core::cli::run(fs_core::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratusfs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
