//! Destination hosts: parsing `:authority`/SNI values and normalising them without allocating.
//!
//! Every host that reaches the matcher is normalised the same way as rule hosts were at compile time:
//! ASCII lower-case, one trailing dot removed, IP literals in canonical form. Anything that is neither a
//! DNS name nor an IP literal is rejected, so odd encodings cannot slip past an exact DENY rule.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};

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
        let unbracketed = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
        if let Some(inner) = unbracketed {
            let ip: Ipv6Addr = inner.parse().ok()?;
            return Self::from_ip(IpAddr::V6(ip));
        }
        if let Ok(ip) = raw.parse::<IpAddr>() {
            return Self::from_ip(ip);
        }
        let name = raw.strip_suffix('.').unwrap_or(raw);
        if !is_valid_dns_name(name) {
            return None;
        }
        let mut host = Self {
            buf: [0; MAX_HOST_LEN],
            len: u8::try_from(name.len()).ok()?,
        };
        for (dst, src) in host.buf.iter_mut().zip(name.bytes()) {
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
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return false;
    }
    let mut last_label = "";
    for label in name.split('.') {
        let bytes = label.as_bytes();
        if bytes.is_empty()
            || bytes.len() > MAX_LABEL_LEN
            || bytes[0] == b'-'
            || bytes[bytes.len() - 1] == b'-'
            || !bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return false;
        }
        last_label = label;
    }
    !last_label.bytes().all(|b| b.is_ascii_digit())
}

/// Splits an HTTP `:authority` into its host, dropping a port. `None` when the authority is malformed
/// (user info, a non-numeric port, an unbracketed IPv6 address with a port).
pub fn authority_host(authority: &str) -> Option<&str> {
    if authority.contains('@') {
        return None;
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
    match authority.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 literal, which has no port to strip.
        Some((host, _)) if host.contains(':') => Some(authority),
        Some((host, port)) if is_port(port) => Some(host),
        Some(_) => None,
        None => Some(authority),
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
