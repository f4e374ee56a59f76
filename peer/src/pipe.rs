//! Frames on the pipes between a peer and its worker processes: a little-endian `u32`
//! length, then that many bytes, at most [`MAX_WORKER_FRAME`]. The one place that writes
//! and reads the prefix and checks the bound, on the worker's blocking side and the
//! peer's async side alike.

use std::io::{Error, ErrorKind, Read, Write};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame between a peer and its workers: twice the largest assignment a peer
/// accepts by default. A longer length prefix is garbage and ends the exchange.
pub const MAX_WORKER_FRAME: usize = 64 * 1024 * 1024;

fn prefix(body: &[u8]) -> std::io::Result<[u8; 4]> {
    if body.len() > MAX_WORKER_FRAME {
        return Err(too_long(body.len()));
    }
    Ok((body.len() as u32).to_le_bytes())
}

fn too_long(len: usize) -> Error {
    Error::new(ErrorKind::InvalidData, format!("a frame of {len} bytes; at most {MAX_WORKER_FRAME}"))
}

fn length(prefix: [u8; 4]) -> std::io::Result<usize> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_WORKER_FRAME { Err(too_long(len)) } else { Ok(len) }
}

/// Writes one frame and flushes (the worker's side).
pub(crate) fn write_sync(output: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    output.write_all(&prefix(body)?)?;
    output.write_all(body)?;
    output.flush()
}

/// Reads one frame; `None` on a clean end of input (the worker's side).
pub(crate) fn read_sync(input: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut frame = vec![0u8; length(len)?];
    input.read_exact(&mut frame)?;
    Ok(Some(frame))
}

/// Writes one frame and flushes (the peer's side).
pub(crate) async fn write(output: &mut (impl AsyncWrite + Unpin), body: &[u8]) -> std::io::Result<()> {
    output.write_all(&prefix(body)?).await?;
    output.write_all(body).await?;
    output.flush().await
}

/// Reads one frame (the peer's side).
pub(crate) async fn read(input: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).await?;
    let mut frame = vec![0u8; length(len)?];
    input.read_exact(&mut frame).await?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_length_prefixed_and_bounded() {
        let body = br#"{"task_id":"t","task_type":"ai"}"#;
        let mut written = Vec::new();
        write_sync(&mut written, body).unwrap();
        write_sync(&mut written, body).unwrap();
        assert_eq!(&written[..4], &(body.len() as u32).to_le_bytes());
        let mut input = std::io::Cursor::new(written.clone());
        assert_eq!(read_sync(&mut input).unwrap().as_deref(), Some(&body[..]));
        assert_eq!(read_sync(&mut input).unwrap().as_deref(), Some(&body[..]));
        assert_eq!(read_sync(&mut input).unwrap(), None, "a clean end of input");
        // A length past the bound is garbage: refused before allocating it.
        let huge = ((MAX_WORKER_FRAME + 1) as u32).to_le_bytes();
        let e = read_sync(&mut std::io::Cursor::new(huge.to_vec())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData);
        // A frame cut short is an error, not a frame.
        let cut = written[..4 + 5].to_vec();
        assert!(read_sync(&mut std::io::Cursor::new(cut)).is_err());
        // The async side reads what the blocking side wrote, and the other way round.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut input = &written[..];
            assert_eq!(read(&mut input).await.unwrap(), body);
            let mut out = Vec::new();
            write(&mut out, body).await.unwrap();
            assert_eq!(out, written[..4 + body.len()]);
            let mut short = &written[..4 + 5];
            assert!(read(&mut short).await.is_err());
        });
    }
}
