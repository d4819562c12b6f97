//! Any `:authority` on the unix socket. gRPC clients name the socket path
//! there (Python's grpcio over `unix://`, grpc-java, Bazel...), which is no
//! valid URI authority, and the HTTP/2 stack under tonic resets such a
//! stream with PROTOCOL_ERROR before the driver sees it. On a unix socket
//! the authority means nothing, so the connection is read through this
//! filter: frames pass through byte for byte until a header block carries
//! an authority that would be refused; from then on every header block of
//! the connection is decoded and re-encoded, that authority as `localhost`.
//!
//! Re-encoded blocks only use literals that never enter the HPACK dynamic
//! table, so the server's table never disagrees with what the blocks mean;
//! the client's table is followed by decoding every block it sends.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE, what the server accepts unless it
/// says otherwise.
const MAX_FRAME: usize = 16_384;
/// What replaces an authority the server would refuse.
const LOCALHOST: &[u8] = b"localhost";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// Blocks pass unchanged (and are decoded, to follow the client's table).
    Watching,
    /// Blocks are re-encoded: one needed a new authority.
    Rewriting,
    /// A block did not decode before any rewrite: everything passes
    /// unchanged and the HTTP/2 stack judges it.
    Passing,
}

/// A header block being collected: its frames as received, and the parts
/// needed to write it anew.
struct Block {
    raw: Vec<u8>,
    fragment: Vec<u8>,
    stream: [u8; 4],
    /// END_STREAM and PRIORITY of the HEADERS frame.
    flags: u8,
    priority: Option<[u8; 5]>,
}

/// The client-to-server side of a connection, with authorities fixed.
pub struct AnyAuthority<S> {
    inner: S,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Bytes of the connection preface still to pass.
    preface: usize,
    /// Payload bytes of a frame that passes unchanged, still to come.
    passing: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    mode: Mode,
}

impl<S> AnyAuthority<S> {
    pub fn new(inner: S) -> AnyAuthority<S> {
        AnyAuthority {
            inner,
            input: Vec::new(),
            output: Vec::new(),
            preface: PREFACE_LEN,
            passing: 0,
            block: None,
            decoder: loona_hpack::Decoder::new(),
            mode: Mode::Watching,
        }
    }

    /// Moves what can be judged from `input` to `output`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            if self.preface > 0 || self.passing > 0 || self.mode == Mode::Passing {
                let wanted = match (self.preface, self.passing) {
                    (0, 0) => self.input.len(),
                    (0, n) => n,
                    (n, _) => n,
                };
                let n = wanted.min(self.input.len());
                if n == 0 {
                    return Ok(());
                }
                self.output.extend(self.input.drain(..n));
                if self.preface > 0 {
                    self.preface -= n;
                } else if self.passing > 0 {
                    self.passing -= n;
                }
                continue;
            }
            if self.input.len() < FRAME_HEADER_LEN {
                return Ok(());
            }
            let h = &self.input[..FRAME_HEADER_LEN];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            let stream = [h[5] & 0x7f, h[6], h[7], h[8]];
            let in_block = self.block.is_some();
            match kind {
                HEADERS if !in_block => {}
                CONTINUATION if in_block => {}
                _ if in_block => {
                    // Not HTTP/2: let the server say so.
                    self.give_up();
                    continue;
                }
                _ => {
                    self.output.extend(self.input.drain(..FRAME_HEADER_LEN));
                    self.passing = len;
                    continue;
                }
            }
            if self.input.len() < FRAME_HEADER_LEN + len {
                return Ok(());
            }
            let frame: Vec<u8> = self.input.drain(..FRAME_HEADER_LEN + len).collect();
            let payload = &frame[FRAME_HEADER_LEN..];
            if kind == HEADERS {
                let Some((priority, fragment)) = headers_payload(flags, payload) else {
                    self.output.extend(frame);
                    self.mode = Mode::Passing;
                    continue;
                };
                self.block = Some(Block {
                    raw: Vec::new(),
                    fragment: fragment.to_vec(),
                    stream,
                    flags: flags & (END_STREAM | PRIORITY),
                    priority,
                });
            } else if let Some(block) = &mut self.block {
                block.fragment.extend_from_slice(payload);
            }
            if let Some(block) = &mut self.block {
                block.raw.extend_from_slice(&frame);
            }
            if flags & END_HEADERS != 0 {
                let block = self.block.take().expect("a block is being collected");
                self.finish(block)?;
            }
        }
    }

    /// Passes the block being collected and everything after it unchanged.
    fn give_up(&mut self) {
        if let Some(block) = self.block.take() {
            self.output.extend(block.raw);
        }
        self.mode = Mode::Passing;
    }

    fn finish(&mut self, block: Block) -> io::Result<()> {
        let mut fields = Vec::new();
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            fields.push((name.into_owned(), value.into_owned()))
        });
        if let Err(e) = decoded {
            if self.mode == Mode::Rewriting {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("undecodable HTTP/2 header block: {e}"),
                ));
            }
            self.output.extend(block.raw);
            self.mode = Mode::Passing;
            return Ok(());
        }
        let mut refused = None;
        for (name, value) in &mut fields {
            if name == b":authority" && Authority::try_from(value.as_slice()).is_err() {
                refused = Some(String::from_utf8_lossy(value).into_owned());
                *value = LOCALHOST.to_vec();
            }
        }
        if self.mode == Mode::Watching {
            let Some(authority) = refused else {
                self.output.extend(block.raw);
                return Ok(());
            };
            tracing::debug!(
                authority,
                "the client names the socket as :authority; served as localhost"
            );
            self.mode = Mode::Rewriting;
        }
        write_block(&mut self.output, &block, &fields);
        Ok(())
    }
}

