//! `egress-authz`: an Envoy external-authorization (ext_authz) service for Istio egress gateways.
//!
//! It decides, per HTTP request and per TCP connection, whether a mesh workload (its SPIFFE identity)
//! may reach an external host (SNI/Host, port, method, path), from YAML rules it hot-reloads.
//! `policy` is the pure decision logic (the `egress-authz-policy` crate, re-exported); everything else
//! adapts it to gRPC, files, metrics and the CLI.

pub use egress_authz_policy as policy;

pub mod admin_http;
pub mod app;
pub mod audit;
pub mod cli;
pub mod commands;
pub mod decision_log;
pub mod diff;
pub mod grpc;
pub mod listener;
pub mod metrics;
pub mod query;
pub mod reload;
pub mod rule_tests;
pub mod suggest;
pub mod telemetry;
pub mod traffic;
pub mod watch;
