//! Envoy's attributes as the policy reads them, decoded from the bytes `get_property` returns. Pure.
//!
//! The fields mirror what the server reads from a CheckRequest, so the same request gets the same
//! decision whichever way it is enforced:
//! - the caller is the peer certificate's first URI SAN, else its first DNS SAN, else its subject, as
//!   Envoy's ext_authz fills `source.principal` (only a SPIFFE URI SAN is an identity to the policy);
//! - the SNI is what the client asked for in its ClientHello; on TCP it is the destination, as
//!   `destination.service` is for the server; on HTTP it is checked against `:authority`, as the
//!   server checks `tls_session.sni` (which Istio's ext_authz does not send, so the filter is the
//!   stricter of the two there);
//! - the port is the downstream connection's local port, as `destination.address` is.
//!
//! Bytes that are not UTF-8 become U+FFFD, as in the server, so an unreadable SNI is an invalid host.

use egress_authz_policy::{EgressRequest, HttpRequest};

/// Attribute paths, as `get_property` takes them (Envoy's attribute names split at the dots).
pub mod paths {
    /// `connection.uri_san_peer_certificate`.
    pub const PEER_URI_SAN: [&str; 2] = ["connection", "uri_san_peer_certificate"];
    /// `connection.dns_san_peer_certificate`.
    pub const PEER_DNS_SAN: [&str; 2] = ["connection", "dns_san_peer_certificate"];
    /// `connection.subject_peer_certificate`.
    pub const PEER_SUBJECT: [&str; 2] = ["connection", "subject_peer_certificate"];
    /// `connection.requested_server_name`.
    pub const SNI: [&str; 2] = ["connection", "requested_server_name"];
    /// `destination.port`.
    pub const DESTINATION_PORT: [&str; 2] = ["destination", "port"];
}

/// The HTTP pseudo-headers the policy reads.
pub mod headers {
    /// The destination host, possibly with a port.
    pub const AUTHORITY: &str = ":authority";
    /// The method.
    pub const METHOD: &str = ":method";
    /// The path, possibly with a query string (the policy drops it).
    pub const PATH: &str = ":path";
}

/// What the connection says about the caller and the destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connection {
    /// The peer certificate's principal; empty without one.
    pub principal: String,
    /// The TLS SNI; empty without one.
    pub sni: String,
    /// The local port the client connected to.
    pub port: Option<u16>,
}

impl Connection {
    /// Reads the connection's attributes through `property` (a `get_property` call).
    pub fn read(property: impl Fn(&[&str]) -> Option<Vec<u8>>) -> Self {
        let principal = [
            paths::PEER_URI_SAN,
            paths::PEER_DNS_SAN,
            paths::PEER_SUBJECT,
        ]
        .iter()
        .map(|path| text(property(path)))
        .find(|value| !value.is_empty())
        .unwrap_or_default();
        Self {
            principal,
            sni: text(property(&paths::SNI)),
            port: property(&paths::DESTINATION_PORT).and_then(|bytes| port(&bytes)),
        }
    }

    /// The request of an HTTP stream on this connection.
    pub fn http_request<'a>(&'a self, http: HttpRequest<'a>) -> EgressRequest<'a> {
        EgressRequest {
            http: Some(http),
            principal: &self.principal,
            destination_service: "",
            sni: &self.sni,
            port: self.port,
        }
    }

    /// The request of an opaque (TCP) connection: the SNI names the destination.
    pub fn tcp_request(&self) -> EgressRequest<'_> {
        EgressRequest {
            http: None,
            principal: &self.principal,
            destination_service: &self.sni,
            sni: "",
            port: self.port,
        }
    }
}

/// An attribute's bytes as text; absent reads as empty, as in a CheckRequest.
pub fn text(bytes: Option<Vec<u8>>) -> String {
    match bytes {
        Some(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(not_utf8) => String::from_utf8_lossy(not_utf8.as_bytes()).into_owned(),
        },
        None => String::new(),
    }
}

/// An `int` attribute (64 bits, little-endian, as Envoy serialises it for Wasm) as a port; `None` when
/// it is not 8 bytes or not a port number.
pub fn port(bytes: &[u8]) -> Option<u16> {
    let bytes: [u8; 8] = bytes.try_into().ok()?;
    u16::try_from(i64::from_le_bytes(bytes)).ok()
}

#[cfg(test)]
mod tests;
