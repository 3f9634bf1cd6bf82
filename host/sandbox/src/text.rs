//! Bounding text a filter controls (thrown messages, trap texts, compile errors, names), so none
//! of it can grow a log line, a status message or an API answer past a documented size.

use crate::limits::MAX_ERROR_TEXT_BYTES;

/// `text` cut to [`MAX_ERROR_TEXT_BYTES`] at a character boundary, with a marker naming the
/// original length when it was cut.
pub(crate) fn bounded(text: &str) -> String {
    bounded_to(text, text.len(), MAX_ERROR_TEXT_BYTES)
}

/// [`bounded`] for bytes that may not be UTF-8 (invalid sequences become U+FFFD).
pub(crate) fn bounded_bytes(bytes: &[u8], total_len: usize) -> String {
    // Only what can be kept is decoded: a 256 KiB message costs no more than a short one.
    let head = &bytes[..bytes.len().min(MAX_ERROR_TEXT_BYTES + 4)];
    bounded_to(&String::from_utf8_lossy(head), total_len, MAX_ERROR_TEXT_BYTES)
}

/// `text` (the first part of a text of `total_len` bytes) cut to `max` bytes.
pub(crate) fn bounded_to(text: &str, total_len: usize, max: usize) -> String {
    if text.len() <= max && total_len <= max {
        return text.to_owned();
    }
    let mut cut = max.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… [truncated, {} bytes in all]", &text[..cut], total_len.max(text.len()))
}

/// Bounds an owned string in place (no copy when it is short).
pub(crate) fn bound(text: String) -> String {
    if text.len() <= MAX_ERROR_TEXT_BYTES {
        text
    } else {
        bounded(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_pass_and_long_ones_are_cut_with_a_marker() {
        assert_eq!(bounded("Error: boom"), "Error: boom");
        let long = "é".repeat(1000); // 2000 bytes
        let cut = bounded(&long);
        assert!(cut.starts_with(&"é".repeat(512)));
        assert!(cut.ends_with("… [truncated, 2000 bytes in all]"), "{cut}");
        assert_eq!(cut.len(), 1024 + "… [truncated, 2000 bytes in all]".len());
    }

    #[test]
    fn bytes_are_decoded_only_as_far_as_kept() {
        let mut bytes = vec![b'x'; 300_000];
        bytes[5] = 0xff;
        let text = bounded_bytes(&bytes, bytes.len());
        assert!(text.starts_with("xxxxx\u{fffd}x"));
        assert!(text.ends_with("… [truncated, 300000 bytes in all]"), "{}", &text[text.len() - 40..]);
        assert!(text.len() < 1100);
    }
}
