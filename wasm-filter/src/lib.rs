//! egress-authz's rules enforced inside the gateway: a proxy-wasm filter for Envoy, built for
//! `wasm32-wasip1`, that decides with the same `egress-authz-policy` code as the ext_authz server and
//! answers as the server does (reason codes, rule reporting, the 403 body and header, the access-log
//! keys), without the gRPC hop.
//!
//! One module serves both filters: `envoy.filters.http.wasm` (decides on each request's headers) and
//! `envoy.filters.network.wasm` (decides on a connection's first data). The plugin configuration is
//! the rule file (`config`), compiled once per configuration; an invalid one fails closed.
//!
//! Pure parts (`config`, `answer`, `attributes`, `metrics`) never call the host; `filter` is the only
//! module that talks proxy-wasm.

pub mod answer;
pub mod attributes;
pub mod config;
pub mod metrics;

#[cfg(target_family = "wasm")]
mod filter;

// The module's entry point, which Envoy calls when it starts the VM. `proxy_wasm::main!` exports it
// unmangled, which only an `unsafe` attribute may do.
#[cfg(target_family = "wasm")]
#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        crate::filter::start();
    }}
}
