//! One request, owned, decided under a policy: what both the replay of recorded traffic and the
//! symbolic witnesses decide, so the two build their checks one way.

use serde::Serialize;

use crate::policy::{EgressRequest, HttpRequest, Policy, Protocol, Verdict};

/// A request as the diff replays it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Probe {
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`, or empty for a caller without identity.
    pub(super) principal: String,
    /// HTTP (`:authority` is the host) or TCP (the SNI is the host).
    pub(super) http: bool,
    /// The destination host.
    pub(super) host: String,
    /// The destination port.
    pub(super) port: Option<u16>,
    /// HTTP method; empty when not known (an inventory records none).
    pub(super) method: String,
    /// HTTP path; empty when not known.
    pub(super) path: String,
    /// An HTTP request whose TLS SNI named another host than its `:authority`.
    pub(super) sni_mismatch: bool,
}

/// A valid host name that stands for "another host than the `:authority`" in a replayed request whose
/// SNI was recorded as differing (the SNI itself is not recorded).
const OTHER_SNI: &str = "sni-differs.invalid";
const OTHER_SNI_ALTERNATIVE: &str = "sni-differs-too.invalid";

/// How a rule set decides a probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The reason code.
    pub reason: &'static str,
    /// The deciding rule, when one decided.
    pub rule: Option<String>,
}

impl Outcome {
    /// True for an allow.
    pub fn is_allow(&self) -> bool {
        self.decision == Verdict::Allow.as_str()
    }
}

impl Probe {
    /// `http` or `tcp`.
    pub(super) fn protocol(&self) -> Protocol {
        if self.http {
            Protocol::Http
        } else {
            Protocol::Tcp
        }
    }

    /// The caller as shown: the principal, or `<none>`.
    pub(super) fn caller(&self) -> &str {
        if self.principal.is_empty() {
            crate::traffic::NO_CALLER
        } else {
            &self.principal
        }
    }

    /// Decides the probe as the server would decide the check it stands for.
    pub(super) fn decide(&self, policy: &Policy) -> Outcome {
        // An IPv6 literal needs its brackets in an authority, or its colons read as a port.
        let authority = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let other_sni = if self.host.eq_ignore_ascii_case(OTHER_SNI) {
            OTHER_SNI_ALTERNATIVE
        } else {
            OTHER_SNI
        };
        let request = if self.http {
            EgressRequest {
                http: Some(HttpRequest {
                    authority: &authority,
                    method: &self.method,
                    path: &self.path,
                }),
                principal: &self.principal,
                sni: if self.sni_mismatch { other_sni } else { "" },
                port: self.port,
                ..EgressRequest::default()
            }
        } else {
            EgressRequest {
                principal: &self.principal,
                sni: &self.host,
                port: self.port,
                ..EgressRequest::default()
            }
        };
        let decision = policy.decide(&request);
        Outcome {
            decision: decision.verdict.as_str(),
            reason: decision.reason.as_str(),
            rule: decision.rule.map(|rule| rule.name.clone()),
        }
    }

    /// One line: caller → host:port, protocol, method and path when known.
    pub(super) fn describe(&self) -> String {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let mut text = format!(
            "{} -> {}{port} {}",
            self.caller(),
            self.host,
            self.protocol().as_str()
        );
        if !self.method.is_empty() {
            text.push(' ');
            text.push_str(&self.method);
        }
        if !self.path.is_empty() {
            text.push(' ');
            text.push_str(&self.path);
        }
        if self.sni_mismatch {
            text.push_str(" (SNI names another host)");
        }
        text
    }
}