/// A HEADERS payload without padding: its priority and header fragment.
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        padding = usize::from(*rest.first()?);
        rest = &rest[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(rest.get(..5)?.try_into().ok()?);
        rest = &rest[5..];
    }
    let end = rest.len().checked_sub(padding)?;
    Some((priority, &rest[..end]))
}

/// The block as a HEADERS frame and CONTINUATIONs, every field a literal
/// never indexed (no Huffman), within the smallest frame size.
fn write_block(out: &mut Vec<u8>, block: &Block, fields: &[(Vec<u8>, Vec<u8>)]) {
    let mut encoded = Vec::new();
    for (name, value) in fields {
        encoded.push(0x10);
        string(&mut encoded, name);
        string(&mut encoded, value);
    }
    let priority: &[u8] = block.priority.as_ref().map_or(&[], |p| p.as_slice());
    let first = encoded.len().min(MAX_FRAME - priority.len());
    let mut chunks = vec![&encoded[..first]];
    chunks.extend(encoded[first..].chunks(MAX_FRAME));
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let (kind, mut flags, prefix) = match i {
            0 => (HEADERS, block.flags, priority),
            _ => (CONTINUATION, 0, &[][..]),
        };
        if i == last {
            flags |= END_HEADERS;
        }
        let len = (prefix.len() + chunk.len()) as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&block.stream);
        out.extend_from_slice(prefix);
        out.extend_from_slice(chunk);
    }
}

/// An HPACK string literal, not Huffman-coded.
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    integer(out, 0, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// An HPACK integer with an `prefix`-bit prefix after the bits in `high`.
fn integer(out: &mut Vec<u8>, high: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of the connection: whatever was held back goes as is.
                this.give_up();
                this.output.append(&mut this.input);
                if this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.input.extend_from_slice(read.filled());
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}

impl tonic::transport::server::Connected for AnyAuthority<tokio::net::UnixStream> {
    type ConnectInfo = <tokio::net::UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, stream]);
        f.extend_from_slice(payload);
        f
    }

    fn run(input: &[u8]) -> Vec<u8> {
        let mut filter = AnyAuthority::new(());
        filter.input.extend_from_slice(input);
        filter.process().unwrap();
        filter.output
    }

    fn headers_of(out: &[u8], decoder: &mut loona_hpack::Decoder) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut rest = &out[PREFACE_LEN..];
        let mut fragment = Vec::new();
        while rest.len() >= FRAME_HEADER_LEN {
            let len = usize::from(rest[1]) << 8 | usize::from(rest[2]);
            if rest[3] == HEADERS || rest[3] == CONTINUATION {
                let skip = if rest[4] & PRIORITY != 0 { 5 } else { 0 };
                fragment.extend_from_slice(&rest[FRAME_HEADER_LEN + skip..FRAME_HEADER_LEN + len]);
            }
            rest = &rest[FRAME_HEADER_LEN + len..];
        }
        decoder.decode(&fragment).unwrap()
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[test]
    fn a_valid_authority_passes_byte_for_byte() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = encoder.encode([(&b":authority"[..], &b"localhost"[..])]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        assert_eq!(run(&input), input);
    }

    #[test]
    fn once_rewritten_every_later_block_is_too() {
        // The client's second block points into its dynamic table, at
        // entries the first (rewritten) block never gave the server.
        let mut encoder = loona_hpack::Encoder::new();
        let fields = [
            (&b":authority"[..], &b"/run/csi/csi.sock"[..]),
            (&b"x-custom"[..], &b"v"[..]),
        ];
        let first = encoder.encode(fields);
        let second = encoder.encode(fields);
        assert!(second.len() < first.len(), "the second block is indexed");
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &first));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
        let fields = headers_of(&run(&input), &mut loona_hpack::Decoder::new());
        let authority = (b":authority".to_vec(), b"localhost".to_vec());
        let custom = (b"x-custom".to_vec(), b"v".to_vec());
        assert_eq!(
            fields,
            [authority.clone(), custom.clone(), authority, custom]
        );
    }

    #[test]
    fn a_socket_path_becomes_localhost_split_over_continuations() {
        let mut encoder = loona_hpack::Encoder::new();
        let big = vec![b'x'; 20_000];
        let block = encoder.encode([
            (&b":authority"[..], &b"/tmp/x.sock"[..]),
            (&b":path"[..], &b"/csi.v1.Identity/Probe"[..]),
            (&b"x-big"[..], &big[..]),
        ]);
        let mut input = PREFACE.to_vec();
        // Padded and prioritised, then a CONTINUATION.
        let mut payload = vec![2u8, 0, 0, 0, 0, 16];
        payload.extend_from_slice(&block[..100]);
        payload.extend_from_slice(&[0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[100..]));
        let out = run(&input);
        let fields = headers_of(&out, &mut loona_hpack::Decoder::new());
        assert_eq!(fields[0], (b":authority".to_vec(), b"localhost".to_vec()));
        assert_eq!(fields[1].1, b"/csi.v1.Identity/Probe");
        assert_eq!(fields[2].1, big);
        // The priority stays, padding goes; every frame fits 16 KiB.
        assert_eq!(out[PREFACE_LEN + 4], PRIORITY);
        assert!(out.len() > PREFACE_LEN + 20_000);
    }
}
