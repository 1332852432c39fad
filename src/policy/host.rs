//! Destination hosts: parsing `:authority`/SNI values and normalising them without allocating.
//!
//! Every host that reaches the matcher is normalised the same way as rule hosts were at compile time:
//! ASCII lower-case, one trailing dot removed, IP literals in canonical form. Anything that is neither a
//! DNS name nor an IP literal is rejected, so odd encodings cannot slip past an exact DENY rule.

use std::fmt::Write as _;
use std::net::IpAddr;

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

    /// Normalises a host without port: a DNS name or an IPv4/IPv6 literal (IPv6 with or without brackets).
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
        // A valid DNS name is never an IP literal (its last label is not all digits, it has no `:`),
        // so IP parsing is only tried for what is not a DNS name.
        DnsName::Invalid => {
            let ip = match raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                Some(inner) => IpAddr::V6(inner.parse().ok()?),
                None => raw.parse().ok()?,
            };
            Some(scratch.insert(NormalizedHost::from_ip(ip)?).as_str())
        }
    }
}

/// The normalised host of an HTTP `:authority`, port dropped: exactly what [`authority_host`] then
/// [`normalize_host`] give, with a shortcut for the common case (a DNS name, maybe a port) that skips
/// `authority_host`'s own pass over the bytes. Anything else takes the general path.
pub fn normalize_authority<'a>(
    authority: &'a str,
    scratch: &'a mut Option<NormalizedHost>,
) -> Option<&'a str> {
    let (host, port) = match authority.bytes().position(|b| b == b':') {
        Some(colon) => (&authority[..colon], &authority[colon + 1..]),
        None => (authority, "0"),
    };
    // A valid DNS name has no `@`, `[` or `:`, so with a numeric port `authority_host` would return
    // `host` itself, and `normalize_host` would scan it just as here (a trailing dot is not valid for
    // `scan_dns_name` and goes the general way).
    if is_port(port) {
        match scan_dns_name(host.as_bytes()) {
            DnsName::LowerCase => return Some(host),
            DnsName::MixedCase => {
                return Some(
                    scratch
                        .insert(NormalizedHost::from_ascii(host.as_bytes())?)
                        .as_str(),
                );
            }
            DnsName::Invalid => {}
        }
    }
    authority_host(authority).and_then(|host| normalize_host(host, scratch))
}

/// What [`scan_dns_name`] found.
#[derive(Debug, PartialEq, Eq)]
enum DnsName {
    /// A valid name with no upper-case letter: already normalised.
    LowerCase,
    /// A valid name that needs folding to lower case.
    MixedCase,
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
    // The last label all digits would be a mangled IPv4 address.
    if !is_valid_label(&name[label_start..]) || label_seen & !bytes::DIGIT == 0 {
        DnsName::Invalid
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
/// not starting or ending with `-`; the last label not all digits (that would be a mangled IPv4).
pub fn is_valid_dns_name(name: &str) -> bool {
    scan_dns_name(name.as_bytes()) != DnsName::Invalid
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

/// True for the SNI an Istio sidecar sends to a gateway when no DestinationRule sets one:
/// `outbound_.<port>_.<subset>_.<host>`. It names a cluster, not the external destination.
pub fn is_istio_cluster_sni(sni: &str) -> bool {
    sni.starts_with("outbound_.")
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
        assert_eq!(
            norm("010.0.0.1").as_deref(),
            None,
            "octal-looking IPv4 is ambiguous"
        );
        assert_eq!(
            norm("1.2.3").as_deref(),
            None,
            "numeric last label is a mangled IPv4"
        );
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
    fn recognises_istio_generated_sni() {
        assert!(is_istio_cluster_sni(
            "outbound_.443_._.istio-egressgateway.istio-system.svc.cluster.local"
        ));
        assert!(!is_istio_cluster_sni("developers.google.com"));
    }
}
