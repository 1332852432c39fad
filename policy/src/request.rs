//! The domain input of a decision: what a check says, borrowed from the request.

use super::matcher::path_without_query;

/// Whether Envoy's check came from the HTTP filter or the network (TCP) filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `envoy.filters.http.ext_authz`: has method, path and `:authority`.
    Http,
    /// `envoy.filters.network.ext_authz`: only the connection (principal, SNI, port).
    Tcp,
}

impl Protocol {
    /// The label value used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        }
    }
}

/// What a check says, as raw borrowed fields: the policy does all validation and normalisation itself,
/// so the gRPC adapter cannot get the semantics wrong. Empty strings mean "absent", as in protobuf.
#[derive(Clone, Copy, Debug, Default)]
pub struct EgressRequest<'a> {
    /// HTTP or TCP; `None` is treated as TCP (no HTTP attributes).
    pub http: Option<HttpRequest<'a>>,
    /// `source.principal`.
    pub principal: &'a str,
    /// `destination.service`: the SNI on TCP checks when the gateway runs a `tls_inspector`.
    pub destination_service: &'a str,
    /// `tls_session.sni`, sent only with `include_tls_session`.
    pub sni: &'a str,
    /// The port of `destination.address`.
    pub port: Option<u16>,
}

/// The HTTP attributes of a check.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpRequest<'a> {
    /// `:authority` / `request.http.host`, possibly with a port.
    pub authority: &'a str,
    /// `:method`.
    pub method: &'a str,
    /// `:path`, possibly with a query string.
    pub path: &'a str,
}

impl<'a> HttpRequest<'a> {
    /// The path without its query string or fragment: what rules match, and all of it that may be
    /// shown (a query string may carry secrets such as tokens or e-mail addresses).
    pub fn path_without_query(&self) -> &'a str {
        path_without_query(self.path)
    }
}

impl EgressRequest<'_> {
    /// HTTP or TCP.
    pub fn protocol(&self) -> Protocol {
        if self.http.is_some() {
            Protocol::Http
        } else {
            Protocol::Tcp
        }
    }
}
