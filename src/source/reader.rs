//! Input files and standard input, one delivery at a time.
//!
//! Backfills and replays can be millions of deliveries, so nothing reads a whole NDJSON file:
//! lines are read one by one through a buffered reader and handed on with their line number,
//! which every error message carries.

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
}

/// The deliveries of `input`, lazily. Blank lines are skipped.
pub fn read_lines(input: &Input) -> io::Result<Box<dyn Iterator<Item = io::Result<Line>>>> {
    let origin: Arc<str> = input.name().into();
    let reader: Box<dyn Read> = match input {
        Input::Stdin => Box::new(io::stdin()),
        Input::File(path) => Box::new(File::open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
        })?),
    };
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    if input.is_single_document() {
        let mut text = String::new();
        reader.read_to_string(&mut text)?;
        let number = text
            .lines()
            .position(|l| !l.trim().is_empty())
            .map_or(1, |i| i + 1);
        let document = (!text.trim().is_empty()).then_some(Ok(Line {
            origin,
            number,
            text,
        }));
        return Ok(Box::new(document.into_iter()));
    }
    let mut number = 0;
    Ok(Box::new(std::iter::from_fn(move || {
        loop {
            let mut text = String::new();
            match reader.read_line(&mut text) {
                Ok(0) => return None,
                Ok(_) => {
                    number += 1;
                    if text.trim().is_empty() {
                        continue;
                    }
                    return Some(Ok(Line {
                        origin: Arc::clone(&origin),
                        number,
                        text,
                    }));
                }
                Err(e) => {
                    number += 1;
                    return Some(Err(io::Error::new(
                        e.kind(),
                        format!("{origin}:{number}: cannot read: {e}"),
                    )));
                }
            }
        }
    })))
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
    fn a_missing_file_names_itself() {
        let err = read_lines(&Input::File("/nope/x.ndjson".into()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nope/x.ndjson"));
    }
}
