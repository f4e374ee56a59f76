//! In-memory connections: a client and a coordinator in one process, joined by a
//! [`tokio::io::duplex`] pair instead of a TCP socket.
//!
//! The bytes on the pair are exactly those of a TCP connection (a TLS handshake for
//! `wss://`, the HTTP upgrade request, then WebSocket frames), so everything above the
//! socket runs unchanged on both sides: the coordinator reads the request head, checks
//! the bearer token and admits the connection under its per-address limits as it does for
//! TCP, and then enforces the same frame sizes and timeouts.
//!
//! A [`Dialer`] opens such connections. Servers make them (the coordinator's
//! `CoordinatorHandle::dialer`); clients take one in [`crate::ConnectOptions::dialer`] and
//! ask it for a new stream at every connection attempt, so reconnection works as over
//! TCP. A dialer whose server has stopped, or whose backlog of connections not yet taken
//! is full, fails the attempt, as a refused TCP connect would.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

/// What a [`Dialer`] runs to open a connection: the client's end of a new stream, or why
/// there is none.
pub type DialFn = dyn Fn() -> io::Result<DuplexStream> + Send + Sync;

/// Opens in-memory connections to a server in this process, in place of TCP connects
/// (see the [module docs](self)). Cheap to clone; every clone dials the same server.
#[derive(Clone)]
pub struct Dialer {
    name: Arc<str>,
    dial: Arc<DialFn>,
}

impl Dialer {
    /// A dialer running `dial` for every connection; `name` says where it leads (for
    /// `Debug` and logs).
    pub fn new(name: impl Into<String>, dial: impl Fn() -> io::Result<DuplexStream> + Send + Sync + 'static) -> Self {
        Dialer { name: name.into().into(), dial: Arc::new(dial) }
    }

    /// Opens one connection: the client's end of it.
    pub fn dial(&self) -> io::Result<DuplexStream> {
        (self.dial)()
    }

    /// Where it leads, as given to [`Dialer::new`].
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Dialer").field(&self.name).finish()
    }
}

/// The byte stream under a client's WebSocket: a TCP connection, or an in-memory one
/// from a [`Dialer`].
#[derive(Debug)]
pub enum Io {
    /// A TCP connection (TLS, when there is any, sits above it).
    Tcp(TcpStream),
    /// An in-memory connection.
    Memory(DuplexStream),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Memory(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Memory(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnectError, ConnectOptions};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    /// A dialer whose server end answers one WebSocket with an echo, on this runtime.
    fn echo_dialer() -> Dialer {
        Dialer::new("echo", || {
            let (client, server) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(server).await.unwrap();
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        break;
                    }
                }
            });
            Ok(client)
        })
    }

    #[tokio::test]
    async fn a_dialer_carries_the_websocket_instead_of_tcp() {
        let options = ConnectOptions { dialer: Some(echo_dialer()), ..ConnectOptions::default() };
        // Port 9 (discard) on a host that would not answer: only the dialer is used.
        let mut ws = crate::connect("ws://127.0.0.1:9/", &options).await.unwrap();
        assert!(matches!(ws.get_ref(), tokio_tungstenite::MaybeTlsStream::Plain(Io::Memory(_))));
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    }

    #[tokio::test]
    async fn a_dialer_that_fails_is_a_connect_error() {
        let refused = Dialer::new("gone", || Err(io::Error::new(io::ErrorKind::ConnectionRefused, "stopped")));
        let options = ConnectOptions { dialer: Some(refused), ..ConnectOptions::default() };
        assert!(matches!(crate::connect("ws://127.0.0.1:9/", &options).await, Err(ConnectError::Io(_))));
        assert_eq!(format!("{:?}", echo_dialer()), "Dialer(\"echo\")");
    }
}
