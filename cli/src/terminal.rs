//! The screen of `berth chat`: chat lines printed above a line editor (`rustyline`) so that
//! what arrives never breaks into the line being typed, or plain stdout/stderr when stdin or
//! stdout is not a terminal.
//!
//! The editor runs on a thread of its own (it blocks reading keys) and hands typed lines over a
//! channel. Lines printed while it edits go through its external printer, which redraws the
//! prompt below them. The screen counts the rows it printed, so a line shown as pending can be
//! marked confirmed in place later.

use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex};

use rustyline::error::ReadlineError;
use tokio::sync::mpsc;

/// The prompt of the line editor.
pub const PROMPT: &str = "> ";

/// What the user did.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// A line typed (and erased from the screen: the chat shows it as a message instead).
    Line(String),
    /// End of input (Ctrl-D, Ctrl-C, or stdin closed).
    End,
}

type Printer = Box<dyn rustyline::ExternalPrinter + Send>;

/// Shared between the async chat loop and the editor thread.
struct Shared {
    /// `None` on a plain (non-terminal) screen.
    printer: Option<Printer>,
    /// Whether the editor is (about to be) reading a line: only then do printed lines go
    /// through it; otherwise they wait in `held`, so that nothing is written to the terminal
    /// while the editor thread erases the line just typed.
    editing: bool,
    held: Vec<String>,
    /// Rows printed so far (wrapped lines count several).
    rows: u64,
    /// The terminal's size (columns, rows).
    size: (usize, usize),
}

/// Where the chat writes. Cheap to clone.
#[derive(Clone)]
pub struct Screen {
    shared: Arc<Mutex<Shared>>,
}

impl Screen {
    /// A screen over the terminal with a line editor when stdin and stdout are terminals,
    /// otherwise plain lines read from stdin. Typed lines arrive on the returned channel.
    pub fn start() -> (Screen, mpsc::UnboundedReceiver<Input>) {
        let (tx, rx) = mpsc::unbounded_channel();
        if std::io::stdin().is_terminal()
            && std::io::stdout().is_terminal()
            && let Some(screen) = Self::start_editor(tx.clone())
        {
            return (screen, rx);
        }
        let screen = Screen::plain();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt as _;
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(Input::Line(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Input::End);
        });
        (screen, rx)
    }

    /// A screen writing plain lines (conversation on stdout, notes on stderr).
    pub fn plain() -> Screen {
        Screen {
            shared: Arc::new(Mutex::new(Shared {
                printer: None,
                editing: false,
                held: Vec::new(),
                rows: 0,
                size: (80, 24),
            })),
        }
    }

    fn start_editor(tx: mpsc::UnboundedSender<Input>) -> Option<Screen> {
        remember_mode();
        let config = rustyline::Config::builder().auto_add_history(true).build();
        let mut editor = rustyline::DefaultEditor::with_config(config).ok()?;
        let printer: Printer = Box::new(editor.create_external_printer().ok()?);
        let size = dimensions(&mut editor).unwrap_or((80, 24));
        let screen = Screen {
            shared: Arc::new(Mutex::new(Shared {
                printer: Some(printer),
                editing: false,
                held: Vec::new(),
                rows: 0,
                size,
            })),
        };
        let shared = screen.shared.clone();
        std::thread::Builder::new()
            .name("berth-line-editor".into())
            .spawn(move || edit_lines(editor, shared, tx))
            .ok()?;
        Some(screen)
    }

    /// Whether a line editor owns the terminal.
    pub fn is_terminal(&self) -> bool {
        self.lock().printer.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prints a conversation line; returns the row it starts on (for [`Screen::rewrite`]).
    pub fn line(&self, text: &str) -> u64 {
        let mut s = self.lock();
        let start = s.rows;
        if s.printer.is_none() {
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            return start;
        }
        s.rows += rows_of(text, s.size.0);
        s.emit(format!("{text}\n"));
        start
    }

    /// Prints a status line (`* text`): on stderr for a plain screen, so stdout holds only the
    /// conversation.
    pub fn note(&self, text: &str) {
        let line = format!("* {text}");
        if !self.is_terminal() {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
            return;
        }
        self.line(&line);
    }

    /// Overwrites the start of the line printed at row `start` with `prefix` (of the same
    /// width as what it replaces). False when that cannot be done (plain screen, or the line
    /// has scrolled out of sight): the caller then prints the line anew.
    pub fn rewrite(&self, start: u64, prefix: &str) -> bool {
        let mut s = self.lock();
        if s.printer.is_none() {
            return false;
        }
        let up = s.rows.saturating_sub(start);
        if up == 0 || up + 1 >= s.size.1 as u64 {
            return false;
        }
        // From the prompt's first row: up to the line, write, back down to the row above the
        // prompt; the newline ends there, where the editor redraws its prompt.
        let down = if up > 1 {
            format!("\x1b[{}B", up - 1)
        } else {
            String::new()
        };
        s.emit(format!("\x1b[{up}A\r{prefix}{down}\r\n"));
        true
    }
}

