//! egress-authz's decision logic: rule files in, decisions out. Pure, synchronous and deterministic.
//!
//! A crate of its own so that the compiler, not a grep, keeps it free of gRPC, async runtimes, file
//! watching and metrics: it depends on nothing that does I/O, and it builds for `wasm32-wasip1`, so the
//! same code decides in the server (`egress-authz`, which re-exports it as `egress_authz::policy`) and
//! in the gateway's proxy-wasm filter. The semantics are documented in the README, "Decision semantics",
//! and tested next to the code that implements them (shared test fixtures are in `test_fixtures`).
//!
//! Tenant rule files (`tenant`) are compiled here too, confined to their namespace and checked against
//! the platform's guardrails (`guardrail`), then composed with the platform rules into one [`Policy`].

mod bytes;
mod compile;
mod decision;
mod guardrail;
mod host;
mod identity;
mod index;
mod lint;
mod matcher;
mod outcome;
mod request;
mod rule;
mod source;
mod spec;
mod tenant;
#[cfg(test)]
mod test_fixtures;
mod verdict;
mod yaml_limits;

pub use compile::{
    CompileError, CompileErrorKind, DEFAULT_TRUST_DOMAIN, Limit, Location, SourceFile, compile,
    compile_with_digest,
};
pub use decision::{
    Decision, DryRunVerdict, EgressRequest, Explanation, Facts, HttpRequest, OwnedIdentity, Policy,
    Protocol, Reason, RuleTrace, Settings,
};
pub use guardrail::{DEFAULTS_KEY, Guardrail, Guardrails};
pub use host::{
    NormalizedHost, authority_host, is_valid_dns_name, normalize_authority, normalize_host,
};
pub use identity::{Caller, Identity, parse_spiffe_id};
pub use lint::{CompileWarning, lint};
pub use matcher::{HostPattern, InvalidPattern, PathPattern, ServiceAccountPattern, StringPattern};
pub use rule::{
    Condition, FromConditions, HttpInput, MatchInput, Rule, RuleMetadata, RuleOrigin, ToConditions,
};
pub use source::digest;
pub use spec::{FromSpec, GuardrailSpec, RuleFile, RuleSpec, ToSpec};
pub use tenant::{TenantRules, compile_tenant, is_valid_namespace, namespace_of_file};
pub use verdict::Verdict;
