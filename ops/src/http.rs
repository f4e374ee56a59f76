//! Just enough HTTP/1.1 for operator endpoints, with every read bounded: a request head
//! is read within a byte limit and a time limit and parsed by `httparse`; a response is
//! one status line, a few headers and a body, after which the connection closes
//! (`Connection: close`: scrapers and browsers reconnect, and nothing is held between
//! requests).
//!
//! [`Rewind`] hands the bytes read while looking at a head back to whoever takes the
//! connection over (the coordinator's WebSocket handshake reads the same request again).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Most headers a request may carry (browsers send about 15).
pub const MAX_HEADERS: usize = 64;

/// How much of a request head may be read, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Bytes up to and including the blank line that ends the head.
    pub max_bytes: usize,
    /// Time to receive the whole head, counted from the connection's first read.
    pub timeout: Duration,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits { max_bytes: 16 * 1024, timeout: Duration::from_secs(5) }
    }
}

/// A request head: what the endpoints route on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// What follows `?`, if anything.
    pub query: Option<String>,
    /// Header names (lower-cased) and values (lossily decoded), in order.
    pub headers: Vec<(String, String)>,
    /// Bytes of the head as the parser measured it, the blank line included (what follows
    /// is the body, or a WebSocket's first frame).
    pub head_len: usize,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether this asks for a WebSocket (`Upgrade: websocket`, any path).
    pub fn is_websocket_upgrade(&self) -> bool {
        self.header("upgrade").is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")))
    }

    /// The value of query parameter `name`, undecoded.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The head passed [`HeadLimits::max_bytes`] (or [`MAX_HEADERS`]) without ending.
    #[error("request head too large")]
    TooLarge,
    /// The head did not arrive within [`HeadLimits::timeout`].
    #[error("request head not received in time")]
    Timeout,
    /// The bytes are not an HTTP/1.x request head.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The client closed the connection before finishing the head.
    #[error("connection closed before the request head ended")]
    Closed,
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

impl HeadError {
    /// The response this deserves, if the client is still there to read one.
    pub fn status(&self) -> Option<u16> {
        match self {
            HeadError::TooLarge => Some(431),
            HeadError::Timeout => Some(408),
            HeadError::Malformed(_) => Some(400),
            HeadError::Closed | HeadError::Io(_) => None,
        }
    }
}

/// Reads one request head from `stream`. Returns it with every byte read so far (the
/// head and anything the client sent after it), for [`Rewind`].
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    limits: HeadLimits,
) -> Result<(Request, Vec<u8>), HeadError> {
    match tokio::time::timeout(limits.timeout, read_head_unbounded_in_time(stream, limits.max_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(HeadError::Timeout),
    }
}

async fn read_head_unbounded_in_time<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_bytes: usize,
) -> Result<(Request, Vec<u8>), HeadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    // Where the search for a blank line resumes: the head is parsed only once a blank line
    // may have arrived, so a head sent a byte at a time costs linear time, not quadratic.
    let mut scanned: usize = 0;
    loop {
        // Never read past the limit: a flood costs at most `max_bytes`.
        let room = (max_bytes + 1).saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return Err(HeadError::TooLarge);
        }
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        // The first read is always parsed, so bytes that are not HTTP at all are refused at
        // once.
        let first_read = scanned == 0;
        let from = scanned.saturating_sub(2);
        scanned = buf.len();
        let blank_line = buf[from..].windows(2).any(|w| w == b"\n\n") || buf[from..].windows(3).any(|w| w == b"\n\r\n");
        if !blank_line && !first_read {
            if buf.len() > max_bytes {
                return Err(HeadError::TooLarge);
            }
            continue;
        }
        if let Some(request) = parse(&buf, max_bytes)? {
            return Ok((request, buf));
        }
    }
}

/// Parses a complete head from the start of `buf`; `None` while it is incomplete.
fn parse(buf: &[u8], max_bytes: usize) -> Result<Option<Request>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max_bytes => {
            let target = req.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (target.to_owned(), None),
            };
            Ok(Some(Request {
                method: req.method.unwrap_or_default().to_owned(),
                path,
                query,
                headers: req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect(),
                head_len: len,
            }))
        }
        Ok(httparse::Status::Complete(_)) => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// A stream whose first reads return `prefix` (bytes already read from `inner`), then
