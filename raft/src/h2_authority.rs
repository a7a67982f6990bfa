//! Lets etcd's own clients in over HTTP/2: etcd 3.4's clientv3 (inside `etcdctl`) sends
//! the endpoint as written, `http://127.0.0.1:2379`, as the `:authority` of every gRPC
//! request. grpc-go's server takes it; the `h2` crate under hyper refuses it as a malformed
//! authority and resets the stream (PROTOCOL_ERROR), so `etcdctl --endpoints=http://…`
//! and `endpoint status --cluster` (which dials the members' client URLs) would fail.
//!
//! [`AuthorityFix`] sits between a connection and the HTTP server. A connection that does
//! not start with the HTTP/2 preface passes through untouched. On an HTTP/2 connection it
//! reads the client's frames and re-encodes every header block (HPACK, through
//! `loona-hpack`: one decoder for the client's compression state, one encoder for the
//! server's), turning an `:authority` of `scheme://host:port[/…]` into `host:port`.
//! Every other frame, and everything the server writes, passes through byte for byte.
//! A connection whose first header block needs no repair (every client but etcd 3.4's)
//! passes through whole from there on: re-encoding every block cost about 2% of a loaded
//! leader's CPU (HPACK's Huffman tables), and such a client keeps one authority per
//! connection. It owns no routing and no policy: it only repairs that one header.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 server accepts (hyper does not raise it). A larger frame is
/// a protocol error the server reports; it is passed on at once rather than buffered.
const MAX_FRAME: usize = 16_384;
/// The largest header block gathered from CONTINUATION frames; beyond it the connection is
/// passed through for the server to refuse, so no client makes this buffer grow unbounded.
const MAX_BLOCK: usize = 256 * 1024;

enum Mode {
    /// Still reading the first bytes to tell HTTP/2 from HTTP/1.
    Sniffing,
    Http2,
    /// Not HTTP/2, or a header block could not be decoded: pass everything through.
    Plain,
}

/// A header block whose HEADERS frame came without END_HEADERS, awaiting CONTINUATIONs.
struct Pending {
    stream_id: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// A connection whose HTTP/2 header blocks have scheme-bearing authorities repaired.
pub struct AuthorityFix<IO> {
    io: IO,
    mode: Mode,
    /// Read from `io`, not yet looked at.
    raw: BytesMut,
    /// Ready for the HTTP server to read.
    out: BytesMut,
    pending: Option<Pending>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    /// Whether a header block went out yet: the first decides whether repairs go on.
    first_block_done: bool,
    eof: bool,
}

impl<IO> AuthorityFix<IO> {
    pub fn new(io: IO) -> Self {
        AuthorityFix {
            io,
            mode: Mode::Sniffing,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            pending: None,
            decoder: Decoder::new(),
            encoder: Encoder::new(),
            first_block_done: false,
            eof: false,
        }
    }

    /// Moves what can be decided from `raw` to `out`.
    fn process(&mut self) {
        loop {
            match self.mode {
                Mode::Plain => {
                    let all = self.raw.split();
                    self.out.extend_from_slice(&all);
                    return;
                }
                Mode::Sniffing => {
                    let n = self.raw.len().min(PREFACE.len());
                    if self.raw[..n] != PREFACE[..n] {
                        self.mode = Mode::Plain;
                    } else if n == PREFACE.len() {
                        let preface = self.raw.split_to(n);
                        self.out.extend_from_slice(&preface);
                        self.mode = Mode::Http2;
                    } else {
                        return;
                    }
                }
                Mode::Http2 => {
                    if self.raw.len() < FRAME_HEADER {
                        return;
                    }
                    let len = (usize::from(self.raw[0]) << 16)
                        | (usize::from(self.raw[1]) << 8)
                        | usize::from(self.raw[2]);
                    if len > MAX_FRAME {
                        self.give_up("an HTTP/2 frame over the maximum frame size");
                        continue;
                    }
                    if self.raw.len() < FRAME_HEADER + len {
                        return;
                    }
                    let frame = self.raw.split_to(FRAME_HEADER + len);
                    self.frame(&frame);
                }
            }
        }
    }

