//! Server-Sent Events framing, the read side: turns the bytes of a `text/event-stream` body,
//! in whatever chunks they arrive, into [`Frame`]s (`event:`, `id:` and `data:` fields, a
//! blank line ending a frame, several `data:` lines joined with `\n`, lines starting with
//! `:` ignored as comments). The store's watch streams and the control plane's watches are
//! read with it. It knows nothing of what the data means.

/// One dispatched SSE message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    /// The `event:` field, if the frame had one (SSE's default type is `message`).
    pub event: Option<String>,
    /// The `id:` field, if the frame had one.
    pub id: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Splits an SSE byte stream into frames. Feed it chunks with [`Decoder::push`], then take
/// the frames completed so far with [`Decoder::next_frame`]. A chunk may end anywhere, even
/// inside a UTF-8 character: only complete lines are decoded.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes not yet decoded (the start of a line whose end has not arrived).
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
    /// The frame whose lines are being read.
    frame: Frame,
    /// Whether `frame` has had a `data:` line (a frame without one is not dispatched).
    has_data: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the next chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame, or None until more bytes arrive. Frames without data
    /// (comments, keep-alives, a lone `id:`) are skipped, as an EventSource skips them.
    pub fn next_frame(&mut self) -> Option<Frame> {
        while let Some(len) = self.buf[self.start..].iter().position(|b| *b == b'\n') {
            let end = self.start + len;
            let line = &self.buf[self.start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            self.start = end + 1;
            if line.is_empty() {
                let frame = std::mem::take(&mut self.frame);
                if std::mem::take(&mut self.has_data) {
                    return Some(frame);
                }
                continue;
            }
            self.field(&line);
        }
        None
    }

    /// Applies one non-empty line to the frame being read.
    fn field(&mut self, line: &str) {
        if line.starts_with(':') {
            return; // a comment
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match name {
            "event" => self.frame.event = Some(value.to_string()),
            "id" => self.frame.id = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.frame.data.push('\n');
                }
                self.frame.data.push_str(value);
                self.has_data = true;
            }
            _ => {} // `retry:` and unknown fields
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c);
            while let Some(f) = d.next_frame() {
                out.push(f);
            }
        }
        out
    }

    fn frame(event: Option<&str>, id: Option<&str>, data: &str) -> Frame {
        Frame {
            event: event.map(String::from),
            id: id.map(String::from),
            data: data.to_string(),
        }
    }

    #[test]
    fn fields_of_a_frame_are_read() {
        assert_eq!(
            frames(&[b"event: ADDED\nid: 7\ndata: {\"a\":1}\n\n"]),
            vec![frame(Some("ADDED"), Some("7"), "{\"a\":1}")]
        );
        // The space after the colon is optional, and only one is removed.
        assert_eq!(
            frames(&[b"id:8\ndata:x\n\ndata:  y\n\n"]),
            vec![frame(None, Some("8"), "x"), frame(None, None, " y")]
        );
    }

    #[test]
    fn data_lines_join_with_newlines() {
        assert_eq!(
            frames(&[b"data: a\ndata:\ndata: b\n\n"]),
            vec![frame(None, None, "a\n\nb")]
        );
    }

    #[test]
    fn comments_and_frames_without_data_are_skipped() {
        assert_eq!(
            frames(&[b":\n\n: keep-alive\n\nid: 3\n\nevent: x\n\ndata: d\n\n"]),
            vec![frame(None, None, "d")]
        );
    }

    #[test]
    fn a_frame_is_dispatched_only_at_its_blank_line() {
        let mut d = Decoder::new();
        d.push(b"id: 1\ndata: a\n");
        assert_eq!(d.next_frame(), None);
        d.push(b"\n");
        assert_eq!(d.next_frame(), Some(frame(None, Some("1"), "a")));
        assert_eq!(d.next_frame(), None);
    }

    #[test]
    fn chunks_may_split_lines_and_characters() {
        let text = "event: é\ndata: ü€\n\ndata: 2\n\n".as_bytes();
        let whole = frames(&[text]);
        assert_eq!(
            whole,
            vec![frame(Some("é"), None, "ü€"), frame(None, None, "2")]
        );
        for at in 0..text.len() {
            let (a, b) = text.split_at(at);
            assert_eq!(frames(&[a, b]), whole, "split at {at}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(frames(&bytes), whole);
    }

    #[test]
    fn crlf_line_ends_are_accepted() {
        assert_eq!(
            frames(&[b"id: 4\r\ndata: a\r\n\r\n"]),
            vec![frame(None, Some("4"), "a")]
        );
    }

    #[test]
    fn fields_do_not_leak_into_the_next_frame() {
        assert_eq!(
            frames(&[b"event: E\nid: 1\ndata: a\n\ndata: b\n\n"]),
            vec![frame(Some("E"), Some("1"), "a"), frame(None, None, "b")]
        );
    }
}