/// read `inner`. Writes go to `inner`.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// Replays `prefix` before reading `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Rewind { prefix, at: 0, inner }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                // Replayed in full: give the memory back.
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A complete response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers besides `Content-Length`, `Connection` and the security defaults.
    pub headers: Vec<(&'static str, String)>,
    /// The body (not sent for `HEAD`).
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body of the given content type.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, headers: vec![("Content-Type", content_type.to_owned())], body: body.into() }
    }

    /// A plain-text response saying what went wrong (or `200 OK`'s text).
    pub fn text(status: u16, message: impl Into<String>) -> Self {
        let mut body = message.into();
        body.push('\n');
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    /// The canonical response for `status`: its reason phrase as the body.
    pub fn status(status: u16) -> Self {
        Response::text(status, format!("{status} {}", reason(status)))
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire; without the body for a `HEAD` request.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).into_bytes();
        for (name, value) in self.headers.iter().map(|(n, v)| (*n, v.as_str())).chain(SECURITY_HEADERS.iter().copied())
        {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("Content-Length: {}\r\nConnection: close\r\n\r\n", self.body.len()).as_bytes());
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Sent with every response: the endpoints serve their own content only, and never in a
/// frame of someone else's page.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
    // A token may travel in the URL (`?token=`): never pass it on.
    ("Referrer-Policy", "no-referrer"),
];

/// The status line and headers of a response whose body is streamed after it (no
/// `Content-Length`; the connection's end ends the body), such as server-sent events.
pub fn streaming_head(status: u16, content_type: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n", reason(status)).into_bytes();
    for (name, value) in SECURITY_HEADERS {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// Writes `bytes` and flushes, failing if that takes longer than `timeout` (a client
/// that does not read).
pub async fn write_all_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    timeout: Duration,
) -> io::Result<()> {
    match tokio::time::timeout(timeout, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "client did not read the response in time")),
    }
}

/// Writes `response` (see [`write_all_within`]) and shuts the write side down.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
    head_only: bool,
    timeout: Duration,
) -> io::Result<()> {
    write_all_within(stream, &response.to_bytes(head_only), timeout).await?;
    let _ = tokio::time::timeout(timeout, stream.shutdown()).await;
    Ok(())
}

/// The reason phrase of the status codes the endpoints use.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits { max_bytes: 256, timeout: Duration::from_secs(5) };

    #[tokio::test]
    async fn a_head_is_parsed_and_every_byte_read_is_kept() {
        let wire = b"GET /metrics?x=1&token=abc HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\n\r\nEXTRA";
        let mut stream = &wire[..];
        let (request, read) = read_head(&mut stream, LIMITS).await.unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/metrics");
        assert_eq!(request.query_param("token"), Some("abc"));
        assert_eq!(request.query_param("y"), None);
        assert_eq!(request.header("HOST"), Some("a"));
        assert!(request.is_websocket_upgrade());
        assert_eq!(read, wire.to_vec());
    }

    #[tokio::test]
    async fn rewind_replays_what_was_read_then_reads_on() {
        let wire = b"GET / HTTP/1.1\r\n\r\nrest";
        let mut stream = &wire[..];
        let (_, read) = read_head(&mut stream, LIMITS).await.unwrap();
        let mut rewound = Rewind::new(read, &b"+more"[..]);
        let mut all = Vec::new();
        rewound.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\nrest+more");
    }

    #[tokio::test]
    async fn oversized_malformed_and_cut_heads_are_refused_with_the_right_status() {
        let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(1000));
        let mut stream = huge.as_bytes();
        let err = read_head(&mut stream, LIMITS).await.unwrap_err();
        assert_eq!(err.status(), Some(431), "{err}");

        // A TLS hello sent to the plain port.
        let mut stream = &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..];
        assert_eq!(read_head(&mut stream, LIMITS).await.unwrap_err().status(), Some(400));
        let endless = vec![b'a'; 10_000];
        let mut stream = &endless[..];
        assert_eq!(read_head(&mut stream, LIMITS).await.unwrap_err().status(), Some(431));

        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS + 1));
        let limits = HeadLimits { max_bytes: 64 * 1024, ..LIMITS };
        assert_eq!(read_head(&mut many.as_bytes(), limits).await.unwrap_err().status(), Some(431));

        let mut cut = &b"GET / HTTP/1.1\r\nHost:"[..];
        let err = read_head(&mut cut, LIMITS).await.unwrap_err();
        assert!(matches!(err, HeadError::Closed) && err.status().is_none());
    }

    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_is_read() {
        let head = format!("GET /x HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(8000));
        let (mut client, mut server) = tokio::io::duplex(16);
        let writer = tokio::spawn(async move {
            for b in head.into_bytes() {
                client.write_all(&[b]).await.unwrap();
            }
            client
        });
        let limits = HeadLimits { max_bytes: 16 * 1024, timeout: Duration::from_secs(30) };
        let (request, read) = read_head(&mut server, limits).await.unwrap();
        assert_eq!(request.path, "/x");
        assert_eq!(request.head_len, read.len());
        drop(writer.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_times_out() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HT").await.unwrap();
        let err = read_head(&mut server, LIMITS).await.unwrap_err();
        assert_eq!(err.status(), Some(408));
    }

    #[test]
    fn a_response_has_its_length_and_closes() {
        let text = String::from_utf8(Response::text(404, "no such page").to_bytes(false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 13\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Referrer-Policy: no-referrer\r\n"));
        assert!(text.ends_with("\r\n\r\nno such page\n"));
        let head = String::from_utf8(Response::status(200).to_bytes(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 7\r\n"));
    }
}
