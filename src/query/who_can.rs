//! `who-can`: the destination is fixed, so each rule's destination conditions are settled and its caller
//! conditions (with what is left of port, method and path) are the residual.

use std::fmt::Write as _;

use crate::policy::{
    EgressRequest, HttpInput, HttpRequest, Policy, Protocol, Reason, Rule, Verdict,
};

use super::Reach;
use super::caller::{CallerCondition, trusted_identity};
use super::destination::Restrictions;

/// What is left of a rule once the destination is fixed.
#[derive(Clone, Debug)]
pub struct CallerResidual<'p> {
    /// The rule.
    pub rule: &'p Rule,
    /// The callers it matches.
    pub caller: CallerCondition<'p>,
    /// What it still requires of the request: ports (only when the query named none), methods, paths.
    pub restrictions: Restrictions<'p>,
}

impl CallerResidual<'_> {
    fn matches(
        &self,
        principal: &str,
        policy: &Policy,
        port: Option<u16>,
        http: Option<HttpInput<'_>>,
    ) -> bool {
        let identity = trusted_identity(policy.settings(), principal);
        self.caller.matches(identity.as_ref())
            && self.restrictions.matches(self.rule.action, port, http)
    }

    /// True when it matches every request the query asked about.
    fn is_unconditional(&self) -> bool {
        self.caller.matches_everybody() && self.restrictions.is_empty()
    }

    fn to_text(&self) -> String {
        let mut parts = vec![self.caller.to_text()];
        parts.extend(self.restrictions.text_parts());
        format!("{} (rule {})", parts.join(", "), self.rule.name)
    }

    fn to_json(&self) -> serde_json::Value {
        let mut json = self.restrictions.to_json();
        json["rule"] = self.rule.name.clone().into();
        json["action"] = self.rule.action.as_rule_str().into();
        json["caller"] = self.caller.to_json();
        json
    }
}

/// The callers that may reach one destination.
#[derive(Debug)]
pub struct WhoCan<'p> {
    policy: &'p Policy,
    /// The host as asked.
    pub host: String,
    /// The host as the policy normalises it, or why every request to it is refused before any rule.
    pub destination: Result<String, Reason>,
    /// The port asked about; `None`: any port (the residuals then keep their port conditions).
    pub port: Option<u16>,
    /// HTTP requests or TCP connections.
    pub protocol: Protocol,
    /// Enforced ALLOW rules that can match the destination.
    pub allowed: Vec<CallerResidual<'p>>,
    /// Enforced DENY rules that can match the destination: they win over any grant.
    pub denied: Vec<CallerResidual<'p>>,
    /// Dry-run rules that can match the destination; they never change a decision.
    pub dry_run: Vec<CallerResidual<'p>>,
}

/// Who may reach `host` (`port`: `None` for any port) over `protocol`, under `policy`.
pub fn who_can<'p>(
    policy: &'p Policy,
    host: &str,
    port: Option<u16>,
    protocol: Protocol,
) -> WhoCan<'p> {
    let mut answer = WhoCan {
        policy,
        host: host.to_owned(),
        destination: destination_host(policy, host, protocol),
        port,
        protocol,
        allowed: Vec::new(),
        denied: Vec::new(),
        dry_run: Vec::new(),
    };
    let Ok(normalized) = &answer.destination else {
        return answer;
    };
    for rule in policy.rules() {
        let Some(residual) = residual(rule, normalized, port, protocol) else {
            continue;
        };
        match (rule.dry_run, rule.action) {
            (true, _) => answer.dry_run.push(residual),
            (false, Verdict::Allow) => answer.allowed.push(residual),
            (false, Verdict::Deny) => answer.denied.push(residual),
        }
    }
    answer
}

/// The destination host as `decide` reads it from a request to `host` (a TCP connection's SNI, an
/// HTTP request's authority), or the reason it refuses such requests outright.
pub(super) fn destination_host(
    policy: &Policy,
    host: &str,
    protocol: Protocol,
) -> Result<String, Reason> {
    let request = request_to(host, protocol, None, "", "");
    let mut scratch = None;
    policy
        .destination_host(&request, &mut scratch)
        .map(str::to_owned)
}

/// A request as `explain` builds one: HTTP with `host` as authority, or TCP with `host` as SNI.
pub(super) fn request_to<'a>(
    host: &'a str,
    protocol: Protocol,
    port: Option<u16>,
    method: &'a str,
    path: &'a str,
) -> EgressRequest<'a> {
    let http = protocol == Protocol::Http;
    EgressRequest {
        http: http.then_some(HttpRequest {
            authority: host,
            method,
            path,
        }),
        principal: "",
        destination_service: if http { "" } else { host },
        sni: "",
        port,
    }
}

