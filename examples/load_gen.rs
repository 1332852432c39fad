//! Load generator for `scripts/load-bench.sh`: drives any ext_authz Check server with a fixed mix of
//! Envoy-shaped CheckRequests over a few HTTP/2 connections with many concurrent streams, and checks
//! every answer: the RPC must succeed and its `status` must be the expected allow (OK) or deny
//! (PERMISSION_DENIED), computed by deciding the same requests locally against the same rule files.
//!
//! ```text
//! load_gen --addr 127.0.0.1:9000 --mix seeds|generated:N [--rules PATH | --expect-ok]
//!          [--duration-secs 10] [--connections 2] [--concurrency 64] [--threads 1]
//! load_gen --mix … --write-bodies DIR   # gRPC-framed request bodies for h2load -d, one per request
//! ```
//! Prints one JSON object: requests, rps, p50/p99/p99.9 latency (µs), allow/deny counts, errors and
//! wrong answers. Exit code 1 if any answer was an error or wrong.
#![allow(clippy::print_stdout, dead_code, unreachable_pub)]

#[path = "../benches/support/rules.rs"]
mod rules;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use egress_authz::policy::Verdict;
use egress_authz::reload::load_policy;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request, TlsSession,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use prost::Message as _;
use rules::SampleRequest;

const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

struct Args {
    addr: String,
    mix: String,
    rules: Option<PathBuf>,
    expect_ok: bool,
    duration: Duration,
    connections: usize,
    concurrency: usize,
    threads: usize,
    write_bodies: Option<PathBuf>,
    /// Open-loop target rate (requests/s over all streams); `None`: each stream sends as fast as it can.
    rate: Option<f64>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        addr: "127.0.0.1:9000".into(),
        mix: "seeds".into(),
        rules: None,
        expect_ok: false,
        duration: Duration::from_secs(10),
        connections: 2,
        concurrency: 64,
        threads: 1,
        write_bodies: None,
        rate: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = value()?,
            "--mix" => args.mix = value()?,
            "--rules" => args.rules = Some(value()?.into()),
            "--expect-ok" => args.expect_ok = true,
            "--duration-secs" => args.duration = Duration::from_secs_f64(value()?.parse()?),
            "--connections" => args.connections = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--threads" => args.threads = value()?.parse()?,
            "--write-bodies" => args.write_bodies = Some(value()?.into()),
            "--rate" => args.rate = Some(value()?.parse()?),
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(args)
}

/// The seeds' walkthrough: who calls which host, over HTTP and over TLS passthrough (TCP).
fn seeds_mix() -> Vec<SampleRequest> {
    let mk = |kind, ns: &str, sa: &str, host: &str, http: bool| SampleRequest {
        kind,
        principal: format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"),
        host: host.into(),
        http: http.then(|| ("GET".into(), "/".into())),
        port: if http { 80 } else { 443 },
        allowed: false,
    };
    vec![
        mk(
            "default_to_google_http",
            "default",
            "sleep",
            "developers.google.com",
            true,
        ),
        mk(
            "default_to_yahoo_tls",
            "default",
            "sleep",
            "developer.yahoo.com",
            false,
        ),
        mk(
            "otherns_sleep_to_yahoo_tls",
            "otherns",
            "sleep",
            "developer.yahoo.com",
            false,
        ),
        mk(
            "otherns_sleep_google_to_yahoo_http",
            "otherns",
            "sleep-google",
            "developer.yahoo.com",
            true,
        ),
        mk(
            "otherns_sleep_yahoo_to_yahoo_http",
            "otherns",
            "sleep-yahoo",
            "developer.yahoo.com",
            true,
        ),
    ]
}

