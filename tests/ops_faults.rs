//! Faults while serving, against the real binary: the server killed mid-reload and restarted under load,
//! the rules directory turning unreadable, a rule file replaced by a directory, and the one thing the
//! server writes (its log, on stderr) going to a closed pipe or a full filesystem. In every case no Check
//! gets an RPC error or a decision no rule set in force would give, the last good rules keep serving, the
//! fault shows in `/rules` and the metrics, and undoing it recovers.
//!
//! The full-filesystem test mounts a tmpfs, so it needs root (CI runs as root); it fails, not skips,
//! without it.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use egress_authz::grpc::admin::pb as admin_pb;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

use testkit::flip::{
    assert_allowed, check_a, check_to, error_cleared, failure_counted, reload_error, reloads,
    rules_a, rules_b,
};
use testkit::{
    RPC_TIMEOUT, Server, ServerBuilder, bounded, check, is_allowed, message_of, poll_until,
    reason_of, time_until_verdict, write_by_rename, write_in_place,
};

/// How long to wait for a reload, a failure report or a recovery before failing.
const GIVE_UP: Duration = Duration::from_secs(10);
const LOG_WRITE_ERRORS_TOTAL: &str = "egress_authz_log_write_errors_total";
const CONFIG_INFO: &str = "egress_authz_config_info";
const RELOAD_SUCCESSFUL: &str = "egress_authz_config_last_reload_successful";
const START_TIME: &str = "process_start_time_seconds";
/// The uid the server runs as when the tests run as root, so that file permissions apply to it.
const NOBODY: u32 = 65_534;

// === Rule sets and the checks that tell them apart ===

/// Filler rules in the large rule set; enough that compiling it (about a second on a debug build)
/// leaves ample time to kill the server while it is still compiling.
const LARGE_RULES: usize = 20_000;

/// Rule set B plus `LARGE_RULES` rules letting `default` reach `h<i>.filler.example`.
fn large_rules_b() -> String {
    let mut text = rules_b();
    for i in 0..LARGE_RULES {
        text.push_str(&format!(
            "- name: filler-{i}\n  from:\n    namespaces: [default]\n  to:\n    hosts: [h{i}.filler.example]\n"
        ));
    }
    text
}

/// A check and its verdict under rule sets A and B (small or large B alike).
#[derive(Clone, Debug)]
struct Probe {
    request: CheckRequest,
    label: &'static str,
    allowed_by_a: bool,
    allowed_by_b: bool,
}

fn probes() -> Vec<Probe> {
    let probe = |label, namespace, host, allowed_by_a, allowed_by_b| Probe {
        request: check_to(namespace, host),
        label,
        allowed_by_a,
        allowed_by_b,
    };
    vec![
        probe("default -> a", "default", "a.example.com", true, false),
        probe("default -> b", "default", "b.example.com", false, true),
        probe(
            "default -> filler",
            "default",
            "h12345.filler.example",
            false,
            true,
        ),
        // No rule set allows this one: an allow would be a decision no rule set gives.
        probe("other -> b", "other", "b.example.com", false, false),
    ]
}

// === A load loop that judges every answer ===

/// Most checks one load client sends, and the longest it runs, whatever the test does.
const LOAD_MAX_CHECKS: u64 = 200_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(30);
/// Checks answered before the large file is written, and while it is being compiled.
const LOAD_BEFORE_RELOAD: u64 = 100;
const LOAD_DURING_RELOAD: u64 = 200;
/// Examples kept per kind of problem.
const KEEP: usize = 5;

/// What a load loop saw.
#[derive(Debug, Default)]
struct LoadReport {
    sent: u64,
    /// Answers only A explains, and only B explains.
    only_a: u64,
    only_b: u64,
    rpc_errors: Vec<String>,
    /// Answers neither rule set gives.
    wrong: Vec<String>,
    /// A-only answers after a B-only one on the same client: a swap is one-way.
    went_back: Vec<String>,
}

impl LoadReport {
    fn merge(&mut self, other: Self) {
        self.sent += other.sent;
        self.only_a += other.only_a;
        self.only_b += other.only_b;
        for (mine, theirs) in [
            (&mut self.rpc_errors, other.rpc_errors),
            (&mut self.wrong, other.wrong),
            (&mut self.went_back, other.went_back),
        ] {
            mine.extend(theirs);
            mine.truncate(KEEP);
        }
    }

