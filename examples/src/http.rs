//! A minimal HTTP/1.1 server side and client, enough for `POST /orders` with a JSON body
//! (one request per connection, `Connection: close`). A real service would use its web
//! framework; the tracing part — extract the caller's context from the request headers with the
//! global propagator, start a SERVER span — is the same there.

use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// The largest body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// A parsed request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target's path (without the query string).
    pub path: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    ///
    /// ```
    /// let r = mqtrace_examples::http::Request { headers: vec![("traceparent".into(), "00-..".into())], ..Default::default() };
    /// assert_eq!(r.header("TraceParent"), Some("00-.."));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Lets the global propagator read the trace context from the request headers.
impl opentelemetry::propagation::Extractor for Request {
    fn get(&self, key: &str) -> Option<&str> {
        self.header(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.iter().map(|(k, _)| k.as_str()).collect()
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one request, or `None` when the peer closed the connection before sending anything.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let raw = b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
/// let r = mqtrace_examples::http::read_request(&mut &raw[..]).await.unwrap().unwrap();
/// assert_eq!((r.method.as_str(), r.path.as_str(), r.body.as_slice()), ("POST", "/orders", &b"{}"[..]));
/// # }
/// ```
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<Request>> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("request head too large"));
        }
        let mut chunk = [0_u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(bad("connection closed inside the request head"))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("request head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if !m.is_empty() && v.starts_with("HTTP/") => (m, t, v),
        _ => return Err(bad("malformed request line")),
    };
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut request = Request {
        method: method.to_owned(),
        path: target.split('?').next().unwrap_or(target).to_owned(),
        version: version.to_owned(),
        headers,
        body: Vec::new(),
    };
    let length: usize = match request.header("content-length") {
        Some(v) => v.parse().map_err(|_| bad("bad Content-Length"))?,
        None => 0,
    };
    if length > MAX_BODY {
        return Err(bad("body too large"));
    }
    let mut body = buf.split_off(head_end + 4);
    if body.len() < length {
        let start = body.len();
        body.resize(length, 0);
        stream.read_exact(&mut body[start..]).await?;
    }
    body.truncate(length);
    request.body = body;
    Ok(Some(request))
}

/// The reason phrase of the status codes the examples use.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a response with a JSON body and closes the exchange (`Connection: close`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut out = Vec::new();
/// mqtrace_examples::http::write_response(&mut out, 202, r#"{"ok":true}"#).await.unwrap();
/// assert!(out.starts_with(b"HTTP/1.1 202 Accepted\r\n"));
/// # }
/// ```
pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    json_body: &str,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        json_body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(json_body.as_bytes()).await?;
    stream.flush().await
}

/// Sends one request to `addr` (`host:port`) and returns the status and body, within `timeout`.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// let (status, body) = mqtrace_examples::http::send(
///     "127.0.0.1:8080", "POST", "/orders", &[("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
///     br#"{"id":"o-1"}"#, std::time::Duration::from_secs(5),
/// ).await?;
/// println!("{status} {body}");
/// # Ok(()) }
/// ```
pub async fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("malformed response: {head:?}")))?;
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{addr}: no answer within {timeout:?}"),
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_split_across_reads_with_headers_is_parsed() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            let raw = b"POST /orders?x=1 HTTP/1.1\r\nTraceParent: 00-abc\r\nContent-Length: 11\r\n\r\n{\"id\":\"o1\"}";
            for chunk in raw.chunks(7) {
                client.write_all(chunk).await.expect("write");
            }
        });
        let r = read_request(&mut server)
            .await
            .expect("read")
            .expect("request");
        writer.await.expect("writer");
        assert_eq!(r.path, "/orders");
        assert_eq!(r.header("traceparent"), Some("00-abc"));
        assert_eq!(r.body, b"{\"id\":\"o1\"}");
    }

    #[tokio::test]
    async fn malformed_requests_are_errors_and_an_empty_connection_is_none() {
        assert!(read_request(&mut &b""[..]).await.expect("ok").is_none());
        assert!(read_request(&mut &b"nonsense\r\n\r\n"[..]).await.is_err());
        assert!(
            read_request(&mut &b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"[..])
                .await
                .is_err()
        );
    }
}
