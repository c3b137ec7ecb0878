//! The console of a run: output items in the contract's `[type, data]` form, with merging of
//! consecutive stdout/stderr pieces, a per-run byte cap, and lossy UTF-8 decoding that never
//! splits a character across reads.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The status of an execute result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// The run ended.
    Finished,
    /// The run goes on; call again with the same run id.
    Continued,
    /// The run waits for an input line.
    WaitingInput,
    /// The batch build step ended; the exec step follows.
    BuildFinished,
    /// The run exceeded its time limit and was stopped.
    ExecTimeout,
}

/// Which output stream a piece of text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Output of a run not yet returned to the caller, plus the run's output accounting.
#[derive(Debug)]
pub struct Console {
    /// Items not yet returned.
    items: Vec<(String, Value)>,
    /// Bytes of output accepted so far in this run.
    used: u64,
    /// The run's output cap in bytes.
    cap: u64,
    /// Set once the cap was hit.
    truncated: bool,
    /// Set once the truncation note was added.
    noted: bool,
    /// Incomplete UTF-8 sequences at the end of the last stdout / stderr read.
    pending: [Vec<u8>; 2],
}

impl Console {
    /// An empty console capped at `cap` bytes of output.
    pub fn new(cap: u64) -> Self {
        Self { items: Vec::new(), used: 0, cap, truncated: false, noted: false, pending: [Vec::new(), Vec::new()] }
    }

    /// Whether output is waiting to be returned.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether the cap was hit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Appends raw bytes read from a stream; invalid UTF-8 is replaced, a character split
    /// across reads is kept for the next read.
    pub fn push_bytes(&mut self, stream: Stream, bytes: &[u8]) {
        let slot = &mut self.pending[stream as usize];
        let mut buf = std::mem::take(slot);
        buf.extend_from_slice(bytes);
        let keep = incomplete_tail(&buf);
        let tail = buf.split_off(buf.len() - keep);
        *slot = tail;
        if !buf.is_empty() {
            let text = String::from_utf8_lossy(&buf).into_owned();
            self.push_text(stream, text);
        }
    }

    /// Flushes incomplete UTF-8 sequences (at the end of a run).
    pub fn flush(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.pending[stream as usize]);
            if !rest.is_empty() {
                let text = String::from_utf8_lossy(&rest).into_owned();
                self.push_text(stream, text);
            }
        }
    }

    /// Appends text to a stream, merging with the previous item of the same stream.
    pub fn push_text(&mut self, stream: Stream, text: String) {
        if let Some(text) = self.admit(text) {
            self.append(stream.name(), text);
        }
        self.note_truncation();
    }

    fn append(&mut self, name: &str, text: String) {
        if let Some((kind, Value::String(prev))) = self.items.last_mut() {
            if kind == name {
                prev.push_str(&text);
                return;
            }
        }
        self.items.push((name.to_owned(), Value::String(text)));
    }

    /// Appends a media item `[mime, data]`.
    pub fn push_media(&mut self, mime: String, data: String) {
        if self.admit_len(mime.len() + data.len()) {
            self.items.push(("media".to_owned(), json!([mime, data])));
        }
        self.note_truncation();
    }

    /// Appends another item kind (`html`, `log`) with text data.
    pub fn push_other(&mut self, kind: &str, text: String) {
        if self.admit_len(text.len()) {
            self.items.push((kind.to_owned(), Value::String(text)));
        }
        self.note_truncation();
    }

    /// Adds an agent note on stderr that is not counted against the cap.
    pub fn note(&mut self, text: &str) {
        self.append(Stream::Stderr.name(), text.to_owned());
    }

    /// Takes the items not yet returned, in the contract's form.
    pub fn take(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.items).into_iter().map(|(kind, data)| json!([kind, data])).collect()
    }

    /// Cuts `text` to what the cap still admits; notes the truncation once.
    fn admit(&mut self, mut text: String) -> Option<String> {
        let room = self.cap.saturating_sub(self.used);
        if (text.len() as u64) <= room {
            self.used += text.len() as u64;
            return Some(text);
        }
        let mut cut = usize::try_from(room).unwrap_or(usize::MAX).min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        self.used = self.cap;
        self.mark_truncated();
        (!text.is_empty()).then_some(text)
    }

    fn admit_len(&mut self, len: usize) -> bool {
        if self.used.saturating_add(len as u64) <= self.cap {
            self.used += len as u64;
            true
        } else {
            self.used = self.cap;
            self.mark_truncated();
            false
        }
    }

    fn mark_truncated(&mut self) {
        self.truncated = true;
    }

    /// Adds the truncation note once, after the last admitted output.
    fn note_truncation(&mut self) {
        if self.truncated && !self.noted {
            self.noted = true;
            self.note(&format!(
                "\n[backend.ai: output of this run exceeded {} bytes; the rest is dropped]\n",
                self.cap
            ));
        }
    }
}

/// Length of an incomplete (but so far valid) UTF-8 sequence at the end of `buf`.
fn incomplete_tail(buf: &[u8]) -> usize {
    let start = buf.len().saturating_sub(3);
    for i in (start..buf.len()).rev() {
        let b = buf[i];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: look further back for the lead byte
        }
        let need = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        let have = buf.len() - i;
        return if have < need { have } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_consecutive_pieces_of_one_stream() {
        let mut c = Console::new(100);
        c.push_bytes(Stream::Stdout, b"a");
        c.push_bytes(Stream::Stdout, b"b");
        c.push_bytes(Stream::Stderr, b"c");
        c.push_bytes(Stream::Stdout, b"d");
        assert_eq!(c.take(), vec![json!(["stdout", "ab"]), json!(["stderr", "c"]), json!(["stdout", "d"])]);
    }

    #[test]
    fn keeps_split_characters_and_replaces_invalid_bytes() {
        let mut c = Console::new(100);
        let snow = "☃".as_bytes();
        c.push_bytes(Stream::Stdout, &snow[..1]);
        c.push_bytes(Stream::Stdout, &snow[1..]);
        c.push_bytes(Stream::Stdout, b"\xff!");
        assert_eq!(c.take(), vec![json!(["stdout", "☃\u{fffd}!"])]);
    }

    #[test]
    fn caps_output_with_one_note() {
        let mut c = Console::new(4);
        c.push_text(Stream::Stdout, "abcdef".into());
        c.push_text(Stream::Stdout, "more".into());
        let items = c.take();
        assert_eq!(items[0], json!(["stdout", "abcd"]));
        assert!(items[1][1].as_str().unwrap_or("").contains("exceeded 4 bytes"));
        assert_eq!(items.len(), 2);
        assert!(c.truncated());
    }
}
