//! Byte classes for the parsers on the request path (host names, SPIFFE IDs): one table lookup per
//! byte instead of a chain of range tests, since these scans run on every check.

/// `a`–`z`.
pub(super) const LOWER: u8 = 1;
/// `A`–`Z`.
pub(super) const UPPER: u8 = 2;
/// `0`–`9`.
pub(super) const DIGIT: u8 = 4;
/// `-` and `_`.
pub(super) const DASH: u8 = 8;
/// `.`.
pub(super) const DOT: u8 = 16;

/// Bytes allowed inside a DNS label.
pub(super) const LABEL: u8 = LOWER | UPPER | DIGIT | DASH;

static CLASSES: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'a'..=b'z' => LOWER,
            b'A'..=b'Z' => UPPER,
            b'0'..=b'9' => DIGIT,
            b'-' | b'_' => DASH,
            b'.' => DOT,
            _ => 0,
        };
        b += 1;
    }
    table
};

/// The class bits of `b` (0 for any byte not named above, including every non-ASCII byte).
#[inline]
pub(super) fn class(b: u8) -> u8 {
    CLASSES[usize::from(b)]
}

/// True when every byte of `s` has one of the classes in `allowed`.
#[inline]
pub(super) fn all_in(s: &[u8], allowed: u8) -> bool {
    s.iter().all(|&b| class(b) & allowed != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_match_the_ascii_predicates() {
        for b in 0..=u8::MAX {
            let c = class(b);
            assert_eq!(c & LOWER != 0, b.is_ascii_lowercase(), "{b}");
            assert_eq!(c & UPPER != 0, b.is_ascii_uppercase(), "{b}");
            assert_eq!(c & DIGIT != 0, b.is_ascii_digit(), "{b}");
            assert_eq!(c & DASH != 0, b == b'-' || b == b'_', "{b}");
            assert_eq!(c & DOT != 0, b == b'.', "{b}");
        }
    }
}
