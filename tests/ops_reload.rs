//! Hot reload against a real server process: every way a rule file changes in production is live
//! within 1 s, SIGHUP forces a reload, an unchanged hash is not a reload, a bad file never takes effect
//! (and is counted and reported), a dead watcher is rebuilt, and swaps under load lose no check.
//!
//! Each flip test starts on rule set A (allows `a.example.com`), switches to B (allows only
//! `b.example.com`) and measures from the write to the first Check that is denied, polling every 20 ms.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

use testkit::flip::{
    RELOADS_TOTAL, assert_allowed, check_a, error_cleared, failure_counted, reload_error, reloads,
    rules_a, rules_b,
};
use testkit::{
    ConfigMapDir, Server, ServerBuilder, bounded, is_allowed, message_of, poll_until, reason_of,
    time_until_verdict, write_by_rename, write_in_place,
};

/// How long to keep polling before declaring that a change never landed. Half the 10 s resync period, so
/// a change seen in time was seen by the watcher (or SIGHUP). Latencies are printed, not asserted: the
/// reload target is measured in BENCHMARKS.md, not in a timed test on a shared machine.
const GIVE_UP: Duration = Duration::from_secs(5);
/// How long a reload's outcome may take to be reported where the point is the outcome (a rejection, a
/// swap under traffic), not its speed: the reload thread runs at a lower priority, so a busy machine can
/// hold it back for seconds.
const OUTCOME_GIVE_UP: Duration = Duration::from_secs(30);
/// Applies `change` (A → B) and returns how long until the server denied `check_a`.
async fn measure_flip(
    client: &mut AuthorizationClient<Channel>,
    label: &str,
    change: impl FnOnce(),
) -> Duration {
    assert_allowed(client, true, "before the change").await;
    let written = Instant::now();
    change();
    let latency = time_until_verdict(client, &check_a(), false, written, GIVE_UP)
        .await
        .unwrap_or_else(|| panic!("{label}: the change was not picked up within {GIVE_UP:?}"));
    eprintln!("reload latency ({label}): {latency:?}");
    latency
}

fn rules_file(dir: &Path, contents: &str) -> PathBuf {
    let path = dir.join("rules.yaml");
    std::fs::write(&path, contents).expect("write rules");
    path
}

/// Logging that also shows the reload attempts that change nothing ("Rules unchanged").
const DEBUG_RELOADS: &str = "info,egress_authz::reload=debug";

/// A server on `rules.yaml` holding rule set A in a new temporary directory (returned: it lives as
/// long as the test needs it), logging with `log` if given, else with the server's default.
async fn spawn_on_rules_a(log: Option<&str>) -> (tempfile::TempDir, PathBuf, Server) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = rules_file(dir.path(), &rules_a());
    let mut builder = ServerBuilder::new(&path);
    if let Some(filter) = log {
        builder = builder.env("RUST_LOG", filter);
    }
    (dir, path, builder.spawn().await)
}

/// A server on rule set A in `rules.yaml` that `change` switches to B (see `measure_flip`).
async fn spawn_and_flip(
    label: &str,
    change: impl FnOnce(&Path),
) -> (
    tempfile::TempDir,
    PathBuf,
    Server,
    AuthorizationClient<Channel>,
) {
    let (dir, path, server) = spawn_on_rules_a(None).await;
    let mut client = server.authz().await;
    measure_flip(&mut client, label, || change(&path)).await;
    (dir, path, server, client)
}

