//! A small process that serves a stratusfs mount through the library's face (`fs_core::Mount`),
//! as the CSI node plugin will, and hands it live to a successor process over a Unix socket.
//!
//! mountd serve SOURCE MOUNTPOINT TOKEN_FILE FINGERPRINT SOCKET [OPTIONS]
//!     mounts, prints `mounted`, and listens on SOCKET. A connection that sends `quiesce` gets
//!     `quiesced N` (N: lock waits that travel on) once the mount is quiesced: the process then
//!     stays frozen at that point, reading nothing from the kernel. A connection that sends
//!     `handover` gets the handover (the value and the FUSE fds, SCM_RIGHTS), quiescing first if
//!     needed; the process then exits 0. `resume` serves again after a quiesce. SIGTERM unmounts.
//! mountd adopt SOCKET [refuse]
//!     prints `ready` and waits for a line on stdin; then connects to SOCKET, sends `handover`,
//!     adopts what arrives, prints `adopted`, and serves until SIGTERM (then unmounts). With
//!     `refuse` it takes the value, refuses it, prints `refused` and exits: the predecessor goes
//!     on serving (its `handover` falls back to serving when the successor refuses).

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use fs_core::{ClientTrust, Credentials, Handover, Mount, MountOptions, MountSpec, Quiesced};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn terminated() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    term.recv().await;
}

/// A mount that serves, or one frozen at the quiesce point.
enum State {
    Serving(Mount),
    Quiesced(Quiesced),
}

async fn serve(args: &[String]) -> anyhow::Result<()> {
    let [source, mountpoint, token_file, fingerprint, socket, rest @ ..] = args else {
        bail!("usage: mountd serve SOURCE MOUNTPOINT TOKEN_FILE FINGERPRINT SOCKET [OPTIONS]")
    };
    let token = std::fs::read_to_string(token_file).with_context(|| format!("reading {token_file}"))?;
    let spec = MountSpec {
        source: source.parse()?,
        mountpoint: mountpoint.into(),
        options: MountOptions::parse(rest)?,
        credentials: Credentials {
            token: token.trim().into(),
            trust: ClientTrust { ca_file: None, fingerprint: Some(fingerprint.clone()), ..Default::default() },
        },
    };
    fs_core::mount::keep_freed_buffers();
    let mut state = State::Serving(Mount::start(spec).await?);
    let listener = tokio::net::UnixListener::bind(socket).with_context(|| format!("listening on {socket}"))?;
    say("mounted");
    loop {
        let (conn, _) = tokio::select! {
            _ = terminated() => break,
            c = listener.accept() => c?,
        };
        let mut conn = BufReader::new(conn);
        let mut line = String::new();
        conn.read_line(&mut line).await?;
        state = match (line.trim(), state) {
            ("quiesce", State::Serving(m)) => {
                let q = m.quiesce(Duration::from_secs(30)).await.map_err(|(_, e)| e)?;
                conn.get_mut().write_all(format!("quiesced {}\n", q.pending_lock_waits()).as_bytes()).await?;
                State::Quiesced(q)
            }
            ("resume", State::Quiesced(q)) => {
                conn.get_mut().write_all(b"resumed\n").await?;
                State::Serving(q.resume())
            }
            ("handover", s) => {
                let q = match s {
                    State::Quiesced(q) => q,
                    State::Serving(m) => m.quiesce(Duration::from_secs(30)).await.map_err(|(_, e)| e)?,
                };
                let std = conn.into_inner().into_std()?;
                std.set_nonblocking(false)?;
                match tokio::task::block_in_place(|| q.send_to(&std, Duration::from_secs(60))) {
                    Ok(()) => {
                        say("handed over");
                        return Ok(());
                    }
                    Err((m, e)) => {
                        eprintln!("mountd: {e}");
                        State::Serving(m)
                    }
                }
            }
            (other, s) => {
                conn.get_mut().write_all(format!("unknown or out of turn: {other}\n").as_bytes()).await?;
                s
            }
        };
    }
    match state {
        State::Serving(m) => m.unmount().await?,
        State::Quiesced(q) => q.resume().unmount().await?,
    }
    Ok(())
}

async fn adopt(args: &[String]) -> anyhow::Result<()> {
    let (socket, refuse) = match args {
        [socket] => (socket, false),
        [socket, r] if r == "refuse" => (socket, true),
        _ => bail!("usage: mountd adopt SOCKET [refuse]"),
    };
    // Started early (a process started while the mount is frozen would hang in exec, closing
    // the files on the mount it inherited), it waits for the word.
    say("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let std = std::os::unix::net::UnixStream::connect(socket).with_context(|| format!("connecting to {socket}"))?;
    (&std).write_all(b"handover\n")?;
    if refuse {
        // A successor that takes the value and declines it (as one that cannot read its version
        // would): the predecessor must go on serving.
        drop(Handover::receive(&std)?);
        (&std).write_all(b"refused by request\n")?;
        say("refused");
        return Ok(());
    }
    fs_core::mount::keep_freed_buffers();
    let m = Mount::adopt_from(&std).await?;
    say("adopted");
    m.serve_until(terminated()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fs_core::tls::install_crypto_provider();
    // Logs to stderr: stdout carries the lines the test reads.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]).await,
        Some("adopt") => adopt(&args[1..]).await,
        _ => Err(anyhow::anyhow!("usage: mountd serve ... | mountd adopt SOCKET")),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mountd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
