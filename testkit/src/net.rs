//! Network pieces of the e2e harness: loopback stand-ins for the external hosts, the mTLS clients that
//! play the mesh workloads (rustls, and `openssl s_client` for server names rustls will not send). All I/O
//! is bounded by timeouts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::http::{HttpOutcome, IO_TIMEOUT, find, parse_response};

/// One request as seen by an HTTP stand-in.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub host: String,
    pub xfcc: Option<String>,
    pub test_id: Option<String>,
}

/// A stand-in for an external host (developers.google.com, developer.yahoo.com). HTTP flavour: plain
/// HTTP/1.1 behind the gateway (the gateway would originate TLS to the real host), answering `200` with
/// its own name. TCP flavour: reads the first bytes of the opaque stream and answers `<name>\n`.
#[derive(Debug)]
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// HTTP requests received, or TCP connections that delivered at least one byte.
    pub hits: Arc<AtomicUsize>,
    /// TCP connections accepted (Envoy's tcp_proxy connects before the ext_authz decision).
    pub accepted: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn seen_with_id(&self, id: &str) -> Vec<SeenRequest> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.test_id.as_deref() == Some(id))
            .cloned()
            .collect()
    }

    /// The HTTP flavour: answers every request `200` with its name.
    pub async fn http(name: &'static str) -> Self {
        Self::serve(name, |sock, name, hits, seen| async move {
            let _ = serve_http_conn(sock, name, hits, seen).await;
        })
        .await
    }

    /// The TCP flavour: answers the first bytes of a stream with its name.
    pub async fn tcp(name: &'static str) -> Self {
        Self::serve(name, |mut sock, name, hits, _seen| async move {
            let mut buf = [0u8; 1024];
            // Envoy may keep an idle upstream connection open for a denied client; bound it.
            let Ok(Ok(n)) = timeout(Duration::from_secs(30), sock.read(&mut buf)).await else {
                return;
            };
            if n == 0 {
                return;
            }
            hits.fetch_add(1, Ordering::SeqCst);
            let _ = sock.write_all(format!("{name}\n").as_bytes()).await;
            let _ = timeout(Duration::from_secs(30), sock.read(&mut buf)).await;
        })
        .await
    }

    /// Listens on an ephemeral loopback port and runs `conn` for every accepted connection.
    async fn serve<F, Fut>(name: &'static str, conn: F) -> Self
    where
        F: Fn(TcpStream, &'static str, Arc<AtomicUsize>, Arc<Mutex<Vec<SeenRequest>>>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, a, s) = (hits.clone(), accepted.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(conn(sock, name, h.clone(), s.clone()));
            }
        });
        Self {
            name,
            addr,
            hits,
            accepted,
            seen,
            task,
        }
    }
}

async fn serve_http_conn(
    mut sock: TcpStream,
    name: &'static str,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // read one request head
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let Ok(Ok(n)) = timeout(Duration::from_secs(30), sock.read(&mut chunk)).await else {
                return Ok(());
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_owned();
        let path = first.next().unwrap_or_default().to_owned();
        let mut host = String::new();
        let mut xfcc = None;
        let mut test_id = None;
        let mut content_length = 0usize;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim().to_owned();
                match k.trim().to_ascii_lowercase().as_str() {
                    "host" => host = v,
                    "x-forwarded-client-cert" => xfcc = Some(v),
                    "x-e2e-id" => test_id = Some(v),
                    "content-length" => content_length = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        // discard a body, if any
        while buf.len() < content_length {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..content_length);
        hits.fetch_add(1, Ordering::SeqCst);
        seen.lock().expect("lock").push(SeenRequest {
            method: method.clone(),
            path,
            host,
            xfcc,
            test_id,
        });
        let body = format!("{name}\n");
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-upstream: {name}\r\n\r\n",
            body.len()
        );
        if method != "HEAD" {
            resp.push_str(&body);
        }
        sock.write_all(resp.as_bytes()).await?;
    }
}

