//! A value from a spec file together with where it was written, file included.
//!
//! serde-saphyr's own `Spanned` knows the line and column but not the file. A client overlay
//! merges values from its own file into a base mapping, so the compiler must be able to point
//! at either file from one merged spec; this wrapper stamps each position with the id of the
//! file being parsed.

use crate::diagnostic::{FileId, Position};
use serde::{Deserialize, Deserializer};
use std::cell::Cell;

/// A value and the position of its first character.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub at: Position,
}

impl<T> Spanned<T> {
    pub fn new(value: T, at: Position) -> Self {
        Spanned { value, at }
    }
}

thread_local! {
    /// The file being parsed on this thread; see [`parsing`].
    static PARSING: Cell<FileId> = const { Cell::new(FileId(0)) };
}

/// Runs `parse` with every [`Spanned`] it creates stamped with `file`. Deserialisation cannot
/// be handed context any other way, and parsing one file never spans threads.
pub(crate) fn parsing<R>(file: FileId, parse: impl FnOnce() -> R) -> R {
    let previous = PARSING.with(|current| current.replace(file));
    let result = parse();
    PARSING.with(|current| current.set(previous));
    result
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        let file = PARSING.with(Cell::get);
        Ok(Spanned {
            value: spanned.value,
            at: Position::of(&spanned.referenced).in_file(file),
        })
    }
}

/// Written back as the bare value: `marketsync config` prints specs as a consultant writes them.
impl<T: serde::Serialize> serde::Serialize for Spanned<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}