    fn assert_clean(&self, context: &str) {
        assert!(self.sent > 0, "{context}: no check was sent");
        assert!(
            self.rpc_errors.is_empty(),
            "{context}: RPC errors: {:?}",
            self.rpc_errors
        );
        assert!(
            self.wrong.is_empty(),
            "{context}: answers no rule set gives: {:?}",
            self.wrong
        );
        assert!(
            self.went_back.is_empty(),
            "{context}: A's answers after B's: {:?}",
            self.went_back
        );
    }
}

/// Clients sending the probes round-robin until stopped, each on its own connection.
struct LoadLoop {
    stop: Arc<AtomicBool>,
    /// Checks answered so far, by all clients.
    answered: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl LoadLoop {
    async fn start(server: &Server, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let client = server.authz().await;
            tasks.push(tokio::spawn(load_client(
                client,
                Arc::clone(&stop),
                Arc::clone(&answered),
            )));
        }
        Self {
            stop,
            answered,
            clients: tasks,
        }
    }

    /// Waits until `more` further checks have been answered.
    async fn wait_for_answers(&self, more: u64) {
        let target = self.answered.load(Ordering::Relaxed) + more;
        let reached = poll_until(GIVE_UP, || async {
            (self.answered.load(Ordering::Relaxed) >= target).then_some(())
        })
        .await;
        assert!(reached.is_some(), "the load clients stalled");
    }

    /// Stops the clients after their current check and merges what they saw.
    async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport::default();
        for client in self.clients {
            report.merge(client.await.expect("load client"));
        }
        report
    }
}

async fn load_client(
    mut client: AuthorizationClient<Channel>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> LoadReport {
    let probes = probes();
    let mut report = LoadReport::default();
    let started = Instant::now();
    let mut seen_b = false;
    for probe in probes.iter().cycle().take(LOAD_MAX_CHECKS as usize) {
        if stop.load(Ordering::Relaxed) || started.elapsed() > LOAD_MAX_TIME {
            break;
        }
        report.sent += 1;
        let response = tokio::time::timeout(RPC_TIMEOUT, client.check(probe.request.clone())).await;
        answered.fetch_add(1, Ordering::Relaxed);
        let response = match response {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                report.rpc_errors.push(format!("{}: {status}", probe.label));
                continue;
            }
            Err(_) => {
                report
                    .rpc_errors
                    .push(format!("{}: timed out", probe.label));
                continue;
            }
        };
        let allowed = is_allowed(&response);
        let answer = || {
            format!(
                "{}: allowed={allowed} {:?}",
                probe.label,
                reason_of(&response)
            )
        };
        match (allowed == probe.allowed_by_a, allowed == probe.allowed_by_b) {
            (false, false) => report.wrong.push(answer()),
            (true, false) if seen_b => report.went_back.push(answer()),
            (true, false) => report.only_a += 1,
            (false, true) => {
                seen_b = true;
                report.only_b += 1;
            }
            (true, true) => {}
        }
        report.rpc_errors.truncate(KEEP);
        report.wrong.truncate(KEEP);
        report.went_back.truncate(KEEP);
    }
    report
}

// === Observing the server ===

/// The digest the rule files at `path` compile to, computed here, not by the server.
fn digest_on_disk(path: &Path) -> String {
    egress_authz::reload::load_policy(path)
        .expect("the rules on disk are valid")
        .digest()
        .to_owned()
}

/// The digest of the rule set that decided an Explain just now (the same policy Check reads).
async fn digest_deciding(server: &Server) -> String {
    let mut admin = admin_pb::admin_client::AdminClient::new(server.channel().await)
        .max_decoding_message_size(64 * 1024 * 1024);
    let bytes = prost::Message::encode_to_vec(&check_a());
    let request: admin_pb::CheckRequest =
        prost::Message::decode(bytes.as_slice()).expect("Envoy's CheckRequest decodes as admin's");
    admin
        .explain(request)
        .await
        .expect("Explain")
        .into_inner()
        .rules_sha256
}