// === Each reload path flips a decision within 1 s ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_write_is_live_within_1s() {
    bounded(async {
        let (_dir, path, server, mut client) =
            spawn_and_flip("in-place write", |path| write_in_place(path, &rules_b())).await;
        // And back, on the same inode.
        let written = Instant::now();
        write_in_place(&path, &rules_a());
        let back = time_until_verdict(&mut client, &check_a(), true, written, GIVE_UP)
            .await
            .expect("second in-place write picked up");
        eprintln!("reload latency (in-place write, back): {back:?}");
        assert_eq!(reloads(&server, "success").await, 2.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_is_live_within_1s() {
    bounded(async {
        let (_dir, _, server, _) = spawn_and_flip("mv tmp rules.yaml", |path| {
            write_by_rename(path, &rules_b())
        })
        .await;
        assert_eq!(reloads(&server, "failure").await, 0.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_is_live_within_1s() {
    bounded(async {
        spawn_and_flip("delete and recreate", |path| {
            std::fs::remove_file(path).unwrap();
            std::fs::write(path, rules_b()).unwrap();
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_is_live_within_1s_when_serving_the_mount_directory() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut mount = ConfigMapDir::create(dir.path(), &[("rules.yaml", &rules_a())]);
        let server = ServerBuilder::new(mount.dir()).spawn().await;
        let mut client = server.authz().await;
        measure_flip(&mut client, "ConfigMap ..data swap, directory", || {
            mount.update(&[("rules.yaml", &rules_b())])
        })
        .await;
        // The hidden `..2026_*` directories and `..data` are not read as rule files.
        let status = server.rules_status().await;
        assert_eq!(
            status["files"].as_array().map(Vec::len),
            Some(1),
            "{status}"
        );
        assert_eq!(reloads(&server, "failure").await, 0.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_is_live_within_1s_when_serving_the_key_symlink() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut mount = ConfigMapDir::create(dir.path(), &[("rules.yaml", &rules_a())]);
        let server = ServerBuilder::new(mount.dir().join("rules.yaml"))
            .spawn()
            .await;
        let mut client = server.authz().await;
        measure_flip(&mut client, "ConfigMap ..data swap, key file", || {
            mount.update(&[("rules.yaml", &rules_b())])
        })
        .await;
        assert_eq!(reloads(&server, "failure").await, 0.0);
    })
    .await;
}

/// The rules path is a symlink into another directory, so writing the target makes no event in the
/// watched directory: only SIGHUP (or the 10 s resync) can pick the change up. The test checks that
/// the watcher indeed did not see it, so a pass means SIGHUP did the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_change_the_watcher_cannot_see() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("watched")).unwrap();
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        let target = dir.path().join("elsewhere/real.yaml");
        std::fs::write(&target, rules_a()).unwrap();
        let path = dir.path().join("watched/rules.yaml");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let server = ServerBuilder::new(&path)
            .env("RUST_LOG", DEBUG_RELOADS)
            .spawn()
            .await;
        // Once watching, the server reloads speculatively (a change made between its initial load
        // and the watch would otherwise be missed); let that pass before making the change.
        let settled = server
            .logs
            .wait_for(GIVE_UP, |l| message_of(l) == Some("Rules unchanged"))
            .await;
        assert!(settled.is_some(), "the startup resync ran");
        let mut client = server.authz().await;
        let sha_before = server.rules_status().await["sha256"].clone();

        write_in_place(&target, &rules_b());
        // Several debounce periods: had the watcher seen the write, B would be live by now.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_allowed(&mut client, true, "the watcher cannot see this write").await;
        assert_eq!(reloads(&server, "success").await, 0.0);

        let signalled = Instant::now();
        server.signal("HUP");
        let latency = time_until_verdict(&mut client, &check_a(), false, signalled, GIVE_UP)
            .await
            .expect("SIGHUP reloads the rules");
        eprintln!("reload latency (SIGHUP): {latency:?}");
        assert_eq!(reloads(&server, "success").await, 1.0);
        let status = server.rules_status().await;
        assert_ne!(status["sha256"], sha_before);
        let metrics = server.metrics().await;
        assert_eq!(
            metrics.get(
                "egress_authz_config_info",
                &[("sha256", status["sha256"].as_str().unwrap())]
            ),
            Some(1.0)
        );
    })
    .await;
}

// === An unchanged hash is not a reload; our own reads are not events ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_content_is_not_a_reload() {
    bounded(async {
        let (_dir, path, server) = spawn_on_rules_a(Some(DEBUG_RELOADS)).await;
        let before = server.rules_status().await;
        let unchanged = |server: &Server| server.logs.with_message("Rules unchanged").len();

        // Same bytes, three ways; each is an attempt (logged at debug) that applies nothing.
        for (i, change) in [
            &(|| write_in_place(&path, &rules_a())) as &dyn Fn(),
            &|| {
                let file = std::fs::File::options().write(true).open(&path).unwrap();
                file.set_modified(std::time::SystemTime::now()).unwrap();
            },
            &|| write_by_rename(&path, &rules_a()),
        ]
        .into_iter()
        .enumerate()
        {
            let seen = unchanged(&server);
            change();
            let attempted = poll_until(GIVE_UP, || async {
                (unchanged(&server) > seen).then_some(())
            })
            .await;
            assert!(
                attempted.is_some(),
                "change #{i} did not cause a reload attempt"
            );
        }
        assert_eq!(reloads(&server, "success").await, 0.0);
        assert_eq!(reloads(&server, "failure").await, 0.0);
        let after = server.rules_status().await;
        assert_eq!(after["sha256"], before["sha256"]);
        assert_eq!(
            after["last_reload_success_unix_seconds"],
            before["last_reload_success_unix_seconds"]
        );
        assert!(server.logs.with_message("Applied new rules").is_empty());
    })
    .await;
}

/// Reading the rules opens them, which inotify reports; were that a trigger, the server would reload
/// in a loop forever after the first change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_rules_does_not_trigger_another_reload() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = rules_file(dir.path(), &rules_a());
        let server = ServerBuilder::new(dir.path())
            .env("RUST_LOG", DEBUG_RELOADS)
            .spawn()
            .await;
        let unchanged = || server.logs.with_message("Rules unchanged").len();
        // The one speculative reload once the watch is up.
        let settled = poll_until(GIVE_UP, || async { (unchanged() == 1).then_some(()) }).await;
        assert!(settled.is_some(), "the startup resync ran");
        write_in_place(&path, &rules_b());
        let applied = server
            .logs
            .wait_for(GIVE_UP, |l| message_of(l) == Some("Applied new rules"))
            .await;
        assert!(applied.is_some(), "the change was applied");
        // Quiet period: several debounce periods with no writes must cause no reload attempt.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let attempts = unchanged() - 1;
        assert_eq!(attempts, 0, "reloads without any change: {attempts}");
    })
    .await;
}

// === Bad files keep the old decision, are counted, reported and logged with file:line:column ===

/// Applies a bad change and checks that it is rejected: the failure counter rises, A still decides,
/// `/rules` reports the error (containing `error_contains`), the log carries it, `/readyz` stays 200.
async fn assert_rejected(server: &Server, change: impl FnOnce(), error_contains: &str) -> String {
    let mut client = server.authz().await;
    assert_allowed(&mut client, true, "before the bad change").await;
    let failures = reloads(server, "failure").await;
    change();
    let counted = failure_counted(server, failures, OUTCOME_GIVE_UP).await;
    assert!(counted, "the failure was not counted");
    assert_allowed(&mut client, true, "the last good rules keep serving").await;
    let status = server.rules_status().await;
    let error = reload_error(&status, error_contains);
    let logged = server
        .logs
        .wait_for(GIVE_UP, |l| {
            message_of(l) == Some("Rejected rule file; keeping previous rules")
                && l["fields"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(error_contains))
        })
        .await;
    assert!(
        logged.is_some(),
        "no rejection logged with {error_contains:?}"
    );
    assert_eq!(server.admin_get("/readyz").await.0, 200);
    assert_eq!(reloads(server, "success").await, 0.0);
    error
}

/// True if `text` contains `<file>:<line>:<column>`.
fn has_location(text: &str, file: &str) -> bool {
    text.match_indices(file).any(|(at, _)| {
        let rest = &text[at + file.len()..];
        let mut parts = rest.splitn(3, ':');
        parts.next() == Some("")
            && parts
                .next()
                .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            && parts
                .next()
                .is_some_and(|c| c.bytes().next().is_some_and(|b| b.is_ascii_digit()))
    })
}

/// The reloader still works after a rejection: a good change goes live.
async fn assert_recovers(server: &Server, path: &Path) {
    let mut client = server.authz().await;
    let written = Instant::now();
    write_by_rename(path, &rules_b());
    let latency = time_until_verdict(&mut client, &check_a(), false, written, GIVE_UP).await;
    assert!(latency.is_some(), "a good file is applied after a bad one");
    let status = server.rules_status().await;
    assert!(status["last_reload_error"].is_null(), "{status}");
}

/// Where a bad-change case keeps its rules, and what the server is pointed at.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// A directory under the temporary root that holds the rule file, if not the root itself.
    subdir: Option<&'static str>,
    /// The rule file holding rule set A when the server starts.
    file: &'static str,
    /// Serve the directory holding the file rather than the file itself.
    serve_dir: bool,
}

impl Layout {
    /// `rules.yaml`, served as a file.
    const FILE: Self = Self {
        subdir: None,
        file: "rules.yaml",
        serve_dir: false,
    };
    /// `rules.yaml`, served through its directory.
    const DIR: Self = Self {
        serve_dir: true,
        ..Self::FILE
    };
}

/// The paths of one bad-change case, as its hooks see them.
#[derive(Debug)]
struct CasePaths {
    /// The temporary root: room for files the server must not see yet.
    root: PathBuf,
    /// The directory holding the rule file.
    dir: PathBuf,
    /// The rule file, which holds rule set A at the start.
    path: PathBuf,
}

/// What a case checks in the rejection's error besides the text the rejection must contain.
#[derive(Clone, Copy, Debug)]
enum ErrorCheck {
    /// The error names `<file>:<line>:<column>`.
    Located(&'static str),
    /// The error contains this text.
    Contains(&'static str),
    /// Not about the error: the server process is still alive.
    ServerSurvived,
}

/// What must happen once the bad change is undone (or, for `Recovers`, written over).
#[derive(Clone, Copy, Debug)]
enum Afterwards {
    /// Nothing more is checked.
    Nothing,
    /// Writing rule set B by rename goes live and clears the error.
    Recovers,
    /// The live content is back, so the error clears without a reload.
    ErrorClears,
}

/// One way a rule file can go bad while the server runs. Each case is a row of the table below.
#[derive(Debug)]
struct BadChange {
    layout: Layout,
    /// Run the server as `nobody` when the tests run as root: root reads through `chmod 000`.
    unprivileged: bool,
    /// Made once the server runs, before the failure count the rejection is measured from.
    prepare: Option<fn(&CasePaths)>,
    change: fn(&CasePaths),
    /// Text the error in `/rules` and the log line must both contain.
    error_contains: &'static str,
    error_checks: &'static [ErrorCheck],
    undo: Option<fn(&CasePaths)>,
    afterwards: Afterwards,
}

impl BadChange {
    fn new(layout: Layout, change: fn(&CasePaths), error_contains: &'static str) -> Self {
        Self {
            layout,
            unprivileged: false,
            prepare: None,
            change,
            error_contains,
            error_checks: &[],
            undo: None,
            afterwards: Afterwards::Nothing,
        }
    }

    fn unprivileged(self) -> Self {
        Self {
            unprivileged: true,
            ..self
        }
    }

    fn prepare(self, prepare: fn(&CasePaths)) -> Self {
        Self {
            prepare: Some(prepare),
            ..self
        }
    }

    fn error_checks(self, error_checks: &'static [ErrorCheck]) -> Self {
        Self {
            error_checks,
            ..self
        }
    }

    fn undo(self, undo: fn(&CasePaths)) -> Self {
        Self {
            undo: Some(undo),
            ..self
        }
    }

    fn then(self, afterwards: Afterwards) -> Self {
        Self { afterwards, ..self }
    }
}

/// Starts a server on rule set A laid out as `case` says, applies its bad change, checks the rejection
/// (see `assert_rejected`) and what the case adds, undoes the change and checks what follows.
async fn reject_then_recover(name: &str, case: BadChange) {
    use std::os::unix::fs::MetadataExt as _;
    bounded(async {
        let root = tempfile::tempdir().expect("temporary directory");
        let dir = match case.layout.subdir {
            Some(subdir) => root.path().join(subdir),
            None => root.path().to_path_buf(),
        };
        std::fs::create_dir_all(&dir).expect("create the rules directory");
        let path = dir.join(case.layout.file);
        std::fs::write(&path, rules_a()).expect("write rule set A");
        let paths = CasePaths {
            root: root.path().to_path_buf(),
            dir,
            path,
        };
        let served = if case.layout.serve_dir {
            &paths.dir
        } else {
            &paths.path
        };
        let mut builder = ServerBuilder::new(served);
        if case.unprivileged
            && std::fs::metadata(&paths.path)
                .expect("stat the rules")
                .uid()
                == 0
        {
            const NOBODY: u32 = 65_534;
            chmod(&paths.root, 0o755);
            builder = builder.uid(NOBODY);
        }
        let mut server = builder.spawn().await;
        if let Some(prepare) = case.prepare {
            prepare(&paths);
        }
        let error = assert_rejected(&server, || (case.change)(&paths), case.error_contains).await;
        for check in case.error_checks {
            let holds = match *check {
                ErrorCheck::Located(file) => has_location(&error, file),
                ErrorCheck::Contains(text) => error.contains(text),
                ErrorCheck::ServerSurvived => server.is_running(),
            };
            assert!(holds, "{name}: {check:?} does not hold: {error}");
        }
        if let Some(undo) = case.undo {
            undo(&paths);
        }
        match case.afterwards {
            Afterwards::Nothing => {}
            Afterwards::Recovers => assert_recovers(&server, &paths.path).await,
            Afterwards::ErrorClears => {
                assert!(
                    error_cleared(&server, GIVE_UP).await,
                    "{name}: restoring the file clears last_reload_error"
                );
                assert_eq!(reloads(&server, "success").await, 0.0, "{name}");
            }
        }
    })
    .await;
}

/// Each row is a test of its own (so they run in parallel and fail by name): the name, then the case.
macro_rules! bad_change_tests {
    ($($(#[doc = $doc:literal])* $name:ident: $case:expr;)*) => {$(
        $(#[doc = $doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            reject_then_recover(stringify!($name), $case).await;
        }
    )*};
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Rule set B cut off by a writer that died mid-rule: the flow sequence is never closed.
fn half_written_rules_b() -> String {
    let mut text = rules_b();
    let cut = text.find("b.exam").expect("rule set B names b.example.com") + "b.exam".len();
    text.truncate(cut);
    text
}

/// 32k rules sharing one 32 KiB description through an alias: about 1 MB written, 1 GiB once every
/// alias is expanded.
fn alias_bomb() -> String {
    let mut text = format!(
        "defaultAction: DENY\nrules:\n- name: r0\n  description: &d {}\n",
        "x".repeat(32 * 1024)
    );
    for i in 1..32 * 1024 {
        text.push_str(&format!("- {{name: r{i}, description: *d}}\n"));
    }
    text
}

/// Rule set B with its flow sequence never closed.
const YAML_SYNTAX_ERROR: &str =
    "defaultAction: DENY\nrules:\n- name: allow-b\n  to: {hosts: [b.example.com]\n";
/// `namespace` (singular), on line 5, is a typo for `namespaces`: unknown fields are errors.
const SCHEMA_ERROR: &str =
    "defaultAction: DENY\nrules:\n- name: allow-b\n  from:\n    namespace: [default]\n";
/// A second rule named `allow-a`, for another file beside rule set A.
const ALLOW_A_AGAIN: &str = "rules:\n- name: allow-a\n  to:\n    hosts: [c.example.com]\n";

bad_change_tests! {
    yaml_syntax_error_keeps_the_previous_rules: BadChange::new(
        Layout::FILE,
        |p| write_in_place(&p.path, YAML_SYNTAX_ERROR),
        "rules.yaml",
    )
    .error_checks(&[ErrorCheck::Located("rules.yaml")])
    .then(Afterwards::Recovers);

    /// The unknown field is located on line 5.
    schema_error_keeps_the_previous_rules: BadChange::new(
        Layout::FILE,
        |p| write_by_rename(&p.path, SCHEMA_ERROR),
        "namespace",
    )
    .error_checks(&[
        ErrorCheck::Located("rules.yaml"),
        ErrorCheck::Contains("rules.yaml:5:"),
    ]);

    /// The error names both definitions.
    duplicate_rule_name_across_files_keeps_the_previous_rules: BadChange::new(
        Layout { file: "10-a.yaml", ..Layout::DIR },
        |p| std::fs::write(p.dir.join("20-b.yaml"), ALLOW_A_AGAIN).unwrap(),
        "duplicate rule name",
    )
    .error_checks(&[
        ErrorCheck::Located("20-b.yaml"),
        ErrorCheck::Located("10-a.yaml"),
    ]);

    half_written_file_keeps_the_previous_rules: BadChange::new(
        Layout::FILE,
        |p| write_in_place(&p.path, &half_written_rules_b()),
        "rules.yaml",
    )
    .error_checks(&[ErrorCheck::Located("rules.yaml")])
    .then(Afterwards::Recovers);

    /// Restoring the same content is not a reload, but the error is over.
    removed_rule_file_keeps_the_previous_rules: BadChange::new(
        Layout::FILE,
        |p| std::fs::remove_file(&p.path).unwrap(),
        "No such file",
    )
    .undo(|p| std::fs::write(&p.path, rules_a()).unwrap())
    .then(Afterwards::ErrorClears);

    dangling_symlink_keeps_the_previous_rules: BadChange::new(
        Layout::FILE,
        |p| std::fs::rename(p.dir.join("rules.yaml.new"), &p.path).unwrap(),
        "No such file",
    )
    .prepare(|p| {
        let missing = p.dir.join("missing.yaml");
        std::os::unix::fs::symlink(missing, p.dir.join("rules.yaml.new")).unwrap();
    })
    .then(Afterwards::Recovers);

    removing_the_only_file_of_a_directory_keeps_the_previous_rules: BadChange::new(
        Layout::DIR,
        |p| std::fs::remove_file(&p.path).unwrap(),
        "no *.yaml or *.yml rule files",
    )
    .then(Afterwards::Recovers);

    /// A FIFO would block a reader until someone writes to it: the reloader must refuse it, not hang.
    fifo_in_place_of_the_file_keeps_the_previous_rules_and_does_not_block_reloads: BadChange::new(
        Layout::FILE,
        |p| std::fs::rename(p.dir.join("rules.fifo"), &p.path).unwrap(),
        "not a regular file",
    )
    .prepare(|p| {
        let made = std::process::Command::new("mkfifo")
            .arg(p.dir.join("rules.fifo"))
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo");
    })
    .then(Afterwards::Recovers);

    unreadable_file_keeps_the_previous_rules: BadChange::new(
        Layout::FILE,
        |p| chmod(&p.path, 0o000),
        "Permission denied",
    )
    .unprivileged()
    .undo(|p| chmod(&p.path, 0o644))
    .then(Afterwards::Recovers);

    alias_bomb_is_rejected_and_the_previous_rules_keep_serving: BadChange::new(
        Layout::FILE,
        |p| write_by_rename(&p.path, &alias_bomb()),
        "aliases expanded",
    )
    .error_checks(&[ErrorCheck::Located("rules.yaml"), ErrorCheck::ServerSurvived])
    .then(Afterwards::Recovers);

    /// The file is sparse, and made outside the directory, so the server only ever sees it whole.
    oversized_rule_file_keeps_the_previous_rules: BadChange::new(
        Layout { subdir: Some("rules.d"), ..Layout::DIR },
        |p| std::fs::rename(p.root.join("big.yaml"), p.dir.join("big.yaml")).unwrap(),
        "the limit for one rule file",
    )
    .prepare(|p| {
        std::fs::File::create(p.root.join("big.yaml"))
            .unwrap()
            .set_len(egress_authz::reload::MAX_RULE_FILE_BYTES + 1)
            .unwrap();
    })
    .error_checks(&[ErrorCheck::Contains("big.yaml:1:1")])
    .undo(|p| std::fs::remove_file(p.dir.join("big.yaml")).unwrap())
    .then(Afterwards::Recovers);

    /// A `*.yaml` entry that cannot be read may be a DENY list: loading the others without it would
    /// widen access, so the whole reload is rejected.
    dangling_symlink_in_the_rules_directory_keeps_the_previous_rules: BadChange::new(
        Layout::DIR,
        |p| {
            let gone = p.dir.join("gone.yaml");
            std::os::unix::fs::symlink(gone, p.dir.join("20-deny.yaml")).unwrap();
        },
        "symlink to a missing file",
    )
    .undo(|p| std::fs::remove_file(p.dir.join("20-deny.yaml")).unwrap())
    .then(Afterwards::Recovers);

    unreadable_file_in_the_rules_directory_keeps_the_previous_rules: BadChange::new(
        Layout::DIR,
        |p| chmod(&p.path, 0o000),
        "Permission denied",
    )
    .unprivileged()
    .undo(|p| chmod(&p.path, 0o644))
    .then(Afterwards::Recovers);
}

// === A dead watcher is rebuilt ===

/// Deleting the watched directory kills its inotify watch. The server must report the removal as a
/// failed reload, keep serving, rebuild the watch once the directory is back and load what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_is_rebuilt_when_the_directory_is_removed_and_recreated() {
    bounded(async {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("rules.d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("rules.yaml"), rules_a()).unwrap();
        let server = ServerBuilder::new(&dir).spawn().await;
        assert_rejected(
            &server,
            || std::fs::remove_dir_all(&dir).unwrap(),
            "No such file",
        )
        .await;

        let mut client = server.authz().await;
        let written = Instant::now();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("rules.yaml"), rules_b()).unwrap();
        let latency = time_until_verdict(&mut client, &check_a(), false, written, GIVE_UP)
            .await
            .expect("the recreated directory is watched and loaded");
        eprintln!("reload latency (directory recreated, watcher rebuilt): {latency:?}");

        // The rebuilt watch sees later edits too.
        measure_flip_back(&mut client, &dir.join("rules.yaml")).await;
    })
    .await;
}

async fn measure_flip_back(client: &mut AuthorizationClient<Channel>, path: &Path) {
    let written = Instant::now();
    write_in_place(path, &rules_a());
    let latency = time_until_verdict(client, &check_a(), true, written, GIVE_UP)
        .await
        .expect("edit after the rebuild picked up");
    eprintln!("reload latency (edit after watcher rebuild): {latency:?}");
}

// === Swaps under load ===

/// Four clients send checks for ~2 s while the rules flip 12 times: every RPC succeeds, every answer
/// is what A or B decides, and the server counted exactly the checks sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_continuous_traffic_lose_no_check() {
    bounded(async {
        let (_dir, path, server) = spawn_on_rules_a(None).await;
        // A flag, not a cancellation: an RPC dropped mid-flight might be counted by the server only.
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, allowed, denied) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut clients = Vec::new();
        for _ in 0..4 {
            let mut client = server.authz().await;
            let (stop, sent, allowed, denied) = (
                Arc::clone(&stop),
                Arc::clone(&sent),
                Arc::clone(&allowed),
                Arc::clone(&denied),
            );
            clients.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let response = client.check(check_a()).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    let response = response.expect("no Check fails during a swap").into_inner();
                    match (is_allowed(&response), reason_of(&response).as_deref()) {
                        (true, Some("allowed_by_rule")) => allowed.fetch_add(1, Ordering::Relaxed),
                        (false, Some("no_matching_rule")) => denied.fetch_add(1, Ordering::Relaxed),
                        other => panic!("neither A's nor B's decision: {other:?}"),
                    };
                }
            }));
        }
        // Each flip waits until the server has swapped in the previous one (its success counter moved)
        // and some checks ran on it, so every flip is a reload of its own however slow the machine is.
        const FLIPS: u32 = 12;
        let reloads_before = reloads(&server, "success").await;
        for flip in 0..FLIPS {
            let checks_so_far = sent.load(Ordering::Relaxed);
            let ran = poll_until(OUTCOME_GIVE_UP, || async {
                (sent.load(Ordering::Relaxed) >= checks_so_far + 20).then_some(())
            });
            assert!(
                ran.await.is_some(),
                "checks keep flowing before flip {flip}"
            );
            let next = if flip % 2 == 0 { rules_b() } else { rules_a() };
            write_by_rename(&path, &next);
            let swapped = poll_until(OUTCOME_GIVE_UP, || async {
                (reloads(&server, "success").await >= reloads_before + f64::from(flip + 1))
                    .then_some(())
            });
            assert!(swapped.await.is_some(), "flip {flip} was reloaded");
        }
        let checks_so_far = sent.load(Ordering::Relaxed);
        let ran = poll_until(OUTCOME_GIVE_UP, || async {
            (sent.load(Ordering::Relaxed) >= checks_so_far + 20).then_some(())
        });
        assert!(
            ran.await.is_some(),
            "checks keep flowing after the last flip"
        );
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.await.expect("client task");
        }
        let (sent, allowed, denied) = (
            sent.load(Ordering::Relaxed),
            allowed.load(Ordering::Relaxed),
            denied.load(Ordering::Relaxed),
        );
        eprintln!("checks under reload: {sent} ({allowed} allowed, {denied} denied)");
        assert_eq!(sent, allowed + denied);
        assert!(allowed > 0 && denied > 0, "both rule sets served");
        let metrics = server.metrics().await;
        assert_eq!(
            metrics.get(RELOADS_TOTAL, &[("result", "success")]),
            Some(reloads_before + f64::from(FLIPS)),
            "every flip was a reload of its own"
        );
        assert_eq!(
            metrics.get(RELOADS_TOTAL, &[("result", "failure")]),
            Some(0.0)
        );
        assert_eq!(
            metrics.sum("egress_authz_checks_total", &[]),
            sent as f64,
            "the server answered exactly the checks sent"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bad_files_seen_again_are_not_another_failed_reload() {
    bounded(async {
        let (_dir, path, server) = spawn_on_rules_a(Some(DEBUG_RELOADS)).await;
        let bad = "rules:\n- name: broken\n  to: {hosts: ['a.*.com']}\n";
        assert_rejected(&server, || write_by_rename(&path, bad), "a.*.com").await;
        assert_eq!(reloads(&server, "failure").await, 1.0);
        // SIGHUP makes the server read the same bad bytes again: an attempt, not a new failure.
        let seen = server.logs.with_message("Rules unchanged").len();
        server.signal("HUP");
        let attempted = poll_until(GIVE_UP, || async {
            (server.logs.with_message("Rules unchanged").len() > seen).then_some(())
        })
        .await;
        assert!(attempted.is_some(), "SIGHUP did not cause a reload attempt");
        assert_eq!(reloads(&server, "failure").await, 1.0);
        assert!(server.rules_status().await["last_reload_error"].is_string());
        // A different bad edit is a new failure.
        assert_rejected(&server, || write_by_rename(&path, "rules: [\n"), "").await;
        assert_eq!(reloads(&server, "failure").await, 2.0);
    })
    .await;
}

/// `rules.YAML` or `rules.yaml ` is not read (names are exact), but it most likely was meant to be:
/// `/rules` and the log say so, at startup and when one appears, and the rules keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_file_lookalikes_are_reported_in_rules_status_and_the_log() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        rules_file(dir.path(), &rules_a());
        std::fs::write(dir.path().join("deny.YAML"), rules_b()).unwrap();
        let server = ServerBuilder::new(dir.path()).spawn().await;
        let warnings = |status: &serde_json::Value| -> Vec<String> {
            status["warnings"]
                .as_array()
                .unwrap_or_else(|| panic!("/rules has no warnings: {status}"))
                .iter()
                .map(|w| w.as_str().unwrap().to_owned())
                .collect()
        };
        let at_start = warnings(&server.rules_status().await);
        assert_eq!(at_start.len(), 1, "{at_start:?}");
        assert!(
            at_start[0].contains("deny.YAML: warning: not read"),
            "{at_start:?}"
        );
        let logged = |name: &'static str| {
            server.logs.wait_for(GIVE_UP, move |l| {
                message_of(l) == Some("Rules directory entry not read")
                    && l["fields"]["warning"]
                        .as_str()
                        .is_some_and(|w| w.contains(name))
            })
        };
        assert!(
            logged("deny.YAML").await.is_some(),
            "startup warning logged"
        );

        std::fs::write(dir.path().join("more.yaml "), rules_b()).unwrap();
        let both = poll_until(GIVE_UP, || async {
            let now = warnings(&server.rules_status().await);
            (now.len() == 2).then_some(now)
        })
        .await
        .expect("the new lookalike is reported");
        assert!(both[1].contains("more.yaml : warning"), "{both:?}");
        assert!(logged("more.yaml ").await.is_some(), "new warning logged");
        let mut client = server.authz().await;
        assert_allowed(&mut client, true, "lookalikes are not read").await;
        assert_eq!(reloads(&server, "failure").await, 0.0);
    })
    .await;
}