    fn frame(&mut self, frame: &[u8]) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = [frame[5], frame[6], frame[7], frame[8]];
        let payload = &frame[FRAME_HEADER..];
        match kind {
            HEADERS if self.pending.is_none() => {
                let Some((priority, fragment)) = headers_payload(flags, payload) else {
                    // Malformed: let the server say so.
                    self.out.extend_from_slice(frame);
                    return;
                };
                let pending = Pending {
                    stream_id,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                };
                if flags & END_HEADERS != 0 {
                    self.emit(pending);
                } else {
                    self.pending = Some(pending);
                }
            }
            CONTINUATION if self.pending.is_some() => {
                if let Some(p) = self.pending.as_mut() {
                    p.fragment.extend_from_slice(payload);
                    if p.fragment.len() > MAX_BLOCK {
                        self.pending = None;
                        self.out.extend_from_slice(frame);
                        self.give_up("an HTTP/2 header block over 256 KiB");
                        return;
                    }
                }
                if flags & END_HEADERS != 0 {
                    if let Some(p) = self.pending.take() {
                        self.emit(p);
                    }
                }
            }
            _ => self.out.extend_from_slice(frame),
        }
    }

    /// Stops repairing: from here on the connection passes through as it is (the server
    /// then refuses whatever was wrong with it).
    fn give_up(&mut self, why: &str) {
        tracing::debug!(
            reason = why,
            "passing the rest of an HTTP/2 connection through"
        );
        self.mode = Mode::Plain;
    }

    /// Re-encodes one whole header block and writes it out as HEADERS (+ CONTINUATION).
    fn emit(&mut self, p: Pending) {
        let decoded = self.decoder.decode(&p.fragment);
        let Ok(mut headers) = decoded else {
            // The compression state is lost; the server will refuse what follows.
            write_block(&mut self.out, &p, &p.fragment);
            self.give_up("an HTTP/2 header block that does not decode");
            return;
        };
        let mut repaired = false;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" {
                if let Some(fixed) = strip_scheme(value) {
                    *value = fixed;
                    repaired = true;
                }
            }
        }
        let first = !self.first_block_done;
        self.first_block_done = true;
        if first && !repaired {
            // The server's compression state is still the client's: hand the block over
            // as it came, and the rest of the connection with it.
            write_block(&mut self.out, &p, &p.fragment);
            self.give_up("the first header block needs no repair");
            return;
        }
        let block = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        write_block(&mut self.out, &p, &block);
    }
}

/// A HEADERS payload's priority fields and header fragment (padding removed).
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = usize::from(*rest.first()?);
        rest = &rest[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let p: [u8; 5] = rest.get(..5)?.try_into().ok()?;
        priority = Some(p);
        rest = &rest[5..];
    }
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

/// `http://host:port/…` → `host:port`; None when there is no scheme to strip.
fn strip_scheme(authority: &[u8]) -> Option<Vec<u8>> {
    let at = authority.windows(3).position(|w| w == b"://")?;
    let rest = &authority[at + 3..];
    let end = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
    Some(rest[..end].to_vec())
}

fn frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: [u8; 4]) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream_id);
}