/// `/rules`, the info metric and the rule set deciding checks all name `digest`, and the reload
/// failure flag agrees with `/rules`' error.
async fn assert_serving(server: &Server, digest: &str, context: &str) {
    let status = server.rules_status().await;
    assert_eq!(
        status["sha256"].as_str(),
        Some(digest),
        "{context}: {status}"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.get(CONFIG_INFO, &[("sha256", digest)]),
        Some(1.0),
        "{context}: egress_authz_config_info names another rule set"
    );
    let failing = status["last_reload_error"].is_string();
    assert_eq!(
        metrics.get(RELOAD_SUCCESSFUL, &[]),
        Some(if failing { 0.0 } else { 1.0 }),
        "{context}: {RELOAD_SUCCESSFUL} disagrees with /rules: {status}"
    );
    assert_eq!(digest_deciding(server).await, digest, "{context}: Explain");
}

/// Applies a fault and checks what it must look like: counted once in
/// `egress_authz_reloads_total{result="failure"}`, its error in `/rules` (containing `error_contains`),
/// the previous rules still deciding and still reported everywhere, the server ready. Returns the error.
async fn assert_fault_visible(
    server: &Server,
    fault: impl FnOnce(),
    error_contains: &str,
) -> String {
    let mut client = server.authz().await;
    let before = server.rules_status().await;
    let digest = before["sha256"].as_str().expect("sha256").to_owned();
    let failures = reloads(server, "failure").await;
    let successes = reloads(server, "success").await;
    assert_allowed(&mut client, true, "before the fault").await;
    fault();
    let counted = failure_counted(server, failures, GIVE_UP).await;
    assert!(counted, "the fault was not counted as a failed reload");
    let status = server.rules_status().await;
    let error = reload_error(&status, error_contains);
    assert_eq!(
        status["last_reload_success_unix_seconds"], before["last_reload_success_unix_seconds"],
        "no new rule set was loaded"
    );
    // Its error is set by now, so this also checks that the failure flag is down.
    assert_serving(server, &digest, "during the fault").await;
    assert_allowed(&mut client, true, "the last good rules keep serving").await;
    assert_eq!(server.admin_get("/readyz").await.0, 200);
    assert_eq!(reloads(server, "success").await, successes);
    assert_eq!(reloads(server, "failure").await, failures + 1.0);
    error
}

/// Waits for the speculative reload the server makes once its watch is up (it needs
/// `RUST_LOG=...,egress_authz::reload=debug`), so that it cannot read a change half-made.
async fn wait_for_startup_resync(server: &Server) {
    let settled = server
        .logs
        .wait_for(GIVE_UP, |l| message_of(l) == Some("Rules unchanged"))
        .await;
    assert!(settled.is_some(), "the startup resync ran");
}

/// True if the server has a `rules-reload` thread now, i.e. a reload is reading or compiling.
fn reloading(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("comm"))
            .is_ok_and(|name| name.trim() == "rules-reload")
    })
}

