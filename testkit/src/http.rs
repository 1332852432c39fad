//! A minimal HTTP/1.1 client (`Connection: close`) for admin endpoints: the server's `/metrics`,
//! `/rules`, `/readyz`, Envoy's admin API, and the parser the gateway clients read responses with.
//! Every call is bounded by [`IO_TIMEOUT`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Bound for one request, connect to last byte.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What an HTTPS client saw.
#[derive(Debug, Clone)]
pub struct HttpOutcome {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The client's local address: Envoy logs it as %DOWNSTREAM_REMOTE_ADDRESS%.
    pub local_addr: SocketAddr,
}

impl HttpOutcome {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a raw HTTP/1.1 response read from a connection whose local end was `local_addr`.
pub fn parse_response(raw: &[u8], local_addr: SocketAddr) -> Result<HttpOutcome, String> {
    let end = find(raw, b"\r\n\r\n")
        .ok_or_else(|| format!("no response head in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let body = String::from_utf8_lossy(&raw[end + 4..]).into_owned();
    Ok(HttpOutcome {
        status,
        headers,
        body,
        local_addr,
    })
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Plain-HTTP GET against an admin endpoint (Envoy admin, egress-authz admin). Returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let r = exchange(addr, "GET", path, "").await?;
    let body = if r
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(&r.body)
    } else {
        r.body
    };
    Ok((r.status, body))
}

/// Plain-HTTP POST with an empty body (Envoy admin mutations).
pub async fn http_post(addr: SocketAddr, path: &str) -> Result<u16, String> {
    Ok(exchange(addr, "POST", path, "content-length: 0\r\n")
        .await?
        .status)
}

/// One request on a fresh connection (`Connection: close`, so the response ends with the stream).
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &str,
) -> Result<HttpOutcome, String> {
    timeout(IO_TIMEOUT, async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{extra_headers}connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
        let local = s.local_addr().map_err(|e| e.to_string())?;
        parse_response(&raw, local)
    })
    .await
    .map_err(|_| format!("{method} {addr}{path} timed out"))?
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size_line.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}
