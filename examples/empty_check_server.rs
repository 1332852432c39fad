//! The ceiling for the load benchmark: an ext_authz Check server that answers OK at once, built with the
//! same tonic version, runtime and server settings as `egress-authz serve` (src/app.rs): a multi-thread
//! runtime (`--worker-threads` as there), `tcp_nodelay`, a `TcpListenerStream`. Whatever egress-authz
//! adds on top (convert, decide, metrics, logging, the response it builds) is what the benchmark measures.
//!
//! With `--shaped-rules DIR --host H...` it answers with exactly the response egress-authz gives for an
//! HTTP check of each listed host (no principal) under the rules in DIR, computed once at start and cloned
//! per request: a ceiling with egress-authz's response shape (dynamic metadata, 403 with header and body),
//! so a benchmark through Envoy can tell the cost of that response in Envoy from egress-authz's own work.
//! Other hosts get the bare OK.
//!
//! `cargo run --release --example empty_check_server -- [--grpc-addr 127.0.0.1:0] [--worker-threads N]
//! [--shaped-rules DIR --host H [--host H]...]` prints `{"message":"Serving","grpc_addr":"…"}` on stdout
//! once listening, like the server's JSON log.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use egress_authz::grpc::convert::to_check_response;
use egress_authz::policy::{EgressRequest, HttpRequest, Protocol};

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
struct AlwaysOk {
    /// Precomputed answers by HTTP host (`--shaped-rules`).
    shaped: Vec<(String, CheckResponse)>,
}

#[tonic::async_trait]
impl Authorization for AlwaysOk {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        if !self.shaped.is_empty() {
            let host = request
                .get_ref()
                .attributes
                .as_ref()
                .and_then(|a| a.request.as_ref())
                .and_then(|r| r.http.as_ref())
                .map_or("", |http| http.host.as_str());
            if let Some((_, response)) = self.shaped.iter().find(|(h, _)| h == host) {
                return Ok(Response::new(response.clone()));
            }
        }
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

/// egress-authz's answer to an HTTP check of each host, without a principal, under the rules in `dir`.
fn shaped_responses(dir: &Path, hosts: &[String]) -> anyhow::Result<Vec<(String, CheckResponse)>> {
    let policy = egress_authz::reload::load_policy(dir)?;
    Ok(hosts
        .iter()
        .map(|host| {
            let request = EgressRequest {
                http: Some(HttpRequest {
                    authority: host,
                    method: "GET",
                    path: "/",
                }),
                ..Default::default()
            };
            let response = to_check_response(&policy.decide(&request), Protocol::Http);
            (host.clone(), response)
        })
        .collect())
}

fn main() -> anyhow::Result<()> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse()?;
    let mut worker_threads = None;
    let mut shaped_rules: Option<PathBuf> = None;
    let mut hosts = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--grpc-addr" => addr = args.next().unwrap_or_default().parse()?,
            "--worker-threads" => {
                worker_threads = Some(args.next().unwrap_or_default().parse::<usize>()?)
            }
            "--shaped-rules" => shaped_rules = args.next().map(PathBuf::from),
            "--host" => hosts.push(args.next().unwrap_or_default()),
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let server = AlwaysOk {
        shaped: match &shaped_rules {
            Some(dir) => shaped_responses(dir, &hosts)?,
            None => Vec::new(),
        },
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = worker_threads {
        runtime.worker_threads(threads.max(1));
    }
    runtime.build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!(
            r#"{{"message":"Serving","grpc_addr":"{}"}}"#,
            listener.local_addr()?
        );
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(AuthorizationServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await?;
        Ok(())
    })
}
