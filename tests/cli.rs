//! The `validate` and `explain` commands, run as a user would run them.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_egress-authz"))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("binary runs");
    (
        status.code().expect("exited"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

/// `egress-authz validate <path>`.
fn validate(path: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = bin();
    cmd.arg("validate").arg(path);
    cmd
}

/// `egress-authz explain` against the shipped rules, for the request `args` describe.
fn explain(args: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.args(["explain", "--rules"])
        .arg(repo("deploy/rules"))
        .args(args);
    cmd
}

/// `egress-authz serve` on ephemeral ports, without `--rules`.
fn serve() -> Command {
    let mut cmd = bin();
    cmd.args([
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    cmd
}

/// Runs `cmd`, which must exit with `code` and name each of `messages` on stderr; returns stderr.
/// `case` names the command in a failure.
fn assert_refused(case: &str, cmd: &mut Command, code: i32, messages: &[&str]) -> String {
    let (got, stdout, stderr) = run(cmd);
    assert_eq!(got, code, "{case}: {stdout}{stderr}");
    for message in messages {
        assert!(
            stderr.contains(message),
            "{case}: no {message:?} in {stderr}"
        );
    }
    stderr
}

#[test]
fn validate_accepts_the_shipped_rules() {
    let (code, stdout, stderr) = run(bin()
        .arg("validate")
        .arg(repo("deploy/rules"))
        .arg(repo("examples/rules/namespace-level.yaml"))
        .arg(repo("examples/rules/service-account-level.yaml"))
        .arg(repo("examples/rules/allow-nothing.yaml")));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("egress.yaml: ok, 4 rule(s)"), "{stdout}");
    assert!(
        stdout.contains("namespace-level.yaml: ok, 2 rule(s)"),
        "{stdout}"
    );
    // The walkthrough's deny-list stage is the one shape the linter warns about: identity-less callers pass it.
    let warnings: Vec<_> = stdout.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stdout}");
    assert!(
        warnings[0].contains("namespace-level.yaml:5:1: warning: defaultAction is ALLOW"),
        "{stdout}"
    );
}

#[test]
fn validate_reports_every_invalid_fixture_with_file_line_and_column() {
    let fixtures = repo("tests/fixtures/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5);
    for file in files {
        let (code, stdout, stderr) = run(&mut validate(&file));
        assert_eq!(code, 1, "{} must be rejected: {stdout}", file.display());
        let first = stderr.lines().next().unwrap_or_default();
        let prefix = format!("{}:", file.display());
        let location: Vec<_> = first
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{first}"))
            .splitn(3, ':')
            .collect();
        assert!(
            location[0].parse::<usize>().is_ok() && location[1].parse::<usize>().is_ok(),
            "line:column expected in {first:?}"
        );
    }
    let duplicate = repo("tests/fixtures/invalid/duplicate_rule_name.yaml");
    let (_, _, stderr) = run(&mut validate(duplicate));
    assert!(
        stderr.contains(":4:3: rule \"google\": duplicate rule name; first defined at"),
        "{stderr}"
    );
}

#[test]
fn validate_lists_all_errors_and_warns_about_dead_rules() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "rules:\n- name: a\n  to: {hosts: ['a.*.com'], ports: [0]}\n- name: a\n",
    )
    .unwrap();
    let stderr = assert_refused("bad.yaml", &mut validate(&bad), 1, &[]);
    assert_eq!(stderr.lines().count(), 3, "{stderr}");

    let dead = dir.path().join("dead.yaml");
    std::fs::write(&dead, "rules:\n- name: deny-all\n  action: DENY\n- name: allow-google\n  to: {hosts: [developers.google.com]}\n").unwrap();
    let (code, stdout, _) = run(&mut validate(&dead));
    assert_eq!(code, 0, "warnings do not fail validation");
    assert!(
        stdout.contains(":4:1: warning: rule \"allow-google\" can never allow anything"),
        "{stdout}"
    );
}

#[test]
fn validate_rejects_a_missing_path_and_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    assert_refused("missing file", &mut validate(missing), 1, &["missing.yaml"]);
    let empty = "no *.yaml or *.yml rule files";
    assert_refused("empty directory", &mut validate(dir.path()), 1, &[empty]);
}

#[test]
fn explain_shows_decision_and_each_rules_first_failed_condition() {
    let (code, stdout, _) = run(&mut explain(&[
        "--principal",
        "spiffe://cluster.local/ns/otherns/sa/sleep-google",
        "--host",
        "developer.yahoo.com",
    ]));
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("decision: deny\nreason:   no_matching_rule\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("otherns-sleep-google-to-google  ALLOW  no: to.hosts"),
        "{stdout}"
    );
    assert!(
        stdout.contains("caller:   namespace otherns service account sleep-google"),
        "{stdout}"
    );
}

