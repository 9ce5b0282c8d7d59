//! What text people may put in front of other people: room names and message texts.
//!
//! Both are shown to every member, so neither may carry characters that change how *other*
//! text renders or that cannot be seen at all. Room names are strict (no control characters, no
//! bidirectional overrides or isolates, no zero-width tricks, something visible); message text
//! keeps newlines and tabs and refuses every other control character. The backend, the
//! scheduler and the session servers all call these functions, so the rules cannot drift.

use std::fmt;

use crate::api::MAX_ROOM_NAME_CHARS;

/// Why a room name or a message text was refused. `Display` is the message shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// Longer than [`MAX_ROOM_NAME_CHARS`].
    NameTooLong,
    /// A control character (U+0000–U+001F, U+007F–U+009F, line and paragraph separators).
    NameControl,
    /// A bidirectional override, embedding, isolate or mark (U+202A–U+202E, U+2066–U+2069,
    /// U+200E, U+200F, U+061C).
    NameBidi,
    /// An invisible formatting character that is never needed in a name (zero-width space,
    /// word joiner, BOM, soft hyphen, ...).
    NameInvisible,
    /// Nothing visible at all (only spaces and zero-width joiners, say).
    NameBlank,
    /// A control character other than newline and tab in a message.
    TextControl,
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::NameTooLong => {
                write!(f, "room names are at most {MAX_ROOM_NAME_CHARS} characters")
            }
            TextError::NameControl => f.write_str("room names cannot contain control characters"),
            TextError::NameBidi => f.write_str(
                "room names cannot contain bidirectional override, isolate or mark characters",
            ),
            TextError::NameInvisible => f.write_str(
                "room names cannot contain invisible characters (zero-width and the like)",
            ),
            TextError::NameBlank => f.write_str("room names need at least one visible character"),
            TextError::TextControl => f.write_str(
                "message text cannot contain control characters other than newline and tab",
            ),
        }
    }
}

impl std::error::Error for TextError {}

/// Characters that reorder the text around them: explicit embeddings and overrides, isolates,
/// and the directional marks.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Control characters: C0, DEL, C1, and the line and paragraph separators.
fn is_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Characters that draw nothing. Joiners and variation selectors are legitimate inside emoji
/// sequences and some scripts; the others are only ever used to hide or fake text.
fn is_invisible(c: char) -> bool {
    is_joiner(c)
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'
                | '\u{2060}'..='\u{2064}'
                | '\u{206A}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// Zero-width (non-)joiners and variation selectors: allowed inside a name, never alone.
fn is_joiner(c: char) -> bool {
    matches!(c, '\u{200C}' | '\u{200D}' | '\u{FE00}'..='\u{FE0F}')
}

/// Checks a room name as given by a user and returns it trimmed; `Ok(None)` for a blank name
/// made of ordinary spaces (the caller uses the room id instead).
pub fn room_name(name: &str) -> Result<Option<&str>, TextError> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(None);
    }
    if name.chars().count() > MAX_ROOM_NAME_CHARS {
        return Err(TextError::NameTooLong);
    }
    if name.chars().any(is_control) {
        return Err(TextError::NameControl);
    }
    if name.chars().any(is_bidi_control) {
        return Err(TextError::NameBidi);
    }
    if name.chars().any(|c| is_invisible(c) && !is_joiner(c)) {
        return Err(TextError::NameInvisible);
    }
    if name.chars().all(|c| c.is_whitespace() || is_invisible(c)) {
        return Err(TextError::NameBlank);
    }
    Ok(Some(name))
}

/// Checks a message text: newlines and tabs are kept, other control characters refused.
pub fn message_text(text: &str) -> Result<(), TextError> {
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        Err(TextError::TextControl)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass_trimmed() {
        assert_eq!(room_name("  lobby "), Ok(Some("lobby")));
        assert_eq!(room_name("café ☕ 東京"), Ok(Some("café ☕ 東京")));
        assert_eq!(room_name("שלום world"), Ok(Some("שלום world")));
        // A family emoji is joined with U+200D; a heart with a variation selector.
        assert!(
            room_name("👩\u{200D}👩\u{200D}👧 ❤\u{FE0F}")
                .unwrap()
                .is_some()
        );
        assert_eq!(room_name("   "), Ok(None));
        assert_eq!(room_name(&"é".repeat(64)).map(|n| n.is_some()), Ok(true));
    }

    #[test]
    fn spoofing_names_are_refused() {
        assert_eq!(room_name(&"a".repeat(65)), Err(TextError::NameTooLong));
        assert_eq!(room_name("a\nb"), Err(TextError::NameControl));
        assert_eq!(room_name("a\u{0}b"), Err(TextError::NameControl));
        assert_eq!(room_name("a\u{85}b"), Err(TextError::NameControl));
        assert_eq!(room_name("a\u{2028}b"), Err(TextError::NameControl));
        for bidi in [
            '\u{202E}', '\u{202A}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}',
        ] {
            assert_eq!(
                room_name(&format!("admin{bidi}txt.exe")),
                Err(TextError::NameBidi)
            );
        }
        assert_eq!(room_name("ad\u{200B}min"), Err(TextError::NameInvisible));
        assert_eq!(room_name("\u{FEFF}x"), Err(TextError::NameInvisible));
        assert_eq!(room_name("\u{200D}\u{200C}"), Err(TextError::NameBlank));
        assert_eq!(room_name("\u{3000}\u{200D}"), Err(TextError::NameBlank));
        assert!(!TextError::NameBidi.to_string().is_empty());
    }

    #[test]
    fn message_text_keeps_newlines_and_tabs_only() {
        assert!(message_text("line one\nline two\tcolumn").is_ok());
        assert!(message_text("rtl \u{202E} is not a control character").is_ok());
        assert_eq!(message_text("nul\u{0}"), Err(TextError::TextControl));
        assert_eq!(message_text("bell\u{7}"), Err(TextError::TextControl));
        assert_eq!(message_text("cr\r\n"), Err(TextError::TextControl));
        assert_eq!(message_text("esc\u{1b}[31m"), Err(TextError::TextControl));
    }
}
