//! What the tests, the end-to-end suite, the demo, the benchmarks, the load tools and the fuzz targets of
//! egress-authz share, written once: the real server binary as a child process, CheckRequests as Envoy
//! sends them, the Prometheus text parser, bounded waits, a real Envoy gateway with its PKI, stand-in
//! upstreams and mTLS clients, the walkthrough's expectations, the reference parsers and the generated
//! benchmark rules.
//!
//! A new test of a Check through the real server is a few lines:
//!
//! ```no_run
//! use testkit::{ServerBuilder, bounded, check, mk_http_check, reason_of, spiffe};
//!
//! # async fn example() {
//! bounded(async {
//!     let dir = tempfile::tempdir().unwrap();
//!     let rules = dir.path().join("rules.yaml");
//!     std::fs::write(&rules, testkit::rules_allowing("allow-google", "www.google.com")).unwrap();
//!     let server = ServerBuilder::new(&rules).spawn().await;
//!     let request = mk_http_check(&spiffe("default", "sleep"), "evil.example", 443, "GET", "/");
//!     let response = check(&mut server.authz().await, request).await;
//!     assert_eq!(reason_of(&response).as_deref(), Some("no_matching_rule"));
//! })
//! .await;
//! # }
//! ```
//!
//! With `default-features = false` (the fuzz crate: nightly, libFuzzer) only the parts that need no
//! runtime are built: [`check`](mod@check), [`fixtures`], [`reference`](mod@reference), [`rules`].
//!
//! The kit depends on the egress-authz library for its types; the library never depends on the kit
//! (its unit tests do not use it), so the only cycle is the dev-dependency Cargo allows.

pub mod check;
pub mod fixtures;
pub mod reference;
pub mod rules;

/// Items built only with the `process` feature: everything that runs processes or talks over sockets.
macro_rules! with_process {
    ($($item:item)*) => { $( #[cfg(feature = "process")] $item )* };
}

with_process! {
    pub mod envoy;
    pub mod files;
    pub mod flip;
    pub mod grpc;
    pub mod http;
    pub mod net;
    pub mod pki;
    pub mod prom;
    pub mod scenarios;
    pub mod server;
    pub mod wait;
    pub mod world;
}

// The names the ops tests use, at the root, so a test imports them from one place.
pub use check::{
    is_allowed, mk_http_check, mk_http_check_with_request_id, mk_tcp_check, reason_of, spiffe,
};
with_process! {
    // `crate::`: the module names match crates (`http`) that a macro-expanded `use` cannot tell apart.
    pub use crate::files::{ConfigMapDir, rules_allowing, write_by_rename, write_in_place};
    pub use crate::grpc::{check, time_until_verdict};
    pub use crate::http::http_get;
    pub use crate::prom::Metrics;
    pub use crate::server::{Logs, Server, ServerBuilder, StartFailure, message_of};
    pub use crate::wait::{POLL_INTERVAL, RPC_TIMEOUT, STARTUP_TIMEOUT, TEST_TIMEOUT, bounded, poll_until};
}