#[test]
fn explain_json_for_a_tcp_check() {
    let (code, stdout, _) = run(&mut explain(&[
        "--principal",
        "spiffe://cluster.local/ns/default/sa/sleep",
        "--sni",
        "developers.google.com",
        "--port",
        "8443",
        "--tcp",
        "--json",
    ]));
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["decision"], "allow");
    assert_eq!(json["rule"], "default-ns-to-google");
    assert_eq!(json["protocol"], "tcp");
    assert_eq!(json["rules"][0]["matched"], true);
    assert_eq!(json["rules"][1]["failed_condition"], "from.serviceAccounts");
}

#[test]
fn serve_fails_fast_on_invalid_rules_naming_the_location() {
    let rules = repo("tests/fixtures/invalid/misplaced_host_wildcard.yaml");
    assert_refused(
        "serve --rules",
        serve().arg("--rules").arg(rules),
        1,
        &["misplaced_host_wildcard.yaml:4:14"],
    );
}

#[test]
fn flags_are_also_environment_variables() {
    let rules = repo("tests/fixtures/invalid/unknown_field.yaml");
    assert_refused(
        "the rules path from the environment",
        serve().env("EGRESS_AUTHZ_RULES", rules),
        1,
        &["unknown_field.yaml:4:5"],
    );
    assert_refused(
        "bad flags are a usage error",
        bin().args(["serve", "--rules", "x", "--shutdown-grace", "soon"]),
        2,
        &["--shutdown-grace"],
    );
}

#[test]
fn validate_and_serve_refuse_an_alias_bomb_naming_the_bound_and_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.yaml");
    // About 300 kB written; 1.6 GB of descriptions once the aliases are expanded.
    let mut text = format!(
        "rules:\n- name: r0\n  description: &d {}\n",
        "x".repeat(64 * 1024)
    );
    for i in 1..25_000 {
        text.push_str(&format!("- {{name: r{i}, description: *d}}\n"));
    }
    std::fs::write(&bomb, text).unwrap();
    let refused = ["bytes of text", "refused to protect the server"];
    let stderr = assert_refused("validate", &mut validate(&bomb), 1, &refused);
    let located = format!("{}:", bomb.display());
    assert!(stderr.starts_with(&located), "{stderr}");
    // Startup fails fast, it does not crash.
    assert_refused(
        "serve",
        serve().arg("--rules").arg(&bomb),
        1,
        &["bytes of text"],
    );
}

#[test]
fn validate_rejects_empty_documents_rules_without_value_and_extra_documents() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, message) in [
        ("only-marker.yaml", "---\n", "the file is empty"),
        (
            "cut-off.yaml",
            "defaultAction: ALLOW\nrules:\n",
            ":2:1: rules has no value",
        ),
        (
            "two.yaml",
            "rules: []\n---\nrules: []\n",
            ":2:1: a second YAML document",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        assert_refused(name, &mut validate(&path), 1, &[message]);
    }
}

#[test]
fn validate_warns_about_rule_file_lookalikes_and_rejects_unreadable_entries() {
    let dir = tempfile::tempdir().unwrap();
    let good = "rules:\n- name: a\n  to: {hosts: [a.com]}\n";
    std::fs::write(dir.path().join("rules.yaml"), good).unwrap();
    for lookalike in ["deny.YAML", "deny.yml ", "deny.json"] {
        std::fs::write(dir.path().join(lookalike), good).unwrap();
    }
    // Not lookalikes: no warning.
    std::fs::write(dir.path().join("README.md"), "notes").unwrap();
    std::fs::write(dir.path().join(".hidden.yaml"), "not: [read").unwrap();
    let (code, stdout, stderr) = run(&mut validate(dir.path()));
    assert_eq!(code, 0, "warnings do not fail validation: {stdout}{stderr}");
    let warnings: Vec<_> = stdout
        .lines()
        .filter(|l| l.contains("warning: not read as a rule file"))
        .collect();
    assert_eq!(warnings.len(), 3, "{stdout}");
    for lookalike in ["deny.YAML:", "deny.yml :", "deny.json:"] {
        assert!(
            warnings.iter().any(|w| w.contains(lookalike)),
            "{lookalike}: {stdout}"
        );
    }

    // A rules directory with only a lookalike: the warning says why there are no rule files.
    let only = tempfile::tempdir().unwrap();
    std::fs::write(only.path().join("rules.YAML"), good).unwrap();
    let (code, stdout, stderr) = run(&mut validate(only.path()));
    assert_eq!(code, 1);
    assert!(stderr.contains("no *.yaml or *.yml rule files"), "{stderr}");
    assert!(stdout.contains("rules.YAML: warning"), "{stdout}");

    // Entries named like rule files that cannot be read are errors.
    let unreadable = dir.path().join("deny.yaml");
    std::os::unix::fs::symlink(dir.path().join("gone"), &unreadable).unwrap();
    let dangling = "deny.yaml: symlink to a missing file";
    assert_refused(
        "dangling symlink",
        &mut validate(dir.path()),
        1,
        &[dangling],
    );
    std::fs::remove_file(&unreadable).unwrap();
    std::fs::create_dir(&unreadable).unwrap();
    let directory = "deny.yaml: not a regular file";
    assert_refused("directory", &mut validate(dir.path()), 1, &[directory]);
}

