//! Names that one side chooses and the other side shows or stores (a client's host name, a
//! file name, an operator name), made inert.
//!
//! A name must show what it is. Unicode format characters (general category Cf) change how
//! the characters around them are displayed without being visible themselves: U+202E RIGHT-TO-
//! LEFT OVERRIDE turns `invoice\u{202E}fdp.exe` into what reads as `invoiceexe.pdf`, zero-width
//! spaces make two different names look the same, a byte-order mark hides at the start.
//! Control characters (category Cc) move the cursor, clear a terminal or split a log or CSV
//! row. Both kinds are removed wherever a peer's name is shown or stored; the category table
//! comes from `unicode-general-category`, so new format characters are covered as Unicode
//! adds them.

use unicode_general_category::{get_general_category, GeneralCategory};

/// Whether `c` may not appear in a name that is shown or stored: a control character (Cc:
/// C0, DEL, C1), a format character (Cf: bidi embeddings, overrides and isolates, zero-width
/// spaces and joiners, the byte-order mark, tag characters), or the line and paragraph
/// separators U+2028 and U+2029 (categories Zl and Zp), which break a label, a log line or a
/// history row in two just as a newline does.
pub fn is_format_or_control(c: char) -> bool {
    matches!(
        get_general_category(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// `raw` without the characters [`is_format_or_control`] matches; everything else (letters of
/// every script, digits, punctuation, spaces, emoji) is kept as it is.
pub fn make_inert(raw: &str) -> String {
    raw.chars().filter(|c| !is_format_or_control(*c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_overrides_and_isolates_are_removed() {
        assert_eq!(make_inert("invoice\u{202E}fdp.exe"), "invoicefdp.exe");
        for c in ['\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}'] {
            assert_eq!(make_inert(&format!("a{c}b")), "ab", "U+{:04X}", c as u32);
        }
        for c in ['\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{061C}'] {
            assert_eq!(make_inert(&format!("a{c}b")), "ab", "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn zero_width_and_other_invisible_characters_are_removed() {
        // U+200B..U+200F: zero-width space, non-joiner, joiner, LRM, RLM.
        for c in '\u{200B}'..='\u{200F}' {
            assert_eq!(make_inert(&format!("pc{c}01")), "pc01", "U+{:04X}", c as u32);
        }
        // Byte-order mark, soft hyphen, word joiner, a tag character, Mongolian vowel separator.
        assert_eq!(make_inert("\u{FEFF}a\u{00AD}b\u{2060}c\u{E0041}d\u{180E}"), "abcd");
        // Line and paragraph separators split rows like a newline.
        assert_eq!(make_inert("a\u{2028}b\u{2029}c"), "abc");
    }

    #[test]
    fn control_characters_are_removed() {
        assert_eq!(make_inert("a\u{1b}[2Jb\r\n\t\0"), "a[2Jb");
        assert_eq!(make_inert("x\u{7f}y\u{85}z\u{9b}"), "xyz");
    }

    #[test]
    fn ordinary_names_of_every_script_are_kept() {
        for name in [
            "pc-01",
            "報告書.xlsx",
            "Müller's laptop",
            "مكتب المحاسبة",
            "שולחן עבודה",
            "फ़ाइल.txt",
            "😀 party.png",
            "a b",
        ] {
            assert_eq!(make_inert(name), name);
        }
        assert_eq!(make_inert(""), "");
    }
}