/// What one HTTPS request through a gateway sends: the TLS SNI, then `method path` with `Host: host` and
/// an `x-test-id` header that finds the request again in the upstream's and Envoy's logs.
#[derive(Clone, Copy, Debug)]
pub struct HttpsRequest<'a> {
    pub sni: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub test_id: &'a str,
}

impl<'a> HttpsRequest<'a> {
    /// `GET /` with `Host: host` and SNI `host`, the way `curl https://<host>/` asks.
    pub fn get(host: &'a str, test_id: &'a str) -> Self {
        Self {
            sni: host,
            host,
            method: "GET",
            path: "/",
            test_id,
        }
    }
}

/// One HTTP/1.1 request through the gateway's mTLS HTTPS listener, as a sidecar would send it: TLS with
/// the workload certificate, then the request.
pub async fn https_request(
    gateway: SocketAddr,
    cfg: Arc<ClientConfig>,
    request: HttpsRequest<'_>,
) -> Result<HttpOutcome, String> {
    let HttpsRequest {
        sni,
        host,
        method,
        path,
        test_id,
    } = request;
    timeout(IO_TIMEOUT, async {
        let tcp = TcpStream::connect(gateway).await.map_err(|e| format!("connect: {e}"))?;
        let local_addr = tcp.local_addr().map_err(|e| e.to_string())?;
        let name = ServerName::try_from(sni.to_owned()).map_err(|e| format!("sni: {e}"))?;
        let mut tls =
            TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| format!("tls handshake: {e}"))?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: curl/8.5.0\r\naccept: */*\r\nx-e2e-id: {test_id}\r\nconnection: close\r\n\r\n"
        );
        tls.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        // Envoy may close without close_notify: keep what was read.
        let mut chunk = [0u8; 8192];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        parse_response(&raw, local_addr)
    })
    .await
    .map_err(|_| "timed out".to_owned())?
}

/// What a client of the opaque TLS-in-mTLS path saw after sending its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpOutcome {
    /// The upstream answered (its name).
    Flowed(String),
    /// Envoy closed the connection (or reset it / sent an alert) before any upstream byte arrived.
    Closed(String),
}

#[derive(Debug, Clone)]
pub struct TcpResult {
    pub outcome: TcpOutcome,
    pub local_addr: SocketAddr,
}

/// Opens an mTLS connection to the gateway's TLS listener with `sni` = the external host, sends a few
/// bytes (standing in for the app's inner ClientHello) and reads the answer or observes the close.
pub async fn tls_stream(
    gateway: SocketAddr,
    cfg: Arc<ClientConfig>,
    sni: &str,
) -> Result<TcpResult, String> {
    timeout(IO_TIMEOUT, async {
        let tcp = TcpStream::connect(gateway)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let local_addr = tcp.local_addr().map_err(|e| e.to_string())?;
        let name = ServerName::try_from(sni.to_owned()).map_err(|e| format!("sni: {e}"))?;
        let mut tls = match TlsConnector::from(cfg).connect(name, tcp).await {
            Ok(t) => t,
            Err(e) => {
                return Ok(TcpResult {
                    outcome: TcpOutcome::Closed(format!("handshake: {e}")),
                    local_addr,
                });
            }
        };
        if let Err(e) = tls.write_all(b"opaque-inner-clienthello\n").await {
            return Ok(TcpResult {
                outcome: TcpOutcome::Closed(format!("write: {e}")),
                local_addr,
            });
        }
        let _ = tls.flush().await;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.ends_with(b"\n") {
                        break;
                    }
                }
                Err(e) => {
                    if buf.is_empty() {
                        return Ok(TcpResult {
                            outcome: TcpOutcome::Closed(format!("read: {e}")),
                            local_addr,
                        });
                    }
                    break;
                }
            }
        }
        let outcome = if buf.is_empty() {
            TcpOutcome::Closed("eof".to_owned())
        } else {
            TcpOutcome::Flowed(String::from_utf8_lossy(&buf).trim().to_owned())
        };
        Ok(TcpResult {
            outcome,
            local_addr,
        })
    })
    .await
    .map_err(|_| "timed out".to_owned())?
}

/// The `openssl` command line tool: `OPENSSL_BIN`, else `openssl` on PATH.
pub fn find_openssl() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OPENSSL_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "OPENSSL_BIN={} does not exist", p.display());
        return Some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("openssl"))
        .find(|c| c.is_file())
}

/// A mesh workload's client that can put any bytes in the SNI: `openssl s_client` with the workload's
/// certificate, verifying the gateway as [`crate::pki::GATEWAY_DNS`] like the rustls clients do. rustls
/// only sends DNS names, and a name that is not one is exactly what these clients are for.
#[derive(Debug, Clone)]
pub struct RawSniClient {
    pub openssl: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// What a [`RawSniClient`] saw.
#[derive(Debug, Clone)]
pub struct RawTlsOutcome {
    /// Everything the gateway sent inside the TLS session: the upstream's answer, Envoy's HTTP
    /// response, or nothing.
    pub received: Vec<u8>,
    /// The gateway ended the session (s_client saw the close and exited), as opposed to the client
    /// stopping once the expected answer had arrived.
    pub closed_by_gateway: bool,
    /// The client's source address; Envoy logs it as the downstream address.
    pub source_ip: IpAddr,
    /// s_client's own output (handshake, verification, errors), for failure messages.
    pub diagnostics: String,
}

impl RawTlsOutcome {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

impl RawSniClient {
    /// Connects to `gateway` with `sni` as the ClientHello's server name, sends `send` once the session
    /// is up, and reads until the gateway closes or `done` accepts what arrived (a stream the upstream
    /// keeps open). Each call binds a source address of 127.1.0.0/16 of its own, so the gateway's access
    /// log tells this connection apart from every other one (the source port is s_client's choice).
    pub async fn exchange(
        &self,
        gateway: SocketAddr,
        sni: &[u8],
        send: &[u8],
        done: fn(&[u8]) -> bool,
    ) -> Result<RawTlsOutcome, String> {
        use std::os::unix::ffi::OsStrExt;
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::SeqCst) % (250 * 250);
        let source_ip = IpAddr::V4(Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8));
        // An argument cannot carry a NUL byte, and BoringSSL refuses such a name anyway.
        assert!(!sni.contains(&0), "SNI with a NUL byte");
        let mut child = Command::new(&self.openssl)
            .arg("s_client")
            .arg("-connect")
            .arg(gateway.to_string())
            .arg("-bind")
            .arg(format!("{source_ip}:0"))
            .arg("-servername")
            .arg(std::ffi::OsStr::from_bytes(sni))
            .arg("-cert")
            .arg(&self.cert)
            .arg("-key")
            .arg(&self.key)
            .arg("-CAfile")
            .arg(&self.ca)
            .args([
                "-verify_return_error",
                "-verify_hostname",
                crate::pki::GATEWAY_DNS,
            ])
            // -quiet: only the session's bytes on stdout, and end of input does not end the session
            // (the answer is read until the gateway closes).
            .arg("-quiet")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.openssl.display()))?;
        let mut stdin = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let errors = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = timeout(IO_TIMEOUT, stderr.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        });
        let read = timeout(IO_TIMEOUT, async {
            // s_client reads its input once the handshake is done; a failed handshake closes the pipe.
            let _ = stdin.write_all(send).await;
            drop(stdin);
            let mut received = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match stdout.read(&mut chunk).await {
                    Ok(0) | Err(_) => return (received, true),
                    Ok(n) => {
                        received.extend_from_slice(&chunk[..n]);
                        if done(&received) {
                            return (received, false);
                        }
                    }
                }
            }
        })
        .await;
        let _ = child.start_kill();
        let _ = timeout(IO_TIMEOUT, child.wait()).await;
        let diagnostics = errors.await.unwrap_or_default();
        let (received, closed_by_gateway) =
            read.map_err(|_| format!("s_client timed out; it said:\n{diagnostics}"))?;
        Ok(RawTlsOutcome {
            received,
            closed_by_gateway,
            source_ip,
            diagnostics,
        })
    }
}