#[test]
fn validate_refuses_a_file_over_the_size_limit_before_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(egress_authz::reload::MAX_RULE_FILE_BYTES + 1)
        .unwrap();
    let too_large = format!("{}:1:1: the file is larger than", big.display());
    assert_refused("big.yaml", &mut validate(&big), 1, &[too_large.as_str()]);
}

fn audit_fixture(name: &str) -> PathBuf {
    repo(&format!("tests/fixtures/audit/{name}.json"))
}

#[test]
fn audit_gateway_passes_a_clean_gateway_and_fails_one_a_port_escapes() {
    let (code, stdout, stderr) = run(bin()
        .arg("audit-gateway")
        .arg(audit_fixture("istiod-custom-any-80-443")));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        stdout, "3 listener(s), 3 filter chain(s): no findings\n",
        "{stderr}"
    );

    let (code, stdout, _) = run(bin()
        .arg("audit-gateway")
        .arg(audit_fixture("istiod-custom-ports-on-80-443")));
    assert_eq!(code, 1, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].starts_with("SEVERITY  CODE"), "{stdout}");
    for (line, listener, port) in [
        (lines[1], "0.0.0.0_80", " 80 "),
        (lines[2], "0.0.0.0_443", " 443 "),
    ] {
        assert!(
            line.starts_with("error     check_not_triggered_on_port"),
            "{line}"
        );
        assert!(line.contains(listener) && line.contains(port), "{line}");
    }
    assert_eq!(
        lines[3],
        "3 listener(s), 3 filter chain(s): 2 error(s), 0 warning(s)"
    );
}

#[test]
fn audit_gateway_json_lists_each_finding_and_warnings_alone_exit_0() {
    let mut dump: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(audit_fixture("clean")).unwrap()).unwrap();
    let http_authz = "/configs/2/dynamic_listeners/0/active_state/listener/filter_chains/0/filters/0/typed_config/http_filters/0/typed_config";
    dump.pointer_mut(http_authz)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove("include_tls_session")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.json");
    std::fs::write(&file, dump.to_string()).unwrap();
    let (code, stdout, stderr) = run(bin().arg("audit-gateway").arg(&file).arg("--json"));
    assert_eq!(code, 0, "a warning alone passes: {stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report,
        serde_json::json!({
            "listeners": 3, "filter_chains": 3, "errors": 0, "warnings": 1,
            "findings": [{
                "code": "no_tls_session", "severity": "warning", "listener": "0.0.0.0_8080",
                "filter_chain": "#0", "port": 8080,
                "detail": "no include_tls_session: the server cannot compare the SNI with the Host",
            }],
        })
    );

    // From stdin, with an error finding.
    dump.pointer_mut(http_authz).unwrap()["failure_mode_allow"] = true.into();
    let mut child = bin()
        .args(["audit-gateway", "-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dump.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["fail_open", "no_tls_session"]);
    assert_eq!(
        (report["errors"].as_u64(), report["warnings"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn audit_gateway_exits_2_on_unreadable_input() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let not_json = dir.path().join("rules.yaml");
    std::fs::write(&not_json, "rules: []\n").unwrap();
    let not_a_dump = dir.path().join("stats.json");
    std::fs::write(&not_a_dump, r#"{"stats": []}"#).unwrap();
    for (file, message) in [
        (&missing, "missing.json: cannot read"),
        (&not_json, "rules.yaml: not JSON"),
        (&not_a_dump, "stats.json: not an Envoy config dump"),
    ] {
        let (code, stdout, stderr) = run(bin().arg("audit-gateway").arg(file));
        assert_eq!(code, 2, "{}: {stdout}{stderr}", file.display());
        assert!(stderr.contains(message), "{stderr}");
        assert_eq!(stdout, "");
    }
}

#[test]
fn readme_documents_every_audit_code_with_its_severity() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    for code in egress_authz::audit::Code::ALL {
        let row = format!("| `{code}` | {} |", code.severity().as_str());
        assert!(readme.contains(&row), "README lacks the row {row:?}");
    }
}

/// `explain` over 5,000 rules prints one line per rule: far more than a pipe holds.
fn long_explain(dir: &Path) -> Command {
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, testkit::rules::generate_rules(5_000)).unwrap();
    let mut cmd = bin();
    cmd.args(["explain", "--rules"])
        .arg(&rules)
        .args(["--principal", "spiffe://cluster.local/ns/default/sa/sleep"])
        .args(["--host", "developers.google.com"]);
    cmd
}

#[test]
fn a_reader_that_goes_away_ends_the_command_like_sigpipe_without_a_panic() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut child = long_explain(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("decision:"), "{first}");
    // The reader is dropped here, as `| head -1` would close the pipe.
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn output_that_cannot_be_written_is_one_line_on_stderr_and_status_1() {
    // Linux's device that fails every write with ENOSPC.
    let full = Path::new("/dev/full");
    let dir = tempfile::tempdir().unwrap();
    let output = long_explain(dir.path())
        .stdout(std::fs::File::create(full).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "egress-authz: cannot write the output: No space left on device (os error 28)"
    );
}
