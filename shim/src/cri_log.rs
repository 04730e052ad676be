//! The container log in the CRI format kubelet reads:
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <content>\n`.
//!
//! Records follow containerd's CRI logger (`pkg/cri/io/logger.go`), which kubelet's reader and
//! tools built for containerd expect:
//! - a line is one `F` record, without its `\n` and without a `\r` right before it;
//! - a line longer than [`MAX_LINE`] bytes is cut into `P` records of [`MAX_LINE`] bytes,
//!   the rest of it ending in an `F` record;
//! - a line still open when its stream ends is written as a `P` record by
//!   [`CriLog::finish`]: it had no newline, and kubelet must not add one.
//!
//! A line is written only once it ends (or fills a record), never because the container paused
//! mid-line. Each stream keeps at most one partial line of [`MAX_LINE`] bytes, so memory stays
//! bounded whatever the container writes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::{Error, Result, rfc3339};

/// The longest content of one log record (kubelet's and containerd's 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// One of the container's output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// The line a stream has open.
#[derive(Debug, Default)]
struct OpenLine {
    /// Its content not yet written, at most [`MAX_LINE`] bytes.
    content: Vec<u8>,
    /// A `\r` read after `content`: dropped if `\n` follows, content otherwise.
    cr: bool,
}

/// Where records go.
#[derive(Debug)]
struct Sink {
    path: PathBuf,
    file: File,
    /// Reused for every record so one record is one `write`.
    record: Vec<u8>,
    clock: fn() -> SystemTime,
}

/// A CRI log file being written.
#[derive(Debug)]
pub struct CriLog {
    sink: Sink,
    /// The open (unterminated) line of each stream.
    open: [OpenLine; 2],
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("open container log", path, e))
}

impl CriLog {
    /// Opens (creating, appending) the log at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::with_clock(path, SystemTime::now)
    }

    /// As [`CriLog::open`], with the timestamps taken from `clock` (tests).
    pub fn with_clock(path: &Path, clock: fn() -> SystemTime) -> Result<Self> {
        Ok(Self {
            sink: Sink {
                path: path.to_path_buf(),
                file: open_log(path)?,
                record: Vec::new(),
                clock,
            },
            open: Default::default(),
        })
    }

    /// Where the log is written.
    pub fn path(&self) -> &Path {
        &self.sink.path
    }

    /// Opens the path again (for log rotation: kubelet renames the file, then asks for a new
    /// one). Open partial lines carry over into the new file.
    pub fn reopen(&mut self) -> Result<()> {
        self.sink.file = open_log(&self.sink.path)?;
        Ok(())
    }

    /// Logs `data` read from `stream`: every complete line, and long lines in chunks.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> Result<()> {
        let Self { sink, open } = self;
        let open = &mut open[stream.index()];
        while let Some(i) = data.iter().position(|&c| c == b'\n') {
            let line = &data[..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if open.content.is_empty() && !open.cr && line.len() <= MAX_LINE {
                // The common case: a whole line in one read goes out without a copy.
                sink.emit(stream, 'F', line)?;
            } else {
                open.extend(sink, stream, &data[..i])?;
                open.cr = false;
                sink.emit(stream, 'F', &open.content)?;
                open.content.clear();
            }
            data = &data[i + 1..];
        }
        open.extend(sink, stream, data)?;
        // A long partial line must not pin its peak allocation for the container's lifetime.
        if open.content.is_empty() && open.content.capacity() > 4096 {
            open.content = Vec::new();
        }
        Ok(())
    }

    /// The stream reached its end: an unterminated last line is written as `P`, as it has no
    /// newline.
    pub fn finish(&mut self, stream: Stream) -> Result<()> {
        let open = &mut self.open[stream.index()];
        if std::mem::take(&mut open.cr) {
            open.push(&mut self.sink, stream, b"\r")?;
        }
        let content = std::mem::take(&mut open.content);
        if content.is_empty() {
            return Ok(());
        }
        self.sink.emit(stream, 'P', &content)
    }
}

impl OpenLine {
    /// Adds `bytes` (no `\n` among them) to the line, holding a trailing `\r` back until the
    /// next byte says whether it ends the line.
    fn extend(&mut self, sink: &mut Sink, stream: Stream, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.cr) {
            self.push(sink, stream, b"\r")?;
        }
        match bytes.strip_suffix(b"\r") {
            Some(rest) => {
                self.push(sink, stream, rest)?;
                self.cr = true;
            }
            None => self.push(sink, stream, bytes)?,
        }
        Ok(())
    }

    /// Appends `bytes` to the content, writing a full record as a `P` chunk once more follows.
    fn push(&mut self, sink: &mut Sink, stream: Stream, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            if self.content.len() == MAX_LINE {
                sink.emit(stream, 'P', &self.content)?;
                self.content.clear();
            }
            let take = (MAX_LINE - self.content.len()).min(bytes.len());
            self.content.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        Ok(())
    }
}

impl Sink {
    fn emit(&mut self, stream: Stream, tag: char, content: &[u8]) -> Result<()> {
        let record = &mut self.record;
        record.clear();
        record.extend_from_slice(rfc3339::format((self.clock)()).as_bytes());
        record.push(b' ');
        record.extend_from_slice(stream.as_str().as_bytes());
        record.push(b' ');
        record.push(tag as u8);
        record.push(b' ');
        record.extend_from_slice(content);
        record.push(b'\n');
        let r = self
            .file
            .write_all(record)
            .map_err(|e| Error::io("write container log", &self.path, e));
        if record.capacity() > 4096 {
            *record = Vec::new();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn fixed() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_709_251_198, 5_000)
    }

    const TS: &str = "2024-02-29T23:59:58.000005Z";

    fn log() -> (tempfile::TempDir, CriLog) {
        let dir = tempfile::tempdir().unwrap();
        let l = CriLog::with_clock(&dir.path().join("0.log"), fixed).unwrap();
        (dir, l)
    }

    fn content(l: &CriLog) -> String {
        std::fs::read_to_string(l.path()).unwrap()
    }

    /// (stream, tag, content) of every record, checking each timestamp.
    fn records(l: &CriLog) -> Vec<(String, String, String)> {
        content(l)
            .split_terminator('\n')
            .map(|line| {
                let mut f = line.splitn(4, ' ');
                assert_eq!(f.next().unwrap(), TS);
                (
                    f.next().unwrap().to_string(),
                    f.next().unwrap().to_string(),
                    f.next().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn rec(s: &str, t: &str, c: &str) -> (String, String, String) {
        (s.into(), t.into(), c.into())
    }

    #[test]
    fn lines_become_full_records_with_their_stream() {
        let (_d, mut l) = log();
        l.write(Stream::Stdout, b"hello\nworld\n").unwrap();
        l.write(Stream::Stderr, b"err\n").unwrap();
        l.write(Stream::Stdout, b"\n").unwrap();
        assert_eq!(
            content(&l),
            format!(
                "{TS} stdout F hello\n{TS} stdout F world\n{TS} stderr F err\n{TS} stdout F \n"
            )
        );
    }

    #[test]
    fn a_line_split_across_reads_is_joined_and_streams_stay_apart() {
        let (_d, mut l) = log();
        l.write(Stream::Stdout, b"hel").unwrap();
        l.write(Stream::Stderr, b"e").unwrap();
        l.write(Stream::Stdout, b"lo wo").unwrap();
        l.write(Stream::Stderr, b"rr\nsecond").unwrap();
        l.write(Stream::Stdout, b"rld\n").unwrap();
        assert_eq!(
            records(&l),
            [rec("stderr", "F", "err"), rec("stdout", "F", "hello world")]
        );
        l.finish(Stream::Stdout).unwrap();
        l.finish(Stream::Stderr).unwrap();
        assert_eq!(records(&l)[2], rec("stderr", "P", "second"));
        assert_eq!(records(&l).len(), 3);
    }

    #[test]
    fn long_lines_are_split_into_partial_chunks() {
        let (_d, mut l) = log();
        let line = "a".repeat(MAX_LINE * 2 + 10);
        // Fed in odd-sized pieces, as a pipe would deliver it.
        let data = format!("{line}\nnext\n");
        for piece in data.as_bytes().chunks(5000) {
            l.write(Stream::Stdout, piece).unwrap();
        }
        let r = records(&l);
        assert_eq!(
            r.len(),
            4,
            "{:?}",
            r.iter().map(|x| x.2.len()).collect::<Vec<_>>()
        );
        assert_eq!(r[0], rec("stdout", "P", &"a".repeat(MAX_LINE)));
        assert_eq!(r[1], rec("stdout", "P", &"a".repeat(MAX_LINE)));
        assert_eq!(r[2], rec("stdout", "F", &"a".repeat(10)));
        assert_eq!(r[3], rec("stdout", "F", "next"));
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_one_full_record() {
        let (_d, mut l) = log();
        let line = "b".repeat(MAX_LINE);
        l.write(Stream::Stdout, line.as_bytes()).unwrap();
        l.write(Stream::Stdout, b"\n").unwrap();
        l.write(Stream::Stdout, format!("{line}c\n").as_bytes())
            .unwrap();
        let r = records(&l);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], rec("stdout", "F", &line));
        assert_eq!(r[1], rec("stdout", "P", &line));
        assert_eq!(r[2], rec("stdout", "F", "c"));
    }

    #[test]
    fn the_unterminated_last_line_is_written_partial_at_the_end() {
        let (_d, mut l) = log();
        l.write(Stream::Stdout, b"done\nno newline").unwrap();
        assert_eq!(records(&l), [rec("stdout", "F", "done")]);
        l.finish(Stream::Stdout).unwrap();
        l.finish(Stream::Stdout).unwrap();
        assert_eq!(
            records(&l),
            [rec("stdout", "F", "done"), rec("stdout", "P", "no newline")]
        );
    }

    #[test]
    fn a_pause_mid_line_does_not_split_it() {
        let (_d, mut l) = log();
        l.write(Stream::Stdout, b"abcd").unwrap();
        assert!(records(&l).is_empty());
        l.write(Stream::Stdout, b"efgh\n").unwrap();
        assert_eq!(records(&l), [rec("stdout", "F", "abcdefgh")]);
    }

    #[test]
    fn a_long_unterminated_line_ends_in_partial_chunks() {
        let (_d, mut l) = log();
        l.write(Stream::Stdout, "c".repeat(MAX_LINE * 2).as_bytes())
            .unwrap();
        l.finish(Stream::Stdout).unwrap();
        let r = records(&l);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|x| x.1 == "P" && x.2.len() == MAX_LINE));
    }

    #[test]
    fn a_carriage_return_before_the_newline_is_dropped() {
        let (_d, mut l) = log();
        l.write(Stream::Stdout, b"crlf\r\nmid\rdle\r\r\nsplit\r")
            .unwrap();
        l.write(Stream::Stdout, b"\nkept\r").unwrap();
        l.write(Stream::Stdout, b"x\n").unwrap();
        l.write(Stream::Stderr, b"last\r").unwrap();
        l.finish(Stream::Stderr).unwrap();
        assert_eq!(
            records(&l),
            [
                rec("stdout", "F", "crlf"),
                rec("stdout", "F", "mid\rdle\r"),
                rec("stdout", "F", "split"),
                rec("stdout", "F", "kept\rx"),
                rec("stderr", "P", "last\r"),
            ]
        );
    }

    #[test]
    fn a_carriage_return_after_a_full_record_decides_its_tag() {
        let (_d, mut l) = log();
        let line = "d".repeat(MAX_LINE);
        l.write(Stream::Stdout, format!("{line}\r").as_bytes())
            .unwrap();
        l.write(Stream::Stdout, b"\n").unwrap();
        l.write(Stream::Stdout, format!("{line}\r").as_bytes())
            .unwrap();
        l.write(Stream::Stdout, b"e\n").unwrap();
        let r = records(&l);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], rec("stdout", "F", &line));
        assert_eq!(r[1], rec("stdout", "P", &line));
        assert_eq!(r[2], rec("stdout", "F", "\re"));
    }

    #[test]
    fn other_bytes_pass_through_unchanged() {
        let (_d, mut l) = log();
        l.write(Stream::Stdout, b"tab\there \x01\xff\r\n").unwrap();
        let raw = std::fs::read(l.path()).unwrap();
        assert_eq!(
            raw,
            [TS.as_bytes(), b" stdout F tab\there \x01\xff\n"].concat()
        );
    }

    #[test]
    fn reopen_starts_a_new_file_after_rotation() {
        let (d, mut l) = log();
        l.write(Stream::Stdout, b"before\nhalf").unwrap();
        let rotated = d.path().join("0.log.1");
        std::fs::rename(l.path(), &rotated).unwrap();
        // Without reopen the writer keeps writing into the renamed file.
        l.write(Stream::Stdout, b" a\n").unwrap();
        l.reopen().unwrap();
        l.write(Stream::Stdout, b"after\n").unwrap();
        let old = std::fs::read_to_string(&rotated).unwrap();
        assert_eq!(old, format!("{TS} stdout F before\n{TS} stdout F half a\n"));
        assert_eq!(content(&l), format!("{TS} stdout F after\n"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(l.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o640 & !umask());
    }

    /// Read, not set: setting it would race with other tests creating files.
    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line[6..].trim(), 8).unwrap()
    }

    #[test]
    fn the_open_lines_of_both_streams_are_bounded() {
        let (_d, mut l) = log();
        let big = vec![b'x'; MAX_LINE * 8];
        l.write(Stream::Stdout, &big).unwrap();
        l.write(Stream::Stderr, &big).unwrap();
        assert!(l.open.iter().all(|p| p.content.len() <= MAX_LINE));
        assert_eq!(records(&l).len(), 14);
    }
}