fn write_block(out: &mut BytesMut, p: &Pending, block: &[u8]) {
    let first_room = MAX_FRAME - if p.priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = 0;
    if p.end_stream {
        flags |= END_STREAM;
    }
    if p.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let prio_len = if p.priority.is_some() { 5 } else { 0 };
    frame_header(out, first.len() + prio_len, HEADERS, flags, p.stream_id);
    if let Some(prio) = p.priority {
        out.extend_from_slice(&prio);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME));
        let flags = if after.is_empty() { END_HEADERS } else { 0 };
        frame_header(out, chunk.len(), CONTINUATION, flags, p.stream_id);
        out.extend_from_slice(chunk);
        rest = after;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::Plain) && this.raw.is_empty() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if this.eof {
                // A partial frame at the end: hand it over for the server to refuse.
                let rest = this.raw.split();
                this.out.extend_from_slice(&rest);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; 16_384];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.raw.extend_from_slice(read.filled());
                        this.process();
                    }
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    fn headers_frame(block: &[u8], flags: u8, stream: u8) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame_header(&mut out, block.len(), HEADERS, flags, [0, 0, 0, stream]);
        out.extend_from_slice(block);
        out.to_vec()
    }

    /// Feeds `input` through the shim and decodes the header blocks that come out.
    async fn through(input: Vec<u8>) -> (Vec<u8>, Vec<Vec<(Vec<u8>, Vec<u8>)>>) {
        let mut fix = AuthorityFix::new(std::io::Cursor::new(input));
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.expect("read");
        let mut blocks = Vec::new();
        let mut decoder = Decoder::new();
        if !out.starts_with(PREFACE) {
            return (out, blocks);
        }
        let mut rest = &out[PREFACE.len()..];
        let mut pending = Vec::new();
        while rest.len() >= FRAME_HEADER {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            if kind == HEADERS || kind == CONTINUATION {
                let (_, frag) = if kind == HEADERS {
                    headers_payload(flags, payload).expect("payload")
                } else {
                    (None, payload)
                };
                pending.extend_from_slice(frag);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&pending).expect("decode"));
                    pending.clear();
                }
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        (out, blocks)
    }

    #[tokio::test]
    async fn a_scheme_in_the_authority_is_stripped_and_other_headers_kept() {
        let mut client = Encoder::new();
        let first = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"http://127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.KV/Range"),
            (b"te", b"trailers"),
        ]);
        // The client's second block leans on its dynamic table.
        let second = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"http://127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.KV/Put"),
            (b"te", b"trailers"),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(&first, END_HEADERS, 1));
        // A DATA frame passes through as it is.
        input.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 1, b'h', b'i']);
        input.extend(headers_frame(&second, END_HEADERS | END_STREAM, 3));
        let (out, blocks) = through(input).await;
        assert!(out.starts_with(PREFACE));
        assert_eq!(blocks.len(), 2);
        let authority = |b: &Vec<(Vec<u8>, Vec<u8>)>| {
            b.iter()
                .find(|(n, _)| n == b":authority")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(authority(&blocks[0]), Some(b"127.0.0.1:2379".to_vec()));
        assert_eq!(authority(&blocks[1]), Some(b"127.0.0.1:2379".to_vec()));
        assert!(blocks[1].contains(&(b":path".to_vec(), b"/etcdserverpb.KV/Put".to_vec())));
        assert!(out.windows(2).any(|w| w == b"hi"));
    }

    #[tokio::test]
    async fn a_connection_whose_first_authority_is_plain_passes_through_byte_for_byte() {
        let mut client = Encoder::new();
        let mut input = PREFACE.to_vec();
        for (stream, path) in [
            (1, &b"/etcdserverpb.KV/Put"[..]),
            (3, b"/etcdserverpb.KV/Range"),
        ] {
            let block = client.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":authority", b"127.0.0.1:2379"),
                (b":path", path),
            ]);
            input.extend(headers_frame(&block, END_HEADERS, stream));
        }
        let (out, blocks) = through(input.clone()).await;
        assert_eq!(
            out, input,
            "the client's own bytes, its compression state intact"
        );
        assert_eq!(blocks.len(), 2);
        assert!(blocks[1].contains(&(b":path".to_vec(), b"/etcdserverpb.KV/Range".to_vec())));
    }

    #[tokio::test]
    async fn an_oversize_frame_is_passed_on_not_buffered() {
        use tokio::io::AsyncWriteExt;
        let mut input = PREFACE.to_vec();
        let mut big = BytesMut::new();
        frame_header(&mut big, 1 << 20, 0, 0, [0, 0, 0, 1]);
        input.extend_from_slice(&big);
        input.extend_from_slice(b"partial");
        // The client sends the start of a 1 MiB frame and then nothing more.
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(&input).await.expect("write");
        let mut fix = AuthorityFix::new(server);
        let mut out = vec![0u8; input.len()];
        tokio::time::timeout(Duration::from_secs(5), fix.read_exact(&mut out))
            .await
            .expect("the bytes must reach the server without waiting for the whole frame")
            .expect("read");
        assert_eq!(out, input, "passed through as it came");
        drop(client);
    }

    #[tokio::test]
    async fn http1_passes_through_untouched() {
        let req = b"PUT /v1/kv/a HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
        let (out, blocks) = through(req.clone()).await;
        assert_eq!(out, req);
        assert!(blocks.is_empty());
    }

    #[tokio::test]
    async fn a_block_split_over_continuations_is_joined() {
        let mut client = Encoder::new();
        let block = client.encode([
            (&b":authority"[..], &b"https://m1.example:2379/"[..]),
            (b":path", b"/etcdserverpb.Watch/Watch"),
        ]);
        let (a, b) = block.split_at(5);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(a, 0, 1));
        let mut cont = BytesMut::new();
        frame_header(&mut cont, b.len(), CONTINUATION, END_HEADERS, [0, 0, 0, 1]);
        cont.extend_from_slice(b);
        input.extend_from_slice(&cont);
        let (_, blocks) = through(input).await;
        assert_eq!(blocks.len(), 1);
        assert!(blocks[0].contains(&(b":authority".to_vec(), b"m1.example:2379".to_vec())));
    }
}
