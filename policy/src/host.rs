//! Destination hosts: parsing `:authority`/SNI values and normalising them without allocating.
//!
//! Every host that reaches the matcher is normalised the same way as rule hosts were at compile time:
//! ASCII lower-case, one trailing dot removed, IP literals in canonical form. Anything that is neither a
//! DNS name nor an IP literal is rejected, so odd encodings cannot slip past an exact DENY rule.
//!
//! IPv4 follows the WHATWG URL Standard's host parser: a host whose last label is a number (decimal
//! digits, or `0x` and hex digits) is an IPv4 address in any of the spellings `inet_aton` accepts
//! (`127.1`, `0x7f.0.0.1`, `0177.0.0.1`, `2130706433`) or it is no host at all. Those spellings reach
//! the same address through glibc's resolver, curl or a browser, so a DENY on `127.0.0.1` must see them
//! as `127.0.0.1`, and a name like `1.2.3.4.5` that some parser might still read as an address is refused.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::bytes;

/// Longest DNS name in presentation form (RFC 1035), and long enough for any IP literal.
pub(super) const MAX_HOST_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A normalised host held inline, so normalising a request's host never touches the heap.
#[derive(Clone, Copy)]
pub struct NormalizedHost {
    buf: [u8; MAX_HOST_LEN],
    len: u8,
}

impl std::fmt::Debug for NormalizedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NormalizedHost")
            .field(&self.as_str())
            .finish()
    }
}

impl PartialEq for NormalizedHost {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl NormalizedHost {
    /// The normalised host.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever written into `buf`, so this cannot fail.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }

    /// Normalises a host without port: a DNS name, an IPv4 address in any `inet_aton` spelling, or an
    /// IPv6 literal (with or without brackets).
    pub fn parse(raw: &str) -> Option<Self> {
        let mut scratch = None;
        Self::from_ascii(normalize_host(raw, &mut scratch)?.as_bytes())
    }

    /// Copies ASCII bytes, folding upper case.
    fn from_ascii(name: &[u8]) -> Option<Self> {
        let mut host = Self {
            buf: [0; MAX_HOST_LEN],
            len: u8::try_from(name.len()).ok()?,
        };
        for (dst, src) in host.buf.iter_mut().zip(name) {
            *dst = src.to_ascii_lowercase();
        }
        Some(host)
    }

    /// Canonical text of an IP literal; an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) is the IPv4
    /// address it maps, so it cannot dodge a rule written for that address.
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::from_display(v4),
                None => Self::from_display(v6),
            },
            IpAddr::V4(v4) => Self::from_display(v4),
        }
    }

    fn from_display(ip: impl std::fmt::Display) -> Option<Self> {
        let mut writer = InlineWriter {
            host: Self {
                buf: [0; MAX_HOST_LEN],
                len: 0,
            },
        };
        write!(writer, "{ip}").ok()?;
        Some(writer.host)
    }
}

/// Normalises a host without port, as [`NormalizedHost::parse`] does, without copying it in the
/// common case: a DNS name already in lower case is returned as a slice of `raw` (minus one trailing
/// dot). Only a name with upper case or an IP literal is written into `scratch`, which the caller keeps
/// on its stack; so the decision path neither allocates nor fills a 253-byte buffer per request.
pub fn normalize_host<'a>(
    raw: &'a str,
    scratch: &'a mut Option<NormalizedHost>,
) -> Option<&'a str> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    match scan_dns_name(name.as_bytes()) {
        DnsName::LowerCase => Some(name),
        DnsName::MixedCase => Some(
            scratch
                .insert(NormalizedHost::from_ascii(name.as_bytes())?)
                .as_str(),
        ),
        // Numbers are parsed only here, so ordinary names never pay for it.
        DnsName::NumericLastLabel => {
            let ip = IpAddr::V4(parse_ipv4(name.as_bytes())?);
            Some(scratch.insert(NormalizedHost::from_ip(ip)?).as_str())
        }
        // An IPv4 spelling has only digits, letters and dots, so it was scanned as numeric above,
        // unless it breaks DNS's length limits (a label over 63 bytes of leading zeros), and then it
        // is refused like any overlong name: only IPv6 is left to try.
        DnsName::Invalid => {
            let inner = raw
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .unwrap_or(raw);
            let ip = IpAddr::V6(inner.parse::<Ipv6Addr>().ok()?);
            Some(scratch.insert(NormalizedHost::from_ip(ip)?).as_str())
        }
    }
}