fn running_as_root() -> bool {
    let probe = tempfile::tempfile().expect("temporary file");
    probe.metadata().expect("metadata").uid() == 0
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A server on `rules`; as `nobody` when the tests run as root (root reads through any permission).
/// `root` is the temporary directory holding the rules: made traversable for `nobody`.
async fn spawn_unprivileged(root: &Path, rules: &Path) -> Server {
    let mut builder = ServerBuilder::new(rules).env("RUST_LOG", "info,egress_authz::reload=debug");
    if running_as_root() {
        chmod(root, 0o755);
        builder = builder.uid(NOBODY);
    }
    builder.spawn().await
}

// === 1. SIGKILL mid-reload, restart under load ===

/// A large rule file lands while clients are checking; the server is killed with SIGKILL while it is
/// still compiling it, then restarted on the same directory under load. Before the kill every answer is
/// A's or B's (never back to A once B decided); after the restart only B's, since B is on disk and
/// valid; `/rules`, the info metric and the deciding rule set all name the digest of the files on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_reload_then_restart_serves_the_rules_on_disk() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        std::fs::write(&path, rules_a()).unwrap();
        let large = large_rules_b();
        let mut first = ServerBuilder::new(dir.path())
            .env("RUST_LOG", "info,egress_authz::reload=debug")
            .spawn()
            .await;
        wait_for_startup_resync(&first).await;
        let digest_a = first.rules_status().await["sha256"]
            .as_str()
            .unwrap()
            .to_owned();
        let first_start = first.metrics().await.get(START_TIME, &[]);
        assert!(
            first_start.is_some_and(|t| t > 0.0),
            "{START_TIME}: {first_start:?}"
        );

        let load = LoadLoop::start(&first, 2).await;
        load.wait_for_answers(LOAD_BEFORE_RELOAD).await;
        write_by_rename(&path, &large);
        let pid = first.pid();
        let compiling = poll_until(GIVE_UP, || async { reloading(pid).then_some(()) }).await;
        assert!(compiling.is_some(), "the new file did not start a reload");
        load.wait_for_answers(LOAD_DURING_RELOAD).await;
        assert!(
            reloading(pid),
            "the reload finished under load; make the large rule set larger"
        );
        // Stop the clients first: a check in flight when the process dies fails on any server.
        let before_kill = load.finish().await;
        first.signal("KILL");
        let status = first.wait_exit(GIVE_UP).await.expect("SIGKILL ends it");
        assert_eq!(status.signal(), Some(9), "{status:?}");
        assert!(
            first.logs.with_message("Applied new rules").is_empty(),
            "the reload finished before the kill; make the large rule set larger"
        );
        eprintln!("before the kill: {before_kill:?}");
        before_kill.assert_clean("before the kill");
        assert_eq!(before_kill.only_b, 0, "B was never applied, yet decided");

        // The restart compiles the large file before it serves: the clients start on its first answer.
        let second = ServerBuilder::new(dir.path())
            .env("RUST_LOG", "info,egress_authz::reload=debug")
            .spawn()
            .await;
        let load = LoadLoop::start(&second, 2).await;
        let on_disk = digest_on_disk(dir.path());
        assert_ne!(on_disk, digest_a);
        assert_serving(&second, &on_disk, "after the restart").await;
        // What shows the restart in the metrics: a later start time.
        let second_start = second.metrics().await.get(START_TIME, &[]);
        assert!(
            second_start > first_start,
            "{second_start:?} vs {first_start:?}"
        );
        let status = second.rules_status().await;
        assert_eq!(status["rules"].as_u64(), Some(LARGE_RULES as u64 + 1));
        assert!(status["last_reload_error"].is_null(), "{status}");
        // Keep the load on through the restarted server's first reload attempt (its startup resync),
        // which must find the files unchanged.
        wait_for_startup_resync(&second).await;
        let after_restart = load.finish().await;
        eprintln!("after the restart: {after_restart:?}");
        after_restart.assert_clean("after the restart");
        assert_eq!(after_restart.only_a, 0, "A is gone from disk, yet decided");
        assert!(after_restart.only_b > 0);
        assert_eq!(reloads(&second, "failure").await, 0.0);
    })
    .await;
}

// === 2. The rules directory turns unreadable ===

/// `chmod 000` on the served directory: the reload fails with EACCES, which is counted once and shown
/// in `/rules` while A keeps serving. A change made meanwhile is picked up once it is readable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_rules_directory_keeps_the_last_good_rules_and_recovers() {
    bounded(async {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("rules.d");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("rules.yaml");
        std::fs::write(&path, rules_a()).unwrap();
        // The same file under another name outside the directory, to change it while the directory is
        // closed even to its owner.
        let link = root.path().join("rules.link");
        std::fs::hard_link(&path, &link).unwrap();
        let server = spawn_unprivileged(root.path(), &dir).await;
        wait_for_startup_resync(&server).await;

        let error = assert_fault_visible(&server, || chmod(&dir, 0o000), "Permission denied").await;
        assert!(error.contains("rules.d"), "names the directory: {error}");

        // A change the server cannot read yet.
        write_in_place(&link, &rules_b());
        let mut client = server.authz().await;
        let restored = Instant::now();
        chmod(&dir, 0o755);
        let latency = time_until_verdict(&mut client, &check_a(), false, restored, GIVE_UP).await;
        assert!(latency.is_some(), "the readable directory was not reloaded");
        assert_serving(&server, &digest_on_disk(&dir), "after recovery").await;
        let status = server.rules_status().await;
        assert!(status["last_reload_error"].is_null(), "{status}");
        assert_eq!(reloads(&server, "success").await, 1.0);
        assert_eq!(reloads(&server, "failure").await, 1.0, "counted once");
    })
    .await;
}

// === 3. A rule file replaced by a directory of the same name, and back ===

