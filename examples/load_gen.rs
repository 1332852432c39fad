//! Load generator for `scripts/load-bench.sh`: drives any ext_authz Check server with a fixed mix of
//! Envoy-shaped CheckRequests over a few HTTP/2 connections with many concurrent streams, and checks
//! every answer: the RPC must succeed and its `status` must be the expected allow (OK) or deny
//! (PERMISSION_DENIED), computed by deciding the same requests locally against the same rule files.
//!
//! ```text
//! load_gen --addr 127.0.0.1:9000 --mix walkthrough|generated:N [--rules PATH | --expect-ok]
//!          [--duration-secs 10] [--connections 2] [--concurrency 64] [--threads 1]
//! load_gen --mix … --write-bodies DIR   # gRPC-framed request bodies for h2load -d, one per request
//! load_gen … --flood [--timeout-ms 2000] [--recover-secs 5 --recover-connections 2 --recover-concurrency 64]
//! ```
//! Prints one JSON object: requests, rps, p50/p99/p99.9 latency (µs), allow/deny counts, errors and
//! wrong answers. Exit code 1 if any answer was an error or wrong.
//!
//! `--flood` is for overload runs (`scripts/flood-bench.sh`): a shed answer (reason `overloaded`, HTTP
//! 503) is counted as `shed` instead of wrong, latency percentiles are those of the decided (admitted)
//! checks only, a check unanswered after `--timeout-ms` counts as a timeout, and the run stops at its
//! deadline, dropping what is still in flight (so the end of the flood is a known instant). With
//! `--recover-secs`, the flood's connections are then closed and a fresh client measures recovery: the
//! time until a probe check is decided again, then a closed-loop run at the given shape, with the
//! decided checks' p99 per 100 ms window.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use egress_authz::policy::Verdict;
use egress_authz::reload::load_policy;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request, TlsSession,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use prost::Message as _;
use testkit::check::{mk_peer, reason_of};
use testkit::rules::{self, SampleRequest};

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
    /// Overload run: shed answers are expected, the run is cut at its deadline.
    flood: bool,
    /// A check unanswered after this long is a timeout (and cancelled).
    timeout: Option<Duration>,
    /// After the run, measure recovery for this long (with `--flood`).
    recover: Option<Duration>,
    recover_connections: usize,
    recover_concurrency: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        addr: "127.0.0.1:9000".into(),
        mix: "walkthrough".into(),
        rules: None,
        expect_ok: false,
        duration: Duration::from_secs(10),
        connections: 2,
        concurrency: 64,
        threads: 1,
        write_bodies: None,
        rate: None,
        flood: false,
        timeout: None,
        recover: None,
        recover_connections: 2,
        recover_concurrency: 64,
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
            "--flood" => args.flood = true,
            "--timeout-ms" => args.timeout = Some(Duration::from_millis(value()?.parse()?)),
            "--recover-secs" => args.recover = Some(Duration::from_secs_f64(value()?.parse()?)),
            "--recover-connections" => args.recover_connections = value()?.parse()?,
            "--recover-concurrency" => args.recover_concurrency = value()?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(args)
}

/// The Istio egress walkthrough: who calls which host, over HTTP and over TLS passthrough (TCP).
fn walkthrough_mix() -> Vec<SampleRequest> {
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

/// The gateway's and the callers' pod address in the generated requests.
const POD_IP: &str = "10.0.0.7";

/// A CheckRequest shaped as Envoy 1.40 sends it from an Istio egress gateway (see the reference samples):
/// HTTP checks carry the usual headers, TCP checks the SNI as `destination.service` and `tls_session`.
fn check_request(s: &SampleRequest) -> CheckRequest {
    let gateway = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account";
    let mut destination = mk_peer(gateway, POD_IP, s.port);
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
            source: Some(mk_peer(&s.principal, POD_IP, 40_000)),
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
    /// Latencies of the decided checks (all answers but shed ones).
    latencies_ns: Vec<u64>,
    /// With `Run::windows`: (ms since the run's start, latency) of each decided check.
    timed_ns: Vec<(u32, u64)>,
    /// With `Run::windows`: ms since the run's start of each shed answer.
    shed_at_ms: Vec<u32>,
    shed_latencies_ns: Vec<u64>,
    allow: u64,
    deny: u64,
    shed: u64,
    timeouts: u64,
    errors: u64,
    wrong: u64,
}

impl Tally {
    fn add(&mut self, other: Self) {
        self.latencies_ns.extend(other.latencies_ns);
        self.timed_ns.extend(other.timed_ns);
        self.shed_at_ms.extend(other.shed_at_ms);
        self.shed_latencies_ns.extend(other.shed_latencies_ns);
        self.allow += other.allow;
        self.deny += other.deny;
        self.shed += other.shed;
        self.timeouts += other.timeouts;
        self.errors += other.errors;
        self.wrong += other.wrong;
    }
}

/// Whether a response is the server's shed answer; `Err` if it says `overloaded` without HTTP 503.
fn is_shed(response: &CheckResponse) -> Result<bool, ()> {
    if reason_of(response).as_deref() != Some("overloaded") {
        return Ok(false);
    }
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(d)) if d.status.as_ref().map(|s| s.code) == Some(503) => {
            Ok(true)
        }
        _ => Err(()),
    }
}