/// Parses an IPv4 address as `inet_aton` and the WHATWG URL Standard do: one to four dot-separated
/// numbers, each decimal, octal (a leading `0`) or hex (`0x`/`0X`); every number but the last is one
/// byte, the last fills the bytes that remain (`127.1` is `127.0.0.1`, `2130706433` is too).
///
/// Stricter than WHATWG in one place, as glibc is: `0x` without digits is not a number (WHATWG reads 0),
/// so it is refused rather than read as an address only some parsers agree on.
fn parse_ipv4(name: &[u8]) -> Option<Ipv4Addr> {
    let mut numbers = [0_u32; 4];
    let mut count = 0;
    for part in name.split(|&b| b == b'.') {
        *numbers.get_mut(count)? = parse_ipv4_number(part)?;
        count += 1;
    }
    let (&last, leading) = numbers[..count].split_last()?;
    let mut address = 0_u32;
    for (i, &byte) in leading.iter().enumerate() {
        if byte > 0xff {
            return None;
        }
        address |= byte << (24 - 8 * i);
    }
    // The last number fills 4, 3, 2 or 1 bytes.
    let last_bits = 32 - 8 * leading.len();
    if last_bits < 32 && last >> last_bits != 0 {
        return None;
    }
    Some(Ipv4Addr::from(address | last))
}

/// One number of an `inet_aton` address: decimal, octal with a leading `0`, or hex after `0x`/`0X`;
/// `None` when empty, when a digit is outside its base (`08`) or when it exceeds 32 bits.
fn parse_ipv4_number(part: &[u8]) -> Option<u32> {
    let (digits, radix) = match part {
        [b'0', b'x' | b'X', hex @ ..] => (hex, 16),
        [b'0', octal @ ..] if !octal.is_empty() => (octal, 8),
        _ => (part, 10),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0_u32, |value, &b| {
        let digit = char::from(b).to_digit(radix)?;
        value.checked_mul(radix)?.checked_add(digit)
    })
}

/// True when a label is a number for the WHATWG host parser: all decimal digits, or `0x`/`0X` and
/// hex digits (maybe none). Such a last label makes the whole host an IPv4 address or invalid.
fn is_numeric_label(label: &[u8], classes: u8) -> bool {
    if classes & !bytes::DIGIT == 0 {
        return true;
    }
    match label {
        [b'0', b'x' | b'X', hex @ ..] => hex.iter().all(u8::is_ascii_hexdigit),
        _ => false,
    }
}

/// The normalised host of an HTTP `:authority`, port dropped: exactly what [`authority_host`] then
/// [`normalize_host`] give, with a shortcut for the common case (a DNS name, maybe a port) that skips
/// `authority_host`'s own pass over the bytes. Anything else takes the general path.
pub fn normalize_authority<'a>(
    authority: &'a str,
    scratch: &'a mut Option<NormalizedHost>,
) -> Option<&'a str> {
    authority_parts(authority, scratch).1
}

/// The host of an HTTP `:authority` as written, port dropped (the whole authority when it is
/// malformed), and its normalised form as [`normalize_authority`] gives it.
pub(super) fn authority_parts<'r: 's, 's>(
    authority: &'r str,
    scratch: &'s mut Option<NormalizedHost>,
) -> (&'r str, Option<&'s str>) {
    let (host, port) = match authority.bytes().position(|b| b == b':') {
        Some(colon) => (&authority[..colon], &authority[colon + 1..]),
        None => (authority, "0"),
    };
    // A valid DNS name has no `@`, `[` or `:`, so with a numeric port `authority_host` would return
    // `host` itself, and `normalize_host` would scan it just as here (a trailing dot is not valid for
    // `scan_dns_name` and goes the general way).
    if is_port(port) {
        match scan_dns_name(host.as_bytes()) {
            DnsName::LowerCase => return (host, Some(host)),
            DnsName::MixedCase => {
                let folded = NormalizedHost::from_ascii(host.as_bytes())
                    .map(|folded| scratch.insert(folded).as_str());
                return (host, folded);
            }
            DnsName::NumericLastLabel | DnsName::Invalid => {}
        }
    }
    match authority_host(authority) {
        Some(host) => (host, normalize_host(host, scratch)),
        None => (authority, None),
    }
}

