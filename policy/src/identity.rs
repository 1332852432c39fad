//! Caller identity: the SPIFFE ID Envoy reports as `source.principal`.
//!
//! Istio issues X.509 SVIDs whose URI SAN is `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
//! and Envoy copies the first URI SAN of the peer certificate into `source.principal`. Parsing is strict
//! (SPIFFE ID rules plus Istio's exact five-segment shape) because a lenient parser is how a crafted
//! certificate would borrow another namespace's rights. Parsing borrows from the request: no allocation.

/// A caller identity parsed from a SPIFFE ID, borrowing the request's string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    /// The trust domain, e.g. `cluster.local`.
    pub trust_domain: &'a str,
    /// The Kubernetes namespace of the workload.
    pub namespace: &'a str,
    /// The Kubernetes service account of the workload.
    pub service_account: &'a str,
    /// The principal in Istio's form, without the `spiffe://` scheme: `<td>/ns/<ns>/sa/<sa>`.
    pub principal: &'a str,
}

/// What the request says about its caller, before trust domains are considered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller<'a> {
    /// No principal: the connection did not present a client certificate (no mTLS).
    Missing,
    /// A principal that is not a well-formed Istio SPIFFE ID.
    Malformed,
    /// A well-formed identity. Whether its trust domain is trusted is the policy's business.
    Spiffe(Identity<'a>),
}

use super::bytes;

const SCHEME: &str = "spiffe://";

impl<'a> Caller<'a> {
    /// Classifies Envoy's `source.principal` (empty when the peer sent no certificate).
    pub fn parse(principal: &'a str) -> Self {
        if principal.is_empty() {
            return Self::Missing;
        }
        match parse_spiffe_id(principal) {
            Some(identity) => Self::Spiffe(identity),
            None => Self::Malformed,
        }
    }
}

/// Parses `spiffe://<td>/ns/<ns>/sa/<sa>` exactly; anything else is `None`.
///
/// Each byte is looked at once (this runs on every check): a segment ends at the first byte that is not
/// allowed in it, and that byte must be the `/` before the next segment.
pub fn parse_spiffe_id(id: &str) -> Option<Identity<'_>> {
    let principal = id.strip_prefix(SCHEME)?;
    let (trust_domain, rest) = split_segment(principal, TRUST_DOMAIN)?;
    let (namespace, rest) = split_segment(rest.strip_prefix("ns/")?, PATH_SEGMENT)?;
    let service_account = rest.strip_prefix("sa/")?;
    let valid = trust_domain.len() <= MAX_TRUST_DOMAIN_LEN
        && !trust_domain.is_empty()
        && is_path_segment(namespace)
        && is_path_segment(service_account)
        && bytes::all_in(service_account.as_bytes(), PATH_SEGMENT);
    valid.then_some(Identity {
        trust_domain,
        namespace,
        service_account,
        principal,
    })
}

/// SPIFFE caps trust domains at 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Bytes of a SPIFFE trust domain: lower-case letters, digits, `.`, `-`, `_` (no port, no user info).
const TRUST_DOMAIN: u8 = bytes::LOWER | bytes::DIGIT | bytes::DOT | bytes::DASH;
/// Bytes of a SPIFFE path segment: `[A-Za-z0-9._-]` (so no percent-encoding).
const PATH_SEGMENT: u8 = TRUST_DOMAIN | bytes::UPPER;

/// Splits `s` at its first `/` when every byte before it has a class in `allowed`.
fn split_segment(s: &str, allowed: u8) -> Option<(&str, &str)> {
    let end = s.bytes().position(|b| bytes::class(b) & allowed == 0)?;
    (s.as_bytes()[end] == b'/').then(|| (&s[..end], &s[end + 1..]))
}

/// SPIFFE trust domain: lower-case letters, digits, `.`, `-`, `_`; no port, no user info.
pub(super) fn is_valid_trust_domain(td: &str) -> bool {
    !td.is_empty() && td.len() <= MAX_TRUST_DOMAIN_LEN && bytes::all_in(td.as_bytes(), TRUST_DOMAIN)
}

/// A SPIFFE path segment whose bytes were checked: non-empty, not `.` or `..`.
fn is_path_segment(segment: &str) -> bool {
    !matches!(segment, "" | "." | "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_identity() {
        let id = parse_spiffe_id("spiffe://cluster.local/ns/otherns/sa/sleep-google").unwrap();
        assert_eq!(id.trust_domain, "cluster.local");
        assert_eq!(id.namespace, "otherns");
        assert_eq!(id.service_account, "sleep-google");
        assert_eq!(id.principal, "cluster.local/ns/otherns/sa/sleep-google");
    }

    #[test]
    fn rejects_everything_that_is_not_exactly_an_istio_spiffe_id() {
        for bad in [
            "cluster.local/ns/default/sa/sleep",          // no scheme
            "SPIFFE://cluster.local/ns/default/sa/sleep", // scheme is case-sensitive
            "spiffe://Cluster.local/ns/default/sa/sleep", // upper-case trust domain
            "spiffe:///ns/default/sa/sleep",              // empty trust domain
            "spiffe://cluster.local/ns/default/sa/",      // empty service account
            "spiffe://cluster.local/ns//sa/sleep",        // empty namespace
            "spiffe://cluster.local/ns/default/sa/sleep/extra",
            "spiffe://cluster.local/ns/default/sa/sleep/",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/sa/sleep/ns/default",
            "spiffe://cluster.local/ns/../sa/sleep",
            "spiffe://cluster.local/ns/./sa/sleep",
            "spiffe://cluster.local/ns/def%61ult/sa/sleep", // percent-encoding
            "spiffe://cluster.local:443/ns/default/sa/sleep",
            "spiffe://user@cluster.local/ns/default/sa/sleep",
            "spiffe://cluster.local/ns/default/sa/sleep?x=1",
            "spiffe://cluster.local/ns/default/sa/sl eep",
        ] {
            assert_eq!(parse_spiffe_id(bad), None, "{bad} must be rejected");
            assert_eq!(Caller::parse(bad), Caller::Malformed, "{bad}");
        }
    }

    #[test]
    fn empty_principal_is_missing_not_malformed() {
        assert_eq!(Caller::parse(""), Caller::Missing);
    }
}