/// A rule file that turns into a directory while served, then back into the same file. Each case is a
/// row of the table below.
struct ReplacedByDirectory {
    /// The rule files in the temporary directory at the start, as (name, contents).
    files: fn() -> Vec<(&'static str, String)>,
    /// The file the server is pointed at, or `None` for the temporary directory itself.
    served: Option<&'static str>,
    /// Turns a file into a directory in one atomic step (see [`exchange`]).
    fault: fn(&Path),
    /// Text the error in `/rules` must contain.
    error_contains: &'static str,
    /// What else must hold during the fault, given its error.
    during: fn(&Server, &str),
    /// Puts the original files back.
    undo: fn(&Path),
}

/// Starts on the case's files, applies its fault (see `assert_fault_visible`), undoes it and checks
/// that the error clears without a new load.
async fn replaced_by_a_directory_and_back(case: ReplacedByDirectory) {
    bounded(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        for (name, contents) in (case.files)() {
            std::fs::write(dir.path().join(name), contents).expect("write a rule file");
        }
        let served = case
            .served
            .map_or_else(|| dir.path().to_path_buf(), |file| dir.path().join(file));
        let server = ServerBuilder::new(&served)
            .env("RUST_LOG", "info,egress_authz::reload=debug")
            .spawn()
            .await;
        // Faults and undos are single exchanges, so no reload can read a state between them; waiting
        // for the startup resync keeps its "Rules unchanged" from standing in for the fault's reload.
        wait_for_startup_resync(&server).await;
        let error =
            assert_fault_visible(&server, || (case.fault)(dir.path()), case.error_contains).await;
        (case.during)(&server, &error);
        (case.undo)(dir.path());
        assert_error_clears(&server).await;
    })
    .await;
}

/// Swaps two paths in one `renameat2(RENAME_EXCHANGE)`: a reload sees the tree before or after, never
/// in between. A removal followed by a mkdir is two steps, and on a loaded machine the debounce window
/// can close between them (the reload then sees the file gone and applies the rules without it).
fn exchange(a: &Path, b: &Path) {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).expect("renameat2(RENAME_EXCHANGE)");
}

/// A rule that neither A nor B has, in a second file beside them.
const EXTRA_RULES: &str = "rules:\n- name: allow-c\n  to:\n    hosts: [c.example.com]\n";