/// The rule's residual at the normalised `host`, or `None` when it cannot match there (or matches
/// no caller at all).
fn residual<'p>(
    rule: &'p Rule,
    host: &str,
    port: Option<u16>,
    protocol: Protocol,
) -> Option<CallerResidual<'p>> {
    let caller = CallerCondition::of(rule);
    if caller.matches_nobody() {
        return None;
    }
    let restrictions = match &rule.to {
        None => Restrictions::default(),
        Some(to) => {
            let host_matches = (to.hosts.is_empty() || to.hosts.iter().any(|p| p.matches(host)))
                && !to.not_hosts.iter().any(|p| p.matches(host));
            if !host_matches {
                return None;
            }
            Restrictions::of(to, rule.action, protocol)?
        }
    };
    let restrictions = match port {
        Some(port) => restrictions.at_port(port)?,
        None => restrictions,
    };
    Some(CallerResidual {
        rule,
        caller,
        restrictions,
    })
}

impl WhoCan<'_> {
    /// True when `decide` allows a request to this destination from `principal` ("" for none) with
    /// `method` and `path` (ignored on TCP). `port` is the request's port when the query named none;
    /// when it named one, the answer is about that port and `port` is not consulted.
    pub fn allows(&self, principal: &str, port: Option<u16>, method: &str, path: &str) -> bool {
        if self.destination.is_err() {
            return false;
        }
        let http = super::http_input(self.protocol, method, path);
        let port = self.port.or(port);
        let matches = |r: &CallerResidual<'_>| r.matches(principal, self.policy, port, http);
        super::allowed_by(&self.denied, &self.allowed, self.default(), matches)
    }

    /// The default action: what a caller no rule matches gets.
    pub fn default(&self) -> Verdict {
        self.policy.settings().default_action
    }

    /// Nobody, everybody, or some callers, when that is certain from the residuals.
    pub fn reach(&self) -> Reach {
        if self.destination.is_err()
            || self.denied.iter().any(CallerResidual::is_unconditional)
            || (self.default() == Verdict::Deny && self.allowed.is_empty())
        {
            Reach::Nothing
        } else if self.denied.is_empty()
            && (self.default() == Verdict::Allow
                || self.allowed.iter().any(CallerResidual::is_unconditional))
        {
            Reach::Everything
        } else {
            Reach::Some
        }
    }

    /// `host:port (protocol) — default DENY`, then the grants, the carve-outs and the dry-run rules.
    pub fn to_text(&self) -> String {
        let port = self
            .port
            .map_or_else(|| "any port".to_owned(), |p| p.to_string());
        let protocol = self.protocol.as_str();
        let mut out = String::new();
        let Ok(host) = &self.destination else {
            let reason = self.destination.as_ref().err().map_or("", |r| r.as_str());
            let _ = writeln!(
                out,
                "{}:{port} ({protocol}) — refused before any rule ({reason})",
                self.host
            );
            let _ = writeln!(out, "allowed:\n  nobody");
            return out;
        };
        let default = self.default();
        let _ = writeln!(
            out,
            "{host}:{port} ({protocol}) — default {}",
            default.as_rule_str()
        );
        let _ = writeln!(out, "allowed:");
        // Under a default ALLOW the grants change no decision: only the carve-outs matter.
        match (self.reach(), default) {
            (Reach::Nothing, _) => {
                let _ = writeln!(out, "  nobody");
            }
            (_, Verdict::Allow) => {
                let _ = writeln!(out, "  anyone (default ALLOW)");
            }
            (Reach::Everything | Reach::Some, Verdict::Deny) => {
                for grant in &self.allowed {
                    let _ = writeln!(out, "  {}", grant.to_text());
                }
            }
        }
        if !self.denied.is_empty() {
            let _ = writeln!(out, "except:");
            for carve_out in &self.denied {
                let _ = writeln!(out, "  {}", carve_out.to_text());
            }
        }
        if !self.dry_run.is_empty() {
            let _ = writeln!(out, "dry run (never enforced):");
            for rule in &self.dry_run {
                let _ = writeln!(
                    out,
                    "  {} {}",
                    rule.rule.action.as_rule_str(),
                    rule.to_text()
                );
            }
        }
        out
    }

    /// The answer as JSON (schema in the README section of `query`).
    pub fn to_json(&self) -> serde_json::Value {
        let list = |residuals: &[CallerResidual<'_>]| -> Vec<serde_json::Value> {
            residuals.iter().map(CallerResidual::to_json).collect()
        };
        serde_json::json!({
            "query": "who-can",
            "host": self.destination.as_ref().unwrap_or(&self.host),
            "port": self.port,
            "protocol": self.protocol.as_str(),
            "refused": self.destination.as_ref().err().map(|r| r.as_str()),
            "default": self.default().as_str(),
            "reach": self.reach().as_str(),
            "allowed": list(&self.allowed),
            "except": list(&self.denied),
            "dry_run": list(&self.dry_run),
            "rules_sha256": self.policy.digest(),
        })
    }
}
