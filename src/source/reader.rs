//! Input files and standard input, one delivery at a time.
//!
//! Backfills and replays can be millions of deliveries, so nothing reads a whole NDJSON file:
//! lines are read one by one through a buffered reader and handed on with their line number,
//! which every error message carries. Lines are read as bytes, so that one that is not UTF-8 is
//! rejected on its own rather than ending the input.
//!
//! Standard input may be a pipe that stays open and quiet between deliveries (a capture
//! tail): [`Lines::would_read`] tells the caller when the next line may be a wait, so that
//! nothing already read is held back meanwhile.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where deliveries come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    /// `-` is standard input; anything else a file.
    pub fn from_arg(arg: &str) -> Input {
        if arg == "-" {
            Input::Stdin
        } else {
            Input::File(PathBuf::from(arg))
        }
    }

    /// The name used in messages.
    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "<stdin>".into(),
            Input::File(path) => path.display().to_string(),
        }
    }

    /// A `.json` file holds one delivery (possibly pretty-printed over many lines); everything
    /// else (`.ndjson`, `.jsonl`, standard input) holds one delivery per line.
    fn is_single_document(&self) -> bool {
        matches!(self, Input::File(path) if has_extension(path, "json"))
    }
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// The deliveries in the text of a file already read (an example, a test's delivery, a
/// fixture), by the same rule as [`read_lines`]: a `.json` file is one delivery, any other holds
/// one a line, blank lines skipped.
pub fn deliveries_in<'a>(name: &str, text: &'a str) -> Vec<&'a str> {
    if has_extension(Path::new(name), "json") {
        vec![text]
    } else {
        text.lines().filter(|l| !l.trim().is_empty()).collect()
    }
}

/// One delivery's text and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub origin: Arc<str>,
    /// 1-based; for a `.json` file, the line the document starts on.
    pub number: usize,
    pub text: String,
    /// Where the bytes read stop being UTF-8 (1-based, like a column), if they do. `text` then
    /// holds them with each bad sequence replaced by U+FFFD: the line is rejected, but its
    /// text is still kept with the rejection so nothing read is lost.
    pub not_utf8_at: Option<usize>,
}

/// Bytes read as text, and where they stop being UTF-8 (1-based, like a column), if they do:
/// each bad sequence is then replaced by U+FFFD, so that what is rejected is still kept. A
/// line of a file and a webhook's body are read the same way.
pub fn text_of(bytes: Vec<u8>) -> (String, Option<usize>) {
    match String::from_utf8(bytes) {
        Ok(text) => (text, None),
        Err(e) => {
            let at = e.utf8_error().valid_up_to() + 1;
            (String::from_utf8_lossy(e.as_bytes()).into_owned(), Some(at))
        }
    }
}

impl Line {
    fn from_bytes(origin: Arc<str>, number: usize, bytes: Vec<u8>) -> Line {
        let (text, not_utf8_at) = text_of(bytes);
        Line {
            origin,
            number,
            text,
            not_utf8_at,
        }
    }
}

/// The deliveries of one input, read lazily. Blank lines are skipped.
///
/// A read that fails ends the input: the error is the last item, naming the input and the
/// line, and the caller goes on with its next input. Retrying would only fail again, or
/// loop on the same bytes.
pub struct Lines {
    origin: Arc<str>,
    /// `None` once the input is read to its end or failed.
    reader: Option<BufReader<Box<dyn Read>>>,
    single_document: bool,
    number: usize,
}

/// Opens `input`; fails only if it cannot be opened, with a message naming it.
pub fn read_lines(input: &Input) -> io::Result<Lines> {
    let reader: Box<dyn Read> = match input {
        Input::Stdin => Box::new(io::stdin()),
        Input::File(path) => Box::new(File::open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
        })?),
    };
    Ok(Lines {
        origin: input.name().into(),
        reader: Some(BufReader::with_capacity(256 * 1024, reader)),
        single_document: input.is_single_document(),
        number: 0,
    })
}

impl Lines {
    /// Whether nothing read is left in hand, so the next line needs a read from the input
    /// itself. From a quiet pipe that read waits, so whatever is held back for speed (a
    /// partial batch, buffered output) must go out first. From a file this is true once per
    /// buffer (256 KB), which leaves the batching intact.
    pub fn would_read(&self) -> bool {
        self.reader.as_ref().is_none_or(|r| r.buffer().is_empty())
    }

    fn failed(&mut self, e: io::Error) -> io::Error {
        self.reader = None;
        io::Error::new(
            e.kind(),
            format!("{}:{}: cannot read: {e}", self.origin, self.number + 1),
        )
    }

    fn document(&mut self) -> Option<io::Result<Line>> {
        let mut bytes = Vec::new();
        let read = self.reader.as_mut()?.read_to_end(&mut bytes);
        if let Err(e) = read {
            return Some(Err(self.failed(e)));
        }
        self.reader = None;
        let blank = |l: &[u8]| l.iter().all(u8::is_ascii_whitespace);
        let start = bytes.split(|b| *b == b'\n').position(|l| !blank(l))?;
        Some(Ok(Line::from_bytes(
            Arc::clone(&self.origin),
            start + 1,
            bytes,
        )))
    }
}

impl Iterator for Lines {
    type Item = io::Result<Line>;

    fn next(&mut self) -> Option<io::Result<Line>> {
        if self.single_document {
            return self.document();
        }
        loop {
            let mut bytes = Vec::new();
            match self.reader.as_mut()?.read_until(b'\n', &mut bytes) {
                Ok(0) => {
                    self.reader = None;
                    return None;
                }
                Ok(_) => {
                    self.number += 1;
                    if bytes.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some(Ok(Line::from_bytes(
                        Arc::clone(&self.origin),
                        self.number,
                        bytes,
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(self.failed(e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn ndjson_lines_keep_their_numbers_and_skip_blanks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ndjson");
        let mut f = File::create(&path).unwrap();
        writeln!(f, "{{\"a\":1}}\n\n{{\"b\":2}}").unwrap();
        let lines: Vec<Line> = read_lines(&Input::File(path))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.iter().map(|l| l.number).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(lines[1].text.trim(), "{\"b\":2}");
    }

    #[test]
    fn a_json_file_is_one_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.json");
        std::fs::write(&path, "\n{\n  \"a\": 1\n}\n").unwrap();
        let lines: Vec<Line> = read_lines(&Input::File(path))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].number, 2);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_kept_marked_and_the_next_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ndjson");
        std::fs::write(&path, b"{\"a\":\"\xff\"}\n{\"b\":2}\n").unwrap();
        let lines: Vec<Line> = read_lines(&Input::File(path))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines[0].not_utf8_at, Some(7));
        assert_eq!(lines[0].text, "{\"a\":\"\u{fffd}\"}\n");
        assert_eq!((lines[1].number, lines[1].not_utf8_at), (2, None));
    }

    #[test]
    fn a_failed_read_names_the_input_and_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines = read_lines(&Input::File(dir.path().to_path_buf())).unwrap();
        let err = lines.next().unwrap().unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}:1: cannot read", dir.path().display())),
            "{err}"
        );
        assert!(lines.next().is_none());
    }

    #[test]
    fn a_missing_file_names_itself() {
        let err = read_lines(&Input::File("/nope/x.ndjson".into()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nope/x.ndjson"));
    }
}
