//! A fault-injecting HTTP/1.1 proxy in front of an object store (MinIO, fake-gcs-server,
//! Azurite): it forwards each request byte for byte (signatures stay valid, the client signs the
//! proxy's address), counts requests by method and object at the store's door, and on command
//! answers 503 Slow Down or resets connections, so that a mount sees exactly what a failing cloud
//! store shows it: server errors, throttling and broken connections.
//!
//! Point a block-store spec's endpoint at [`StoreProxy::endpoint`] instead of the store's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::{HarnessError, Result};

/// What the proxy does with the requests that reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Forward to the store.
    None = 0,
    /// Answer `503 Slow Down` without asking the store (a throttling or failing store).
    Unavailable = 1,
    /// Reset the connection once the request's head is read (a broken network).
    Reset = 2,
}

/// One request as it reached the store's door.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// Forwarded to the store (not answered by a fault).
    pub forwarded: bool,
}

#[derive(Default)]
struct State {
    /// Send the store its own address as `Host` (for a store that reads the bucket from it and
    /// checks no signature over it: fake-gcs-server).
    upstream_host: bool,
    fault: AtomicU8,
    /// Requests still to fail with the fault before it turns back to [`Fault::None`] (0: no limit).
    remaining: AtomicU64,
    log: Mutex<Vec<Request>>,
}

pub struct StoreProxy {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StoreProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StoreProxy {
    /// A proxy on a free loopback port that forwards to `upstream` (`http://HOST:PORT[/PATH]`), each
    /// request byte for byte.
    pub async fn start(upstream: &str) -> Result<StoreProxy> {
        StoreProxy::start_with(upstream, false).await
    }

    /// [`StoreProxy::start`], but the `Host` header the store gets names the store itself: for
    /// fake-gcs-server, which reads a bucket from any other host name (an S3 store checks the
    /// host in the request's signature: there it must stay the proxy's).
    pub async fn start_rewriting_host(upstream: &str) -> Result<StoreProxy> {
        StoreProxy::start_with(upstream, true).await
    }

    async fn start_with(upstream: &str, upstream_host: bool) -> Result<StoreProxy> {
        // HOST:PORT only: an account URL's path (Azurite's `/devstoreaccount1`) stays in the spec.
        let target = upstream.trim_start_matches("http://").split('/').next().unwrap_or_default().to_string();
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(HarnessError::io("binding the store proxy's port"))?;
        let port = listener.local_addr().map_err(HarnessError::io("the store proxy's port"))?.port();
        let state = Arc::new(State { upstream_host, ..State::default() });
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, target.clone(), st.clone()));
            }
        });
        Ok(StoreProxy { endpoint: format!("http://127.0.0.1:{port}"), state, task })
    }

    /// Applies `fault` to every request from now on.
    pub fn set(&self, fault: Fault) {
        self.state.remaining.store(0, Ordering::SeqCst);
        self.state.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// Applies `fault` to the next `n` requests, then forwards again.
    pub fn next(&self, n: u64, fault: Fault) {
        self.state.remaining.store(n, Ordering::SeqCst);
        self.state.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// Every request seen so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.state.log.lock().clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.state.log.lock().clear();
    }

    /// How many requests of `method` reached the store (faulted ones not counted).
    pub fn forwarded(&self, method: &str) -> usize {
        self.state.log.lock().iter().filter(|r| r.forwarded && r.method == method).count()
    }
}

impl State {
    /// The fault for the next request (counting down a limited run).
    fn take(&self) -> Fault {
        let f = match self.fault.load(Ordering::SeqCst) {
            1 => Fault::Unavailable,
            2 => Fault::Reset,
            _ => return Fault::None,
        };
        let left = self.remaining.load(Ordering::SeqCst);
        if left > 0 {
            let was = self.remaining.fetch_sub(1, Ordering::SeqCst);
            if was == 1 {
                self.fault.store(Fault::None as u8, Ordering::SeqCst);
            } else if was == 0 {
                return Fault::None;
            }
        }
        f
    }
}

/// An HTTP/1.1 message head: its lines and how its body is framed.
struct Head {
    raw: Vec<u8>,
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The head's bytes with its `Host` header set to `host`.
    fn with_host(&self, host: &str) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.first);
        for (k, v) in &self.headers {
            let v = if k.eq_ignore_ascii_case("host") { host } else { v };
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    fn body(&self) -> Body {
        if self.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            Body::Chunked
        } else {
            Body::Length(self.header("content-length").and_then(|v| v.trim().parse().ok()).unwrap_or(0))
        }
    }
}

enum Body {
    Length(u64),
    Chunked,
}

/// Reads a message head; `None` at a clean end of the connection.
async fn read_head(r: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let n = r.read_until(b'\n', &mut raw).await?;
        if n == 0 {
            return match before {
                0 => Ok(None),
                _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
            };
        }
        if &raw[before..] == b"\r\n" || &raw[before..] == b"\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default().to_string();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Ok(Some(Head { raw, first, headers }))
}

/// Copies `n` bytes from `r` to `w` (to nowhere with `None`).
async fn copy_n<W: AsyncWrite + Unpin>(
    r: &mut (impl AsyncBufRead + Unpin),
    w: &mut Option<&mut W>,
    mut n: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    while n > 0 {
        let k = r.read(&mut buf[..n.min(64 << 10) as usize]).await?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(w) = w.as_mut() {
            w.write_all(&buf[..k]).await?;
        }
        n -= k as u64;
    }
    Ok(())
}

