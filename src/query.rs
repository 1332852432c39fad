//! `query who-can` and `query what-can`: the callers that may reach a destination, and the destinations
//! a caller may reach, computed exactly from a policy by partial evaluation.
//!
//! A decision depends on two halves of a request: who calls, and where to. Fixing one half settles every
//! condition a rule has on it, so a rule either cannot match (and is dropped) or leaves a *residual*: a
//! condition on the other half only. The answer is the default action plus those residuals, enforced
//! ALLOW residuals as grants and enforced DENY residuals as carve-outs, and each answer's `allows`
//! evaluates them the way [`Policy::decide`](crate::policy::Policy::decide) does (any matching DENY
//! denies, else any matching ALLOW allows, else the default). So an answer allows exactly what the
//! policy allows; `tests/query_exact.rs` checks it on generated rule sets. Dry-run rules never change a
//! decision and are listed apart.
//!
//! Pure: no I/O. Uses only `policy`; `commands::query` loads the rules and prints.

mod caller;
mod destination;
#[cfg(test)]
mod tests;
mod text;
mod what_can;
mod who_can;

pub use caller::{CallerCondition, identity_problem, trusted_identity};
pub use destination::{DestinationCondition, Restrictions};
pub use what_can::{DestinationResidual, WhatCan, what_can};
pub use who_can::{CallerResidual, WhoCan, who_can};

use crate::policy::{HttpInput, HttpRequest, Protocol, Verdict};

/// How much an answer covers, in one word, when that can be said for sure. Sound, not complete: `Some`
/// may still turn out to be everything or nothing on closer reading of its residuals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Every request of the kind asked about is denied.
    Nothing,
    /// Every request of the kind asked about is allowed (for what-can: to every destination the
    /// policy decides on; a host it refuses before any rule, such as an invalid one, is denied).
    Everything,
    /// Some are allowed and some denied, as the residuals say.
    Some,
}

impl Reach {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nothing => "nothing",
            Self::Everything => "everything",
            Self::Some => "some",
        }
    }
}

/// The HTTP part of a request as rules match it (the path without its query), or none on TCP.
fn http_input<'a>(protocol: Protocol, method: &'a str, path: &'a str) -> Option<HttpInput<'a>> {
    let path = HttpRequest {
        authority: "",
        method,
        path,
    }
    .path_without_query();
    (protocol == Protocol::Http).then_some(HttpInput { method, path })
}

/// The decision's precedence over an answer's residuals: any matching carve-out (DENY) denies, else
/// any matching grant (ALLOW) allows, else the default decides.
fn allowed_by<T>(
    denied: &[T],
    allowed: &[T],
    default: Verdict,
    matches: impl Fn(&T) -> bool,
) -> bool {
    !denied.iter().any(&matches) && (allowed.iter().any(&matches) || default == Verdict::Allow)
}