/// What [`scan_dns_name`] found.
#[derive(Debug, PartialEq, Eq)]
enum DnsName {
    /// A valid name with no upper-case letter: already normalised.
    LowerCase,
    /// A valid name that needs folding to lower case.
    MixedCase,
    /// Valid labels, but the last one is a number (see [`is_numeric_label`]): an IPv4 address in some
    /// spelling, or nothing.
    NumericLastLabel,
    Invalid,
}

/// Validates a DNS name (see [`is_valid_dns_name`]) in one pass over its bytes.
fn scan_dns_name(name: &[u8]) -> DnsName {
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return DnsName::Invalid;
    }
    // Classes seen in the whole name, and in the current label.
    let mut seen = 0;
    let mut label_seen = 0;
    let mut label_start = 0;
    for (i, &b) in name.iter().enumerate() {
        let class = bytes::class(b);
        if class & bytes::LABEL != 0 {
            label_seen |= class;
            continue;
        }
        if class != bytes::DOT || !is_valid_label(&name[label_start..i]) {
            return DnsName::Invalid;
        }
        seen |= label_seen;
        label_seen = 0;
        label_start = i + 1;
    }
    seen |= label_seen;
    let last_label = &name[label_start..];
    if !is_valid_label(last_label) {
        DnsName::Invalid
    } else if is_numeric_label(last_label, label_seen) {
        DnsName::NumericLastLabel
    } else if seen & bytes::UPPER != 0 {
        DnsName::MixedCase
    } else {
        DnsName::LowerCase
    }
}

/// Length and hyphen rules of one label whose bytes were already checked.
fn is_valid_label(label: &[u8]) -> bool {
    match (label.first(), label.last()) {
        (Some(&first), Some(&last)) => {
            label.len() <= MAX_LABEL_LEN && first != b'-' && last != b'-'
        }
        _ => false,
    }
}

struct InlineWriter {
    host: NormalizedHost,
}

impl std::fmt::Write for InlineWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let start = usize::from(self.host.len);
        let end = start + s.len();
        if end > MAX_HOST_LEN {
            return Err(std::fmt::Error);
        }
        self.host.buf[start..end].copy_from_slice(s.as_bytes());
        self.host.len = u8::try_from(end).map_err(|_| std::fmt::Error)?;
        Ok(())
    }
}

/// A DNS name in presentation form without trailing dot: labels of 1–63 letters, digits, `-` or `_`,
/// not starting or ending with `-`; the last label not a number (all digits, or `0x` and hex digits),
/// since such a host is an IPv4 address or nothing.
pub fn is_valid_dns_name(name: &str) -> bool {
    matches!(
        scan_dns_name(name.as_bytes()),
        DnsName::LowerCase | DnsName::MixedCase
    )
}