/// Percentile `q` of sorted nanosecond latencies, in µs.
fn percentile_us(sorted: &[u64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mix = match args.mix.split_once(':') {
        Some(("generated", n)) => rules::sample_requests(n.parse()?),
        None if args.mix == "walkthrough" => walkthrough_mix(),
        _ => bail!("--mix is walkthrough or generated:N"),
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

/// One closed-loop (or paced) run's shape.
#[derive(Clone, Copy)]
struct Run {
    streams: usize,
    duration: Duration,
    rate: Option<f64>,
    timeout: Option<Duration>,
    /// Stop at the deadline, dropping checks in flight, instead of letting the last ones finish.
    cut: bool,
    /// Record when each answer came, for per-window figures.
    windows: bool,
}

/// `lazy`: connect on the first check instead of now. A flood uses it because connections past the
/// server's cap, and past its accept queue, may never complete: that is counted as unanswered checks
/// rather than stopping the run.
async fn connect(
    addr: &str,
    connections: usize,
    lazy: bool,
) -> anyhow::Result<Vec<tonic::transport::Channel>> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
        channels.push(if lazy {
            endpoint.connect_lazy()
        } else {
            endpoint
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?
        });
    }
    Ok(channels)
}

async fn drive(
    channels: &[tonic::transport::Channel],
    run: Run,
    requests: &Arc<Vec<CheckRequest>>,
    expected: &Arc<Vec<i32>>,
) -> anyhow::Result<(Tally, f64)> {
    let started = Instant::now();
    let deadline = started + run.duration;
    let mut tasks = Vec::new();
    let streams = run.streams.max(1);
    // Paced: each stream sends on a fixed schedule (tokio's timer has millisecond resolution, so latency
    // counts from the actual send; a server stall still shows, in the requests in flight during it).
    let interval = run
        .rate
        .map(|rate| Duration::from_secs_f64(streams as f64 / rate));
    for worker in 0..streams {
        let mut client = AuthorizationClient::new(channels[worker % channels.len()].clone());
        let (requests, expected) = (Arc::clone(requests), Arc::clone(expected));
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally {
                latencies_ns: Vec::with_capacity(1 << 12),
                ..Tally::default()
            };
            let mut i = worker;
            // Spread the streams' schedules over one interval.
            let mut next = started
                + interval.map_or(Duration::ZERO, |d| {
                    d.mul_f64(worker as f64 / streams as f64)
                });
            // Far enough to never fire when there is no timeout.
            let limit = run.timeout.unwrap_or(Duration::from_secs(3600));
            while Instant::now() < deadline {
                let which = i % requests.len();
                i += 1;
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let sent = Instant::now();
                let call = tokio::time::timeout(limit, client.check(requests[which].clone()));
                let answer = if run.cut {
                    tokio::select! {
                        answer = call => answer,
                        () = tokio::time::sleep_until(deadline.into()) => break,
                    }
                } else {
                    call.await
                };
                let latency = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let at_ms =
                    u32::try_from(sent.duration_since(started).as_millis()).unwrap_or(u32::MAX);
                let Ok(answer) = answer else {
                    tally.timeouts += 1;
                    continue;
                };
                let response = match answer {
                    Ok(response) => response.into_inner(),
                    Err(_) => {
                        tally.errors += 1;
                        continue;
                    }
                };
                match is_shed(&response) {
                    Ok(true) => {
                        tally.shed += 1;
                        tally.shed_latencies_ns.push(latency);
                        if run.windows {
                            tally.shed_at_ms.push(at_ms);
                        }
                        continue;
                    }
                    Ok(false) => {}
                    Err(()) => {
                        tally.wrong += 1;
                        continue;
                    }
                }
                tally.latencies_ns.push(latency);
                if run.windows {
                    tally.timed_ns.push((at_ms, latency));
                }
                let code = response.status.map_or(OK, |s| s.code);
                match code {
                    OK => tally.allow += 1,
                    _ => tally.deny += 1,
                }
                if code != expected[which] {
                    tally.wrong += 1;
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.add(task.await?);
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

async fn run(
    args: &Args,
    requests: Arc<Vec<CheckRequest>>,
    expected: Arc<Vec<i32>>,
) -> anyhow::Result<String> {
    let connect_started = Instant::now();
    let channels = connect(&args.addr, args.connections, args.flood).await?;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let shape = Run {
        streams: args.concurrency,
        duration: args.duration,
        rate: args.rate,
        timeout: args.timeout,
        cut: args.flood,
        windows: false,
    };
    let (mut total, elapsed) = drive(&channels, shape, &requests, &expected).await?;
    // Closing the flood's connections is the end of the flood; recovery counts from here.
    drop(channels);
    let recovery = match args.recover.filter(|_| args.flood) {
        Some(duration) => Some(recover(args, duration, &requests, &expected).await?),
        None => None,
    };

    let lat = &mut total.latencies_ns;
    lat.sort_unstable();
    total.shed_latencies_ns.sort_unstable();
    let n = lat.len();
    let answered = n as u64 + total.shed;
    let mut summary = format!(
        r#"{{"requests":{n},"seconds":{elapsed:.2},"rps":{:.0},"p50_us":{:.1},"p99_us":{:.1},"p999_us":{:.1},"allow":{},"deny":{},"errors":{},"wrong":{}"#,
        n as f64 / elapsed,
        percentile_us(lat, 0.50),
        percentile_us(lat, 0.99),
        percentile_us(lat, 0.999),
        total.allow,
        total.deny,
        total.errors,
        total.wrong,
    );
    if args.flood {
        summary += &format!(
            r#","connections":{},"streams":{},"connect_secs":{connect_secs:.2},"shed":{},"shed_rps":{:.0},"answered_rps":{:.0},"shed_p50_us":{:.1},"shed_p99_us":{:.1},"timeouts":{}"#,
            args.connections,
            args.concurrency,
            total.shed,
            total.shed as f64 / elapsed,
            answered as f64 / elapsed,
            percentile_us(&total.shed_latencies_ns, 0.50),
            percentile_us(&total.shed_latencies_ns, 0.99),
            total.timeouts,
        );
    }
    if let Some(recovery) = recovery {
        summary += &format!(r#","recovery":{recovery}"#);
    }
    summary.push('}');
    if total.errors > 0 || total.wrong > 0 || (!args.flood && total.shed > 0) {
        println!("{summary}");
        bail!(
            "{} failed, {} wrong and {} shed answers",
            total.errors,
            total.wrong,
            total.shed
        );
    }
    Ok(summary)
}

/// Length of a recovery window.
const WINDOW_MS: u32 = 100;

/// After the flood: a fresh connection sends one check at a time until one is decided (neither shed nor
/// unanswered), then the closed-loop run; returns JSON with that first time and the per-window figures.
async fn recover(
    args: &Args,
    duration: Duration,
    requests: &Arc<Vec<CheckRequest>>,
    expected: &Arc<Vec<i32>>,
) -> anyhow::Result<String> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut probes = 0u64;
    let mut first_decided_ms = None;
    let probe = connect(&args.addr, 1, true).await?;
    let mut client = AuthorizationClient::new(probe[0].clone());
    // Bounded by the recovery period; a probe that gets no answer is given up after --timeout-ms.
    let limit = args.timeout.unwrap_or(Duration::from_secs(2));
    while Instant::now() < deadline {
        probes += 1;
        let which = probes as usize % requests.len();
        let answer = tokio::time::timeout(limit, client.check(requests[which].clone())).await;
        if let Ok(Ok(response)) = answer {
            let response = response.into_inner();
            if is_shed(&response) == Ok(false)
                && response.status.map_or(OK, |s| s.code) == expected[which]
            {
                first_decided_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    let probe_connect_and_first = started.elapsed();
    let channels = connect(&args.addr, args.recover_connections, true).await?;
    let shape = Run {
        streams: args.recover_concurrency,
        duration: duration.saturating_sub(probe_connect_and_first),
        rate: None,
        timeout: args.timeout,
        cut: true,
        windows: true,
    };
    let offset_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
    let (tally, _) = drive(&channels, shape, requests, expected).await?;
    let windows = (shape.duration.as_millis() as u32).div_ceil(WINDOW_MS) as usize;
    let mut per_window: Vec<Vec<u64>> = vec![Vec::new(); windows];
    let mut shed_per_window = vec![0u32; windows];
    for (at_ms, latency) in tally.timed_ns {
        if let Some(w) = per_window.get_mut((at_ms / WINDOW_MS) as usize) {
            w.push(latency);
        }
    }
    for at_ms in tally.shed_at_ms {
        if let Some(w) = shed_per_window.get_mut((at_ms / WINDOW_MS) as usize) {
            *w += 1;
        }
    }
    // [ms since the flood ended, decided checks, their p99 in µs, shed answers]
    let rows: Vec<String> = per_window
        .iter_mut()
        .zip(&shed_per_window)
        .enumerate()
        .map(|(w, (lat, shed))| {
            lat.sort_unstable();
            format!(
                "[{},{},{:.1},{shed}]",
                offset_ms + w as u32 * WINDOW_MS,
                lat.len(),
                percentile_us(lat, 0.99)
            )
        })
        .collect();
    Ok(format!(
        r#"{{"probes":{probes},"first_decided_ms":{},"errors":{},"wrong":{},"timeouts":{},"windows":[{}]}}"#,
        first_decided_ms.map_or("null".to_owned(), |ms| format!("{ms:.1}")),
        tally.errors,
        tally.wrong,
        tally.timeouts,
        rows.join(",")
    ))
}
