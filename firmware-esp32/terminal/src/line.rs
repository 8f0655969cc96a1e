//! The line being typed: printable bytes (UTF-8 passes through), backspace, Ctrl-U,
//! Enter, and the up and down arrows through the lines sent before. A secret line (a
//! passphrase) is not echoed and not kept in the history.

use heapless::{Deque, Vec};

/// The longest line: a chat message's body plus room for a command.
pub const LINE_MAX: usize = 320;
/// Lines kept for the up arrow.
pub const HISTORY_LINES: usize = 8;

/// What the terminal should do after a byte. (A submitted line is returned by value:
/// it is the size of the line buffer, and it is handled at once.)
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Edit {
    /// Nothing to show.
    Nothing,
    /// Echo these bytes (the typed character).
    Echo(Vec<u8, 4>),
    /// Erase the last character on screen.
    Erase,
    /// Redraw the whole input line (Ctrl-U, history).
    Redraw,
    /// The line is complete.
    Submit(Vec<u8, LINE_MAX>),
    /// The line is full; the byte was dropped.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Esc,
    Csi,
}

/// A line editor with a small history.
#[derive(Debug, Clone)]
pub struct LineEditor {
    line: Vec<u8, LINE_MAX>,
    history: Deque<Vec<u8, LINE_MAX>, HISTORY_LINES>,
    browsing: Option<usize>,
    escape: Escape,
    after_cr: bool,
    secret: bool,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            line: Vec::new(),
            history: Deque::new(),
            browsing: None,
            escape: Escape::None,
            after_cr: false,
            secret: false,
        }
    }

    /// The line so far.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// Whether the line is a secret (not echoed, not kept).
    pub fn is_secret(&self) -> bool {
        self.secret
    }

    /// Makes the next line secret, or not.
    pub fn set_secret(&mut self, secret: bool) {
        self.secret = secret;
    }

    /// Handles one byte from the console.
    pub fn feed(&mut self, byte: u8) -> Edit {
        let after_cr = core::mem::replace(&mut self.after_cr, false);
        match self.escape {
            Escape::Esc => {
                self.escape = if byte == b'[' { Escape::Csi } else { Escape::None };
                return Edit::Nothing;
            }
            Escape::Csi => {
                // Parameters and intermediates until the final byte.
                if (0x40..=0x7e).contains(&byte) {
                    self.escape = Escape::None;
                    return match byte {
                        b'A' => self.browse(true),
                        b'B' => self.browse(false),
                        _ => Edit::Nothing,
                    };
                }
                return Edit::Nothing;
            }
            Escape::None => {}
        }
        match byte {
            0x1b => {
                self.escape = Escape::Esc;
                Edit::Nothing
            }
            b'\r' => {
                self.after_cr = true;
                self.submit()
            }
            // A newline right after a carriage return ends the same line.
            b'\n' if after_cr => Edit::Nothing,
            b'\n' => self.submit(),
            0x08 | 0x7f => {
                if self.line.is_empty() {
                    return Edit::Nothing;
                }
                // A whole UTF-8 character: its continuation bytes, then its lead.
                while let Some(last) = self.line.pop() {
                    if last & 0xc0 != 0x80 {
                        break;
                    }
                }
                if self.secret { Edit::Nothing } else { Edit::Erase }
            }
            0x15 => {
                self.line.clear();
                self.browsing = None;
                Edit::Redraw
            }
            byte if byte < 0x20 => Edit::Nothing,
            byte => {
                if self.line.push(byte).is_err() {
                    return Edit::Full;
                }
                if self.secret {
                    return Edit::Nothing;
                }
                let mut echo = Vec::new();
                let _ = echo.push(byte);
                Edit::Echo(echo)
            }
        }
    }

    fn submit(&mut self) -> Edit {
        let line = core::mem::take(&mut self.line);
        self.browsing = None;
        if self.secret {
            self.secret = false;
        } else if !line.is_empty() && self.history.back() != Some(&line) {
            if self.history.is_full() {
                self.history.pop_front();
            }
            let _ = self.history.push_back(line.clone());
        }
        Edit::Submit(line)
    }

    fn browse(&mut self, older: bool) -> Edit {
        if self.secret || self.history.is_empty() {
            return Edit::Nothing;
        }
        let newest = self.history.len() - 1;
        self.browsing = match (self.browsing, older) {
            (None, true) => Some(newest),
            (None, false) => return Edit::Nothing,
            (Some(0), true) => Some(0),
            (Some(i), true) => Some(i - 1),
            (Some(i), false) if i >= newest => None,
            (Some(i), false) => Some(i + 1),
        };
        self.line = match self.browsing {
            Some(i) => self.history.iter().nth(i).cloned().unwrap_or_default(),
            None => Vec::new(),
        };
        Edit::Redraw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(editor: &mut LineEditor, bytes: &[u8]) -> std::vec::Vec<Edit> {
        bytes.iter().map(|&b| editor.feed(b)).collect()
    }

    fn submitted(edit: &Edit) -> &[u8] {
        match edit {
            Edit::Submit(line) => line,
            other => panic!("not a submit: {other:?}"),
        }
    }

    #[test]
    fn typing_echoes_and_enter_submits_once_for_crlf() {
        let mut editor = LineEditor::new();
        let edits = typed(&mut editor, b"hi\r\n");
        assert_eq!(edits[0], Edit::Echo(Vec::from_slice(b"h").unwrap()));
        assert_eq!(submitted(&edits[2]), b"hi");
        assert_eq!(edits[3], Edit::Nothing);
        let edits = typed(&mut editor, b"\n");
        assert_eq!(submitted(&edits[0]), b"", "a lone newline is an (empty) line");
    }

    #[test]
    fn backspace_removes_whole_utf8_characters_and_ctrl_u_clears() {
        let mut editor = LineEditor::new();
        typed(&mut editor, "añ".as_bytes());
        assert_eq!(editor.feed(0x7f), Edit::Erase);
        assert_eq!(editor.line(), b"a");
        assert_eq!(editor.feed(0x08), Edit::Erase);
        assert_eq!(editor.feed(0x7f), Edit::Nothing, "nothing left to erase");
        typed(&mut editor, b"abc");
        assert_eq!(editor.feed(0x15), Edit::Redraw);
        assert_eq!(editor.line(), b"");
    }

    #[test]
    fn arrows_walk_the_history_and_secrets_are_not_kept() {
        let mut editor = LineEditor::new();
        typed(&mut editor, b"one\rtwo\r");
        editor.set_secret(true);
        let edits = typed(&mut editor, b"hunter2\r");
        assert!(edits[..7].iter().all(|e| *e == Edit::Nothing), "a secret is not echoed");
        assert_eq!(submitted(&edits[7]), b"hunter2");
        assert!(!editor.is_secret(), "only one line is secret");
        typed(&mut editor, b"\x1b[A");
        assert_eq!(editor.line(), b"two");
        typed(&mut editor, b"\x1b[A\x1b[A");
        assert_eq!(editor.line(), b"one", "stops at the oldest");
        typed(&mut editor, b"\x1b[B");
        assert_eq!(editor.line(), b"two");
        typed(&mut editor, b"\x1b[B");
        assert_eq!(editor.line(), b"", "past the newest: an empty line");
        typed(&mut editor, b"\x1b[1;5C");
        assert_eq!(editor.line(), b"", "other sequences are swallowed whole");
    }

    #[test]
    fn a_full_line_drops_bytes_and_the_history_is_bounded() {
        let mut editor = LineEditor::new();
        for _ in 0..LINE_MAX {
            editor.feed(b'x');
        }
        assert_eq!(editor.feed(b'y'), Edit::Full);
        editor.feed(b'\r');
        for i in 0..20u8 {
            editor.feed(b'a' + i);
            editor.feed(b'\r');
        }
        for _ in 0..10 {
            typed(&mut editor, b"\x1b[A");
        }
        assert_eq!(editor.line(), b"m", "the oldest of the last {HISTORY_LINES} lines");
    }
}
