//! Strict reading of CRI container logs (`<RFC3339Nano> <stdout|stderr> <P|F> <content>`),
//! line by line, so logs of hundreds of megabytes can be checked without holding them.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

/// One record of a CRI log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The RFC 3339 time with nanoseconds.
    pub time: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// Whether the record ends a line (`F`) or is a partial chunk (`P`).
    pub full: bool,
    /// The bytes, without the newline.
    pub content: &'a [u8],
}

/// Parses one record (without its newline), or says what is wrong with it.
pub fn parse_record(line: &[u8]) -> Result<Record<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = fields.next().unwrap_or_default();
    let stream = fields.next().unwrap_or_default();
    let tag = fields.next().unwrap_or_default();
    let Some(content) = fields.next() else {
        bail!("record {:?} has fewer than four fields", lossy(line));
    };
    let time = std::str::from_utf8(time).context("time is not UTF-8")?;
    ensure!(is_rfc3339_nano(time), "bad time {time:?}");
    let stream = match stream {
        b"stdout" => "stdout",
        b"stderr" => "stderr",
        other => bail!("bad stream {:?}", lossy(other)),
    };
    let full = match tag {
        b"F" => true,
        b"P" => false,
        other => bail!("bad tag {:?}", lossy(other)),
    };
    Ok(Record {
        time,
        stream,
        full,
        content,
    })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned()
}

/// Whether `s` is an RFC 3339 time with a fraction of up to 9 digits.
pub fn is_rfc3339_nano(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let shape = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &frac[n..];
    }
    rest == "Z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':')
}

/// Reads the log at `path`, checking every record, and hands each full line of `stream`
/// (partial chunks joined) to `line`. A trailing partial chunk (a writer killed mid-line) is
/// handed over as it is. Returns how many records there were.
pub fn for_each_line(
    path: &Path,
    stream: &str,
    mut line: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    let mut partial = Vec::new();
    let mut records = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        records += 1;
        ensure!(
            buf.last() == Some(&b'\n'),
            "{}: record {records} does not end in a newline: {:?}",
            path.display(),
            lossy(&buf)
        );
        let rec = parse_record(&buf[..buf.len() - 1])
            .with_context(|| format!("{}: record {records}", path.display()))?;
        if rec.stream != stream {
            continue;
        }
        partial.extend_from_slice(rec.content);
        if rec.full {
            line(&partial)?;
            partial.clear();
        }
    }
    if !partial.is_empty() {
        line(&partial)?;
    }
    Ok(records)
}

/// One record of a CRI log, owned: (time, stream, tag, content).
pub type LogLine = (String, String, String, String);

/// The records of a small CRI log file (none if it does not exist yet), each checked for the
/// format; a last line still being written is kept as it is.
pub fn read_log(path: &Path) -> Result<Vec<LogLine>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let mut out = Vec::new();
    for line in text.split_terminator('\n') {
        let mut f = line.splitn(4, ' ');
        let (ts, stream, tag) = (
            f.next().unwrap_or_default(),
            f.next().unwrap_or_default(),
            f.next().unwrap_or_default(),
        );
        let content = f.next().unwrap_or_default();
        ensure!(is_rfc3339_nano(ts), "log line {line:?}: bad timestamp");
        ensure!(
            stream == "stdout" || stream == "stderr",
            "log line {line:?}: bad stream"
        );
        ensure!(tag == "F" || tag == "P", "log line {line:?}: bad tag");
        out.push((
            ts.to_string(),
            stream.to_string(),
            tag.to_string(),
            content.to_string(),
        ));
    }
    Ok(out)
}

/// The full lines of one stream of `log`, partial chunks joined.
pub fn stream_lines(log: &[LogLine], stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut partial = String::new();
    for (_, s, tag, content) in log {
        if s != stream {
            continue;
        }
        partial.push_str(content);
        if tag == "F" {
            out.push(std::mem::take(&mut partial));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_records() {
        let r = parse_record(b"2024-01-02T03:04:05.123456789Z stdout F hello world").unwrap();
        assert_eq!(r.stream, "stdout");
        assert!(r.full);
        assert_eq!(r.content, b"hello world");
        let r = parse_record(b"2024-01-02T03:04:05.1+02:00 stderr P ").unwrap();
        assert!(!r.full);
        assert_eq!(r.content, b"");
        for bad in [
            &b"2024-01-02 stdout F x"[..],
            b"2024-01-02T03:04:05Z stdin F x",
            b"2024-01-02T03:04:05Z stdout X x",
            b"2024-01-02T03:04:05Z stdout F",
        ] {
            assert!(
                parse_record(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn reads_small_logs_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        assert!(read_log(&path).unwrap().is_empty());
        let t = "2024-01-02T03:04:05.000000001Z";
        std::fs::write(
            &path,
            format!("{t} stdout P a\n{t} stderr F e\n{t} stdout F b\n{t} stdout F \n"),
        )
        .unwrap();
        let log = read_log(&path).unwrap();
        assert_eq!(log.len(), 4);
        assert_eq!(stream_lines(&log, "stdout"), vec!["ab", ""]);
        assert_eq!(stream_lines(&log, "stderr"), vec!["e"]);
        std::fs::write(&path, format!("{t} stdin F x\n")).unwrap();
        assert!(read_log(&path).is_err());
        std::fs::write(&path, "yesterday stdout F x\n").unwrap();
        assert!(read_log(&path).is_err());
    }

    #[test]
    fn joins_partial_chunks_and_checks_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let t = "2024-01-02T03:04:05.000000001Z";
        std::fs::write(
            &path,
            format!("{t} stdout P ab\n{t} stderr F err\n{t} stdout F c\n{t} stdout P tail\n"),
        )
        .unwrap();
        let mut lines = Vec::new();
        let n = for_each_line(&path, "stdout", |l| {
            lines.push(String::from_utf8_lossy(l).into_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 4);
        assert_eq!(lines, vec!["abc", "tail"]);
        std::fs::write(&path, format!("{t} stdout F ok\ngarbage\n")).unwrap();
        assert!(for_each_line(&path, "stdout", |_| Ok(())).is_err());
        std::fs::write(&path, format!("{t} stdout F cut")).unwrap();
        assert!(for_each_line(&path, "stdout", |_| Ok(())).is_err());
    }
}