/// Each row is a test of its own (so they run in parallel and fail by name).
macro_rules! replaced_by_a_directory_tests {
    ($($(#[doc = $doc:literal])* $name:ident: $case:expr;)*) => {$(
        $(#[doc = $doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            replaced_by_a_directory_and_back($case).await;
        }
    )*};
}

replaced_by_a_directory_tests! {
    /// In a served directory, `20-extra.yaml` becomes a directory: the whole rule set is rejected
    /// (dropping just that file would silently drop its rules), then putting the file back clears the
    /// error.
    rule_file_in_a_directory_replaced_by_a_directory_and_back: ReplacedByDirectory {
        files: || vec![("10-a.yaml", rules_a()), ("20-extra.yaml", EXTRA_RULES.to_owned())],
        served: None,
        fault: |dir| {
            // Built under a hidden name, which the server skips, then swapped in.
            let swap = dir.join(".20-extra.swap");
            std::fs::create_dir(&swap).unwrap();
            std::fs::write(swap.join("inner.yaml"), rules_b()).unwrap();
            exchange(&swap, &dir.join("20-extra.yaml"));
        },
        error_contains: "not a regular file",
        during: |server, error| {
            assert!(error.contains("20-extra.yaml"), "{error}");
            assert!(server.logs.with_message("Applied new rules").is_empty());
        },
        undo: |dir| {
            let swap = dir.join(".20-extra.swap");
            exchange(&swap, &dir.join("20-extra.yaml"));
            std::fs::remove_dir_all(&swap).unwrap();
        },
    };

    /// The served path itself, a file, becomes an (empty) directory and then a file again.
    served_rule_file_replaced_by_a_directory_and_back: ReplacedByDirectory {
        files: || vec![("rules.yaml", rules_a())],
        served: Some("rules.yaml"),
        fault: |dir| {
            let swap = dir.join(".rules.swap");
            std::fs::create_dir(&swap).unwrap();
            exchange(&swap, &dir.join("rules.yaml"));
        },
        error_contains: "no *.yaml or *.yml rule files",
        during: |_, _| {},
        undo: |dir| {
            let swap = dir.join(".rules.swap");
            exchange(&swap, &dir.join("rules.yaml"));
            std::fs::remove_dir(&swap).unwrap();
        },
    };
}

/// The original files are back: the error clears without a new load (the content is the live one).
async fn assert_error_clears(server: &Server) {
    let digest = server.rules_status().await["sha256"]
        .as_str()
        .expect("sha256")
        .to_owned();
    assert!(
        error_cleared(server, GIVE_UP).await,
        "restoring the file clears last_reload_error"
    );
    assert_serving(server, &digest, "after restoring").await;
    assert_eq!(reloads(server, "success").await, 0.0);
    assert_eq!(reloads(server, "failure").await, 1.0);
}

// === 4. The log sink fails ===
//
// The server writes no file: its only output is the log on stderr (stdout stays empty). Where stderr
// goes is up to the container runtime; what can go wrong is that the reader went away (EPIPE) or that
// the file behind it is on a full disk (ENOSPC). Neither may cost a check, a reload or a SIGHUP; the
// lost lines are counted in egress_authz_log_write_errors_total. A log consumer that stops reading
// without closing (a full pipe) blocks the writer instead: not covered here.

/// Rules reached through a symlink into a directory the watcher does not watch, so only SIGHUP reloads
/// them: each step below then logs from the SIGHUP task, the reload loop and the reload thread.
struct SighupRules {
    target: PathBuf,
    path: PathBuf,
}

impl SighupRules {
    fn create(root: &Path) -> Self {
        std::fs::create_dir(root.join("watched")).expect("create watched/");
        std::fs::create_dir(root.join("elsewhere")).expect("create elsewhere/");
        let target = root.join("elsewhere/rules.yaml");
        std::fs::write(&target, rules_a()).expect("write the rules");
        let path = root.join("watched/rules.yaml");
        std::os::unix::fs::symlink(&target, &path).expect("symlink the rules");
        Self { target, path }
    }
}

/// With every log write failing: denied checks (each one logs), a rejected reload, two applied reloads,
/// all through SIGHUP. All answered and applied as if the log were fine; the lost lines are counted.
async fn serve_through_a_failing_log(server: &Server, rules: &SighupRules) {
    let lost_before = log_write_errors(server).await;
    let mut client = server.authz().await;
    for i in 0..20 {
        // Distinct hosts, so deny sampling lets every one of them log.
        let response = check(
            &mut client,
            check_to("default", &format!("d{i}.example.com")),
        )
        .await;
        assert!(!is_allowed(&response), "d{i}.example.com is denied");
        assert_eq!(reason_of(&response).as_deref(), Some("no_matching_rule"));
    }
    assert_allowed(&mut client, true, "A serves").await;
    let lost = poll_until(GIVE_UP, || async {
        let lost = log_write_errors(server).await;
        (lost > lost_before).then_some(lost)
    })
    .await;
    assert!(lost.is_some(), "failed log writes are not counted");

    let failures = reloads(server, "failure").await;
    write_in_place(&rules.target, "rules: [\n");
    server.signal("HUP");
    let counted = failure_counted(server, failures, GIVE_UP).await;
    assert!(counted, "the rejected reload is counted");
    let status = server.rules_status().await;
    assert!(status["last_reload_error"].is_string(), "{status}");
    assert_allowed(&mut client, true, "A keeps serving").await;

    for (rules_text, allowed) in [(rules_b(), false), (rules_a(), true)] {
        write_in_place(&rules.target, &rules_text);
        server.signal("HUP");
        let applied =
            time_until_verdict(&mut client, &check_a(), allowed, Instant::now(), GIVE_UP).await;
        assert!(
            applied.is_some(),
            "SIGHUP still reloads (to allowed={allowed})"
        );
        assert_serving(server, &digest_on_disk(&rules.path), "after SIGHUP").await;
    }
    assert_eq!(reloads(server, "success").await, 2.0);
    assert_eq!(server.admin_get("/readyz").await.0, 200);
}

async fn log_write_errors(server: &Server) -> f64 {
    server
        .metrics()
        .await
        .get(LOG_WRITE_ERRORS_TOTAL, &[])
        .expect("egress_authz_log_write_errors_total is pre-registered")
}

/// SIGTERM still drains and exits 0 (shutdown logs too).
async fn assert_clean_exit(mut server: Server) {
    server.signal("TERM");
    let status = server.wait_exit(GIVE_UP).await.expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// The log collector goes away: every later write to stderr fails with EPIPE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_to_a_closed_pipe_costs_no_check_and_no_reload() {
    bounded(async {
        let root = tempfile::tempdir().unwrap();
        let rules = SighupRules::create(root.path());
        let mut server = ServerBuilder::new(&rules.path).spawn().await;
        assert_eq!(log_write_errors(&server).await, 0.0);
        server.close_stderr().await;
        serve_through_a_failing_log(&server, &rules).await;
        assert_clean_exit(server).await;
    })
    .await;
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        assert!(
            running_as_root(),
            "this test mounts a tmpfs to fill a filesystem and needs root: run it as root (CI does)"
        );
        std::fs::create_dir(dir).expect("create the mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status:?}");
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server killed on drop may not have closed its log file yet.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the filesystem holding `path` with one file there; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).expect("create filler");
    let chunk = [0u8; 4096];
    // Bounded: the filesystem is tiny, so this ends in ENOSPC long before the bound.
    for _ in 0..4096 {
        if let Err(error) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(error.raw_os_error(), Some(28), "expected ENOSPC: {error}");
            return filler;
        }
    }
    panic!("the filesystem did not fill up");
}