/// Copies a body framed as `body` from `r` to `w` (to nowhere with `None`).
async fn copy_body<W: AsyncWrite + Unpin>(
    r: &mut (impl AsyncBufRead + Unpin),
    mut w: Option<&mut W>,
    body: Body,
) -> std::io::Result<()> {
    match body {
        Body::Length(n) => copy_n(r, &mut w, n).await?,
        Body::Chunked => loop {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line).await?;
            if let Some(w) = w.as_mut() {
                w.write_all(&line).await?;
            }
            let size = String::from_utf8_lossy(&line);
            let size = u64::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            // The chunk and its CRLF; after the last (empty) chunk, trailers up to an empty line.
            if size > 0 {
                copy_n(r, &mut w, size + 2).await?;
                continue;
            }
            loop {
                let mut t = Vec::new();
                if r.read_until(b'\n', &mut t).await? == 0 {
                    break;
                }
                if let Some(w) = w.as_mut() {
                    w.write_all(&t).await?;
                }
                if t == b"\r\n" || t == b"\n" {
                    break;
                }
            }
            break;
        },
    }
    if let Some(w) = w {
        w.flush().await?;
    }
    Ok(())
}

/// Serves one client connection: request by request, each forwarded on a connection of its own
/// to the store (a store closes idle connections on its own schedule, Azurite after 5 s; a
/// kept connection would break the client's next request on it).
async fn serve(client: TcpStream, target: String, state: Arc<State>) {
    let _ = client.set_nodelay(true);
    let (cr, mut cw) = client.into_split();
    let mut cr = BufReader::new(cr);
    loop {
        let Ok(Some(head)) = read_head(&mut cr).await else { return };
        let mut parts = head.first.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().split('?').next().unwrap_or_default().to_string();
        let range = head.header("range").map(str::to_string);
        let fault = state.take();
        state.log.lock().push(Request { method: method.clone(), path, range, forwarded: fault == Fault::None });
        match fault {
            Fault::Reset => {
                // RST rather than FIN: what a broken connection looks like to the client.
                let client = cr.into_inner().reunite(cw).ok();
                if let Some(c) = client {
                    let _ = c.set_zero_linger();
                }
                return;
            }
            Fault::Unavailable => {
                if copy_body(&mut cr, None::<&mut tokio::net::tcp::OwnedWriteHalf>, head.body()).await.is_err() {
                    return;
                }
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                            <Message>injected by the test's store proxy</Message></Error>";
                let reply = format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if cw.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            Fault::None => {}
        }
        // A store that is down: the client's connection breaks as if it had been refused.
        let Ok(s) = TcpStream::connect(&target).await else { return };
        let _ = s.set_nodelay(true);
        let (r, mut uw) = s.into_split();
        let mut ur = BufReader::new(r);
        let raw = if state.upstream_host { head.with_host(&target) } else { head.raw.clone() };
        let (ur, uw) = (&mut ur, &mut uw);
        let forwarded = async {
            uw.write_all(&raw).await?;
            copy_body(&mut cr, Some(uw), head.body()).await?;
            // Interim (1xx) answers come before the real one.
            let reply = loop {
                let Some(reply) = read_head(ur).await? else {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                };
                cw.write_all(&reply.raw).await?;
                if !reply.first.split_whitespace().nth(1).is_some_and(|s| s.starts_with('1')) {
                    break reply;
                }
            };
            let status = reply.first.split_whitespace().nth(1).unwrap_or_default().to_string();
            let bodyless = method == "HEAD" || status == "204" || status == "304";
            if !bodyless {
                copy_body(ur, Some(&mut cw), reply.body()).await?;
            }
            cw.flush().await?;
            Ok::<_, std::io::Error>(reply.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")))
        };
        match forwarded.await {
            Ok(false) => {}
            _ => return,
        }
    }
}

/// A loopback TCP proxy in front of the metadata server that, when armed, lets a request through
/// to the server and then breaks the connection instead of passing the reply back: the server
/// applied the request, the client never heard. Bytes are not parsed (the stream is TLS): an
/// exchange is bytes from the client followed by bytes from the server; [`CuttingProxy::cut_reply`]
/// lets `skip` exchanges pass and breaks the next.
pub struct CuttingProxy {
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// Exchanges still to let pass before the cut, plus one; 0: not armed.
    armed: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CuttingProxy {
    pub async fn start(upstream: &str) -> Result<CuttingProxy> {
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(HarnessError::io("binding the cutting proxy's port"))?;
        let port = listener.local_addr().map_err(HarnessError::io("the cutting proxy's port"))?.port();
        let armed = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU64::new(0));
        let (a, c, target) = (armed.clone(), cuts.clone(), upstream.to_string());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (a, c, target) = (a.clone(), c.clone(), target.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else { return };
                    pump(client, server, a, c).await;
                });
            }
        });
        Ok(CuttingProxy { addr: format!("127.0.0.1:{port}"), armed, cuts, task })
    }

    /// Lets `skip` exchanges pass, then breaks the connection that carries the next request
    /// once its reply comes (the kernel looks a name up before it creates it exclusively or
    /// renames onto it: `skip` 1 lets that lookup pass).
    pub fn cut_reply(&self, skip: u64) {
        self.armed.store(skip + 1, Ordering::SeqCst);
    }

    /// Connections broken so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }
}

async fn pump(client: TcpStream, server: TcpStream, armed: Arc<AtomicU64>, cuts: Arc<AtomicU64>) {
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set when this connection carried bytes from the client while armed.
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up = {
        let (armed, asked) = (armed.clone(), asked.clone());
        async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = cr.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                if armed.load(Ordering::SeqCst) > 0 {
                    asked.store(true, Ordering::SeqCst);
                }
                if sw.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = sr.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            if asked.swap(false, Ordering::SeqCst) {
                // One exchange more: the last one armed is cut.
                let was = armed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).unwrap_or(0);
                if was == 1 {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever side ends first ends the connection (both halves dropped).
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