impl Shared {
    fn emit(&mut self, text: String) {
        if !self.editing {
            self.held.push(text);
            return;
        }
        if let Some(printer) = self.printer.as_mut() {
            let _ = printer.print(text);
        }
    }
}

/// The terminal's (columns, rows).
fn dimensions(editor: &mut rustyline::DefaultEditor) -> Option<(usize, usize)> {
    editor
        .dimensions()
        .map(|(cols, rows)| (usize::from(cols), usize::from(rows)))
}

/// How many terminal rows `text` takes at `cols` columns (one per started row).
pub fn rows_of(text: &str, cols: usize) -> u64 {
    let width = text.chars().count().max(1);
    width.div_ceil(cols.max(1)) as u64
}

/// The editor thread: read a line, erase it from the screen, hand it over; until the end.
fn edit_lines(
    mut editor: rustyline::DefaultEditor,
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::UnboundedSender<Input>,
) {
    loop {
        {
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(size) = dimensions(&mut editor) {
                s.size = size;
            }
            s.editing = true;
            for text in std::mem::take(&mut s.held) {
                if let Some(printer) = s.printer.as_mut() {
                    let _ = printer.print(text);
                }
            }
        }
        let read = editor.readline(PROMPT);
        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
        s.editing = false;
        let input = match read {
            Ok(line) => {
                // The editor left "> line" on screen: the chat shows it as a message instead.
                let rows = rows_of(&format!("{PROMPT}{line}"), s.size.0);
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "\x1b[{rows}A\r\x1b[J");
                let _ = out.flush();
                Input::Line(line)
            }
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => Input::End,
            Err(ReadlineError::Signal(_)) => continue,
            Err(_) => Input::End,
        };
        drop(s);
        let end = input == Input::End;
        if tx.send(input).is_err() || end {
            break;
        }
    }
}

/// The terminal's mode from before the editor, put back by [`restore_mode`] when `berth chat`
/// ends (the editor thread may still hold the terminal in raw mode then).
static SAVED_MODE: Mutex<Option<nix::sys::termios::Termios>> = Mutex::new(None);

/// Remembers the terminal's mode now (call before starting the editor).
pub fn remember_mode() {
    if std::io::stdin().is_terminal()
        && let Ok(mode) = nix::sys::termios::tcgetattr(std::io::stdin())
    {
        *SAVED_MODE.lock().unwrap_or_else(|e| e.into_inner()) = Some(mode);
    }
}

/// Puts back the mode saved by [`remember_mode`].
pub fn restore_mode() {
    if let Some(mode) = SAVED_MODE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            mode,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_count_wrapped_lines() {
        assert_eq!(rows_of("", 80), 1);
        assert_eq!(rows_of("hello", 80), 1);
        assert_eq!(rows_of(&"x".repeat(80), 80), 1);
        assert_eq!(rows_of(&"x".repeat(81), 80), 2);
        assert_eq!(rows_of(&"é".repeat(160), 80), 2);
    }

    #[test]
    fn a_plain_screen_cannot_rewrite() {
        let screen = Screen::plain();
        assert!(!screen.is_terminal());
        assert!(!screen.rewrite(0, "[12:00:00]"));
    }
}