fn peer(principal: &str, port: u16) -> Peer {
    Peer {
        principal: principal.into(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "10.0.0.7".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// A CheckRequest shaped as Envoy 1.40 sends it from an Istio egress gateway (see the reference samples):
/// HTTP checks carry the usual headers, TCP checks the SNI as `destination.service` and `tls_session`.
fn check_request(s: &SampleRequest) -> CheckRequest {
    let gateway = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account";
    let mut destination = peer(gateway, s.port);
    let request = s.http.as_ref().map(|(method, path)| {
        let headers = HashMap::from([
            (":authority".to_owned(), s.host.clone()),
            (":method".to_owned(), method.clone()),
            (":path".to_owned(), path.clone()),
            (":scheme".to_owned(), "http".to_owned()),
            (
                "x-request-id".to_owned(),
                "a7b80ec6-9bfc-4363-bae9-01d88e5bd344".to_owned(),
            ),
            ("x-forwarded-proto".to_owned(), "http".to_owned()),
            ("x-envoy-internal".to_owned(), "true".to_owned()),
            ("user-agent".to_owned(), "curl/8.5.0".to_owned()),
            ("accept".to_owned(), "*/*".to_owned()),
        ]);
        Request {
            http: Some(HttpRequest {
                id: "5026315963086189944".into(),
                method: method.clone(),
                headers,
                path: path.clone(),
                host: s.host.clone(),
                scheme: "http".into(),
                protocol: "HTTP/1.1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    });
    let tls_session = if request.is_none() {
        destination.service = s.host.clone();
        Some(TlsSession {
            sni: s.host.clone(),
        })
    } else {
        None
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(&s.principal, 40_000)),
            destination: Some(destination),
            request,
            tls_session,
            ..Default::default()
        }),
    }
}

/// What the server must answer for each request: by the same rules decided locally, or OK for the
/// empty server.
fn expectations(args: &Args, mix: &[SampleRequest]) -> anyhow::Result<Vec<i32>> {
    if args.expect_ok {
        return Ok(vec![OK; mix.len()]);
    }
    let path = args
        .rules
        .as_ref()
        .context("--rules PATH or --expect-ok is required")?;
    let policy = load_policy(path).with_context(|| format!("loading {}", path.display()))?;
    Ok(mix
        .iter()
        .map(|s| {
            // The request also carries the host as TLS SNI on TCP; the policy reads destination.service
            // first, which holds the same host, so the decision is the same.
            let request = s.egress();
            match policy.decide(&request).verdict {
                Verdict::Allow => OK,
                Verdict::Deny => PERMISSION_DENIED,
            }
        })
        .collect())
}

#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u32>,
    allow: u64,
    deny: u64,
    errors: u64,
    wrong: u64,
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mix = match args.mix.split_once(':') {
        Some(("generated", n)) => rules::sample_requests(n.parse()?),
        None if args.mix == "seeds" => seeds_mix(),
        _ => bail!("--mix is seeds or generated:N"),
    };
    let requests: Vec<CheckRequest> = mix.iter().map(check_request).collect();
    if let Some(dir) = &args.write_bodies {
        std::fs::create_dir_all(dir)?;
        for (s, r) in mix.iter().zip(&requests) {
            // gRPC framing: uncompressed flag, big-endian length, message.
            let message = r.encode_to_vec();
            let mut body = vec![0u8];
            body.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
            body.extend_from_slice(&message);
            std::fs::write(dir.join(format!("{}.bin", s.kind)), body)?;
        }
        return Ok(());
    }
    let expected = expectations(&args, &mix)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let summary = runtime.block_on(run(&args, Arc::new(requests), Arc::new(expected)))?;
    println!("{summary}");
    Ok(())
}

async fn run(
    args: &Args,
    requests: Arc<Vec<CheckRequest>>,
    expected: Arc<Vec<i32>>,
) -> anyhow::Result<String> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr))?
            .tcp_nodelay(true);
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("connecting to {}", args.addr))?,
        );
    }
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    let streams = args.concurrency.max(1);
    // Paced: each stream sends on a fixed schedule (tokio's timer has millisecond resolution, so latency
    // counts from the actual send; a server stall still shows, in the requests in flight during it).
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(streams as f64 / rate));
    for worker in 0..streams {
        let mut client = AuthorizationClient::new(channels[worker % channels.len()].clone());
        let (requests, expected) = (Arc::clone(&requests), Arc::clone(&expected));
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally {
                latencies_ns: Vec::with_capacity(1 << 16),
                ..Tally::default()
            };
            let mut i = worker;
            // Spread the streams' schedules over one interval.
            let mut next = started
                + interval.map_or(Duration::ZERO, |d| {
                    d.mul_f64(worker as f64 / streams as f64)
                });
            while Instant::now() < deadline {
                let which = i % requests.len();
                i += 1;
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let sent = Instant::now();
                let answer = client.check(requests[which].clone()).await;
                tally
                    .latencies_ns
                    .push(u32::try_from(sent.elapsed().as_nanos()).unwrap_or(u32::MAX));
                match answer.map(|r| r.into_inner().status.map_or(OK, |s| s.code)) {
                    Err(_) => tally.errors += 1,
                    Ok(code) => {
                        match code {
                            OK => tally.allow += 1,
                            _ => tally.deny += 1,
                        }
                        if code != expected[which] {
                            tally.wrong += 1;
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        let t = task.await?;
        total.latencies_ns.extend(t.latencies_ns);
        total.allow += t.allow;
        total.deny += t.deny;
        total.errors += t.errors;
        total.wrong += t.wrong;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = total.latencies_ns;
    lat.sort_unstable();
    let pct = |q: f64| {
        let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len().max(1)) - 1;
        f64::from(lat.get(i).copied().unwrap_or(0)) / 1000.0
    };
    let n = lat.len();
    let summary = format!(
        r#"{{"requests":{n},"seconds":{elapsed:.2},"rps":{:.0},"p50_us":{:.1},"p99_us":{:.1},"p999_us":{:.1},"allow":{},"deny":{},"errors":{},"wrong":{}}}"#,
        n as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        total.allow,
        total.deny,
        total.errors,
        total.wrong,
    );
    if total.errors > 0 || total.wrong > 0 {
        println!("{summary}");
        bail!("{} failed and {} wrong answers", total.errors, total.wrong);
    }
    Ok(summary)
}