/// Splits an HTTP `:authority` into its host, dropping a port. `None` when the authority is malformed
/// (user info, a non-numeric port, an unbracketed IPv6 address with a port).
pub fn authority_host(authority: &str) -> Option<&str> {
    // One pass over the bytes: this runs on every HTTP check.
    let mut colons = 0_usize;
    let mut last_colon = 0;
    for (i, &b) in authority.as_bytes().iter().enumerate() {
        match b {
            b'@' => return None,
            b':' => {
                colons += 1;
                last_colon = i;
            }
            _ => {}
        }
    }
    if authority.starts_with('[') {
        let close = authority.find(']')?;
        let (host, rest) = authority.split_at(close + 1);
        return match rest.strip_prefix(':') {
            None if rest.is_empty() => Some(host),
            Some(port) if is_port(port) => Some(host),
            _ => None,
        };
    }
    match colons {
        0 => Some(authority),
        // A single colon separates the port.
        1 if is_port(&authority[last_colon + 1..]) => Some(&authority[..last_colon]),
        1 => None,
        // More than one colon without brackets: a bare IPv6 literal, which has no port to strip.
        _ => Some(authority),
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// True for the SNI an Istio sidecar sends to a gateway when no DestinationRule sets one, exactly as
/// Istio builds it (`BuildDNSSrvSubsetKey`): `outbound_.<port>_.<subset>_.<host>`, the port in decimal
/// without leading zeros, the subset a DNS-1123 label or empty (`outbound_.443_._.<host>`), the host a
/// DNS name. It names a cluster, not the external destination, so it is skipped when looking for one.
///
/// Anything else that starts with `outbound_.` is an ordinary SNI (and, `_` being allowed in labels,
/// usually a valid host): a loose prefix test would let any client drop its SNI from the decision.
pub(super) fn is_istio_cluster_sni(sni: &str) -> bool {
    let Some(rest) = sni.strip_prefix("outbound_.") else {
        return false;
    };
    // Neither the port nor the subset can contain `_`, so the first two `_.` are the separators.
    let Some((port, rest)) = rest.split_once("_.") else {
        return false;
    };
    let Some((subset, host)) = rest.split_once("_.") else {
        return false;
    };
    is_istio_port(port)
        && (subset.is_empty() || is_dns1123_label(subset))
        && is_valid_dns_name(host)
}

/// A port as Go's `strconv.Itoa` writes it: 1–65535, no sign, no leading zero.
fn is_istio_port(port: &str) -> bool {
    !port.starts_with('0') && is_port(port) && port.parse::<u16>().is_ok()
}

/// Kubernetes' DNS-1123 label, which Istio requires of subset names: 1–63 lower-case letters, digits
/// or `-`, starting and ending with a letter or digit.
fn is_dns1123_label(label: &str) -> bool {
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= MAX_LABEL_LEN
                && alphanumeric(first)
                && alphanumeric(last)
                && bytes.iter().all(|b| alphanumeric(b) || *b == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Option<String> {
        NormalizedHost::parse(raw).map(|h| h.as_str().to_owned())
    }

    #[test]
    fn normalises_case_and_one_trailing_dot() {
        assert_eq!(
            norm("Developers.Google.COM.").as_deref(),
            Some("developers.google.com")
        );
        assert_eq!(norm("developers.google.com..").as_deref(), None);
    }

    #[test]
    fn canonicalises_ip_literals() {
        assert_eq!(norm("10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(norm("[0:0::1]").as_deref(), Some("::1"));
        assert_eq!(norm("2001:DB8::1").as_deref(), Some("2001:db8::1"));
        assert_eq!(norm("[::ffff:10.0.0.1]").as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn every_inet_aton_spelling_of_an_ipv4_address_is_that_address() {
        let cases: &[(&str, &str)] = &[
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.1.", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("127.0.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("0X7F000001", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0x7F.0x0.0X0.0x1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("017700000001", "127.0.0.1"),
            ("0x7f.0.0.01", "127.0.0.1"),
            ("00000000000000177.0.0.1", "127.0.0.1"),
            ("0x00000000007f.1", "127.0.0.1"),
            ("010.0.0.1", "8.0.0.1"),
            ("1.2.3", "1.2.0.3"),
            ("1.2.65535", "1.2.255.255"),
            ("1.16777215", "1.255.255.255"),
            ("4294967295", "255.255.255.255"),
            ("0", "0.0.0.0"),
            ("00", "0.0.0.0"),
            ("0.0.0.0", "0.0.0.0"),
        ];
        for (spelling, address) in cases {
            assert_eq!(norm(spelling).as_deref(), Some(*address), "{spelling}");
        }
    }

    #[test]
    fn a_numeric_last_label_that_is_no_ipv4_address_is_no_host() {
        for bad in [
            "1.2.3.4.5",         // five numbers
            "256.0.0.1",         // a leading number over one byte
            "1.2.3.256",         // the last number over what remains
            "1.2.65536",         //
            "1.16777216",        //
            "4294967296",        // over 32 bits
            "99999999999999999", // far over
            "08.0.0.1",          // 8 is no octal digit
            "0x.0.0.1",          // `0x` without digits
            "1.2.3.0x",          //
            "0x",                //
            "1..2",              // empty number
            "example.1",         // a name whose last label is a number
            "example.0x10",      //
            "a-b.1.2.3",         //
            "1.2.3.4..",         // two trailing dots
            "+1.2.3.4",          // signs are not digits
        ] {
            assert_eq!(norm(bad), None, "{bad:?}");
        }
        // A last label that merely starts like a number is a name.
        for name in ["0xg", "1.0x1g", "1e5", "1.2.3.4a", "10.0.0.1.example.com"] {
            assert_eq!(
                norm(name).as_deref(),
                Some(name.to_ascii_lowercase().as_str()),
                "{name:?}"
            );
            assert!(is_valid_dns_name(name), "{name:?}");
        }
        assert!(!is_valid_dns_name("0x1f"));
        assert!(!is_valid_dns_name("a.123"));
    }

    #[test]
    fn ipv4_spellings_are_canonicalised_on_the_authority_path_too() {
        for authority in ["127.1", "127.1:8080", "0x7f.1.:443", "2130706433:80"] {
            let mut scratch = None;
            assert_eq!(
                normalize_authority(authority, &mut scratch),
                Some("127.0.0.1"),
                "{authority}"
            );
        }
        let mut scratch = None;
        assert_eq!(normalize_authority("1.2.3.4.5:443", &mut scratch), None);
    }

    #[test]
    fn rejects_what_is_not_a_host() {
        for bad in [
            "",
            ".",
            "a..b",
            "-a.com",
            "a-.com",
            "a b.com",
            "exa%6dple.com",
            "a/b",
            "*.a.com",
            &"a".repeat(64),
            "é.com",
            "[::1",
        ] {
            assert_eq!(norm(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn authority_port_is_stripped() {
        assert_eq!(
            authority_host("developers.google.com:443"),
            Some("developers.google.com")
        );
        assert_eq!(
            authority_host("developers.google.com"),
            Some("developers.google.com")
        );
        assert_eq!(authority_host("[::1]:8080"), Some("[::1]"));
        assert_eq!(authority_host("::1"), Some("::1"));
        assert_eq!(authority_host("a.com:https"), None);
        assert_eq!(authority_host("user@a.com"), None);
        assert_eq!(authority_host("[::1]x"), None);
    }

    #[test]
    fn recognises_exactly_the_sni_istio_generates() {
        for sni in [
            "outbound_.443_._.istio-egressgateway.istio-system.svc.cluster.local",
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local",
            "outbound_.1_.canary-2_.egress.istio-system.svc.cluster.local",
            "outbound_.65535_._.gw.example",
            "outbound_.443_._.Gateway.Example.COM",
        ] {
            assert!(is_istio_cluster_sni(sni), "{sni}");
        }
        for sni in [
            "developers.google.com",
            "outbound_.",
            "outbound_.developers.google.com", // no port, no subset
            "outbound_.443_.developers.google.com", // no subset
            "outbound_.443_._.",               // no host
            "outbound_._._.gw.example",        // empty port
            "outbound_.0_._.gw.example",       // port 0
            "outbound_.0443_._.gw.example",    // leading zero
            "outbound_.65536_._.gw.example",   // port over 65535
            "outbound_.+443_._.gw.example",    // sign
            "outbound_.443_.V1_.gw.example",   // upper-case subset
            "outbound_.443_.v1.0_.gw.example", // dots in a subset
            "outbound_.443_.-v1_.gw.example",  // subset starts with `-`
            "outbound_.443_._.gw.example.",    // Istio writes no trailing dot
            "outbound_.443_._.*.example.com",  // a wildcard is not a host
            "outbound_.443_._.10.0.0.1",       // nor an address
            "outbound_.443_._.gw example",     //
            "inbound_.443_._.gw.example",      //
            "Outbound_.443_._.gw.example",     //
            "xoutbound_.443_._.gw.example",    //
        ] {
            assert!(!is_istio_cluster_sni(sni), "{sni}");
        }
    }
}
