//! Socket settings for connections that carry both ticks and bulk.

use tokio::net::TcpStream;

/// Bytes a connection's socket may hold that are not yet sent ([`limit_unsent`]): 16 KiB,
/// about 2.6 ms at 100 Mbit/s, and what HTTP/2 servers commonly use for the same reason.
pub const UNSENT_BYTES: u32 = 16 * 1024;

/// Limits the bytes `stream`'s socket holds that are not yet sent (Linux
/// `TCP_NOTSENT_LOWAT`): the socket reads as writable only below `bytes`, so what waits
/// to be sent stays in the application's own queue, where the next frame can be chosen
/// (a small frame before a large one's next chunk, see `p2c2r_protocol::chunk`), instead
/// of in a kernel buffer that can grow to megabytes ahead of the network. Bytes already
/// sent and not yet acknowledged are not limited, so throughput is unchanged. Elsewhere
/// than Linux it does nothing.
pub fn limit_unsent(stream: &TcpStream, bytes: u32) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return socket2::SockRef::from(stream).set_tcp_notsent_lowat(bytes);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (stream, bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_limit_is_set_on_linux() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        limit_unsent(&stream, UNSENT_BYTES).unwrap();
        #[cfg(target_os = "linux")]
        assert_eq!(socket2::SockRef::from(&stream).tcp_notsent_lowat().unwrap(), UNSENT_BYTES);
    }
}