/// The log file's filesystem fills up while serving: writes fail with ENOSPC. Once there is room again
/// the log resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_on_a_full_filesystem_costs_no_check_and_no_reload() {
    bounded(async {
        let root = tempfile::tempdir().unwrap();
        let logs = Tmpfs::mount(&root.path().join("logs"), "64k");
        let rules = SighupRules::create(root.path());
        let server = ServerBuilder::new(&rules.path)
            .stderr_file(logs.0.join("server.log"))
            .spawn()
            .await;
        let filler = fill(&logs.0);
        serve_through_a_failing_log(&server, &rules).await;

        std::fs::remove_file(&filler).unwrap();
        // The first line after the fill may complete one cut off by it, and so not parse: log a deny
        // first, then wait for the SIGHUP line.
        let mut client = server.authz().await;
        check(&mut client, check_to("default", "resumed.example.com")).await;
        let sighups = || server.logs.with_message("SIGHUP: reloading rules").len();
        let seen = sighups();
        server.signal("HUP");
        let resumed = poll_until(GIVE_UP, || async { (sighups() > seen).then_some(()) }).await;
        assert!(resumed.is_some(), "the log resumes once there is room");
        assert_clean_exit(server).await;
    })
    .await;
}

/// Deny checks to send while the log reader is stuck: each is logged (sampling off), and together
/// they are more lines than the pipe (64 KiB) and the log queue (8 Ki lines) hold, so lines must be
/// dropped rather than block.
const CHECKS_BEHIND_A_STUCK_READER: usize = 10_000;
const STUCK_READER_CLIENTS: usize = 8;

/// A log reader that stays connected but stops reading fills the stderr pipe. Logging must not then
/// block the threads that log: every check is still answered, the lines that did not fit are dropped
/// and counted, and once the reader reads again the log carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_reader_that_stops_reading_stalls_nothing() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        std::fs::write(&path, rules_a()).unwrap();
        let server = ServerBuilder::new(&path)
            .args(["--decision-log-sample-limit", "0"])
            .spawn()
            .await;
        server.pause_log_reading();

        let mut clients = Vec::new();
        for _ in 0..STUCK_READER_CLIENTS {
            let mut client = server.authz().await;
            clients.push(tokio::spawn(async move {
                for _ in 0..CHECKS_BEHIND_A_STUCK_READER / STUCK_READER_CLIENTS {
                    // Denied (rule set A allows only a.example.com), so each one is logged.
                    let response = check(&mut client, check_to("default", "b.example.com")).await;
                    assert_eq!(reason_of(&response).as_deref(), Some("no_matching_rule"));
                }
            }));
        }
        for client in clients {
            client
                .await
                .expect("every check answered while the log is stuck");
        }
        let dropped = server
            .metrics()
            .await
            .get("egress_authz_log_lines_dropped_total", &[])
            .unwrap_or_default();
        assert!(
            dropped > 0.0,
            "lines past the queue are dropped and counted"
        );

        server.resume_log_reading();
        let marker = server.logs.with_message("SIGHUP: reloading rules").len();
        server.signal("HUP");
        let logged = poll_until(GIVE_UP, || async {
            (server.logs.with_message("SIGHUP: reloading rules").len() > marker).then_some(())
        })
        .await;
        assert!(logged.is_some(), "the log carries on once read again");
    })
    .await;
}
