//! The ceiling for the load benchmark: an ext_authz Check server that answers OK at once, built with the
//! same tonic version, runtime and server settings as `egress-authz serve` (src/app.rs): a multi-thread
//! runtime (`--worker-threads` as there), `tcp_nodelay`, a `TcpListenerStream`. Whatever egress-authz
//! adds on top (convert, decide, metrics, logging, the response it builds) is what the benchmark measures.
//!
//! `cargo run --release --example empty_check_server -- [--grpc-addr 127.0.0.1:0] [--worker-threads N]`
//! prints `{"message":"Serving","grpc_addr":"…"}` on stdout once listening, like the server's JSON log.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
struct AlwaysOk;

#[tonic::async_trait]
impl Authorization for AlwaysOk {
    async fn check(
        &self,
        _request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

fn main() -> anyhow::Result<()> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse()?;
    let mut worker_threads = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--grpc-addr" => addr = args.next().unwrap_or_default().parse()?,
            "--worker-threads" => {
                worker_threads = Some(args.next().unwrap_or_default().parse::<usize>()?)
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
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
            .add_service(AuthorizationServer::new(AlwaysOk))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await?;
        Ok(())
    })
}
