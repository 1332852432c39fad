//! The report as text (the default) and as Markdown for a pull-request comment. JSON is the report
//! serialised as it is (see the README text of `diff` for the schema).

use std::fmt::Write as _;

use serde_json::Value;

use super::recorded::{ChangedFlow, FlowGroup, RecordedDiff};
use super::symbolic::Region;
use super::{DiffReport, FieldChange};

/// Flows listed per group in text and Markdown (JSON lists them all).
const MAX_FLOWS_SHOWN: usize = 50;

/// The report as plain text.
pub fn text(report: &DiffReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", headline(report));
    let _ = writeln!(
        out,
        "old: {} ({} rules, sha256 {})\nnew: {} ({} rules, sha256 {})",
        report.old.path,
        report.old.rules,
        report.old.sha256,
        report.new.path,
        report.new.rules,
        report.new.sha256
    );
    out.push_str("\nStructural changes:\n");
    let lines = structural_lines(report);
    if lines.is_empty() {
        out.push_str("  none\n");
    }
    for line in lines {
        let _ = writeln!(out, "  {line}");
    }
    if let Some(recorded) = &report.recorded {
        out.push_str("\nRecorded traffic:\n");
        for line in source_lines(recorded) {
            let _ = writeln!(out, "  {line}");
        }
        for (title, group) in flow_groups(recorded) {
            let _ = writeln!(
                out,
                "  {title}: {} flow(s), {} check(s), {} caller(s)",
                group.flows,
                group.checks,
                group.callers.len()
            );
            for flow in group.entries.iter().take(MAX_FLOWS_SHOWN) {
                let _ = writeln!(
                    out,
                    "    {} x{}: {} -> {}",
                    flow_request(flow),
                    flow.checks,
                    outcome(&flow.old),
                    outcome(&flow.new)
                );
            }
            if group.entries.len() > MAX_FLOWS_SHOWN {
                let _ = writeln!(out, "    … {} more", group.entries.len() - MAX_FLOWS_SHOWN);
            }
        }
    }
    let symbolic = &report.symbolic;
    let _ = writeln!(
        out,
        "\nSymbolic ({} representative request(s){}):",
        symbolic.witnesses,
        if symbolic.truncated {
            ", stopped at the limit: incomplete"
        } else {
            ""
        }
    );
    if symbolic.newly_denied.is_empty() && symbolic.newly_allowed.is_empty() {
        out.push_str("  no decision changes\n");
    }
    for (newly_allowed, regions) in [
        (false, &symbolic.newly_denied),
        (true, &symbolic.newly_allowed),
    ] {
        for region in regions {
            let _ = writeln!(out, "  {}", region_sentence(region, newly_allowed));
            for example in &region.examples {
                let _ = writeln!(out, "      e.g. {example}");
            }
        }
    }
    out
}

/// The report as Markdown: a headline, tables of breaks and widenings, the structural list folded.
pub fn markdown(report: &DiffReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### egress-authz diff\n\n**{}**\n", headline(report));
    let symbolic = &report.symbolic;
    let recorded = report.recorded.as_ref();
    let sections = [
        (
            "Breaks (allowed before, denied after)",
            recorded.map(|r| &r.newly_denied),
            &symbolic.newly_denied,
        ),
        (
            "Widenings (denied before, allowed after)",
            recorded.map(|r| &r.newly_allowed),
            &symbolic.newly_allowed,
        ),
    ];
    for (title, flows, regions) in sections {
        let flows = flows.filter(|g| g.flows > 0);
        if flows.is_none() && regions.is_empty() {
            continue;
        }
        let _ = writeln!(out, "#### {title}\n");
        if let Some(group) = flows {
            flow_table(&mut out, group);
        }
        if !regions.is_empty() {
            out.push_str(
                "| Callers | Destination | Requests | Cause | Witnesses |\n|---|---|---|---|---|\n",
            );
            for region in regions {
                let _ = writeln!(
                    out,
                    "| {} | `{}` | {} | {} | {} |",
                    cell(&region.callers),
                    cell(&region.destination),
                    cell(&region.requests),
                    cell(&region.cause),
                    coverage(region)
                );
            }
            out.push('\n');
        }
    }
    if let Some(group) = recorded.map(|r| &r.rule_changed).filter(|g| g.flows > 0) {
        out.push_str("#### Same decision, another rule\n\n");
        flow_table(&mut out, group);
    }
    let lines = structural_lines(report);
    let _ = writeln!(
        out,
        "<details><summary>Structural changes ({})</summary>\n",
        report.structural.count()
    );
    if lines.is_empty() {
        out.push_str("None.\n");
    }
    for line in lines {
        let _ = writeln!(out, "- {}", line.replace('|', "\\|"));
    }
    out.push_str("\n</details>\n");
    if let Some(recorded) = recorded {
        out.push_str("\n<details><summary>Recorded traffic read</summary>\n\n");
        for line in source_lines(recorded) {
            let _ = writeln!(out, "- {line}");
        }
        out.push_str("\n</details>\n");
    }
    let _ = writeln!(
        out,
        "\n<sub>old sha256 `{}`, new sha256 `{}`; {} representative request(s){}</sub>",
        report.old.sha256,
        report.new.sha256,
        symbolic.witnesses,
        if symbolic.truncated {
            " (incomplete)"
        } else {
            ""
        }
    );
    out
}

fn headline(report: &DiffReport) -> String {
    let s = &report.summary;
    let mut parts = vec![format!("{} structural change(s)", s.structural_changes)];
    if report.recorded.is_some() {
        parts.push(format!(
            "recorded flows: {} newly denied, {} newly allowed, {} decided by another rule",
            s.newly_denied_flows, s.newly_allowed_flows, s.rule_changed_flows
        ));
    }
    parts.push(format!(
        "regions: {} newly denied, {} newly allowed",
        s.newly_denied_regions, s.newly_allowed_regions
    ));
    parts.join("; ")
}

fn structural_lines(report: &DiffReport) -> Vec<String> {
    let structural = &report.structural;
    let mut lines = Vec::new();
    for change in &structural.settings {
        lines.push(format!("setting {}", field_change(change)));
    }
    for rule in &structural.added {
        let dry = if rule.dry_run { ", dry run" } else { "" };
        lines.push(format!("added rule {} ({}{dry})", rule.name, rule.action));
    }
    for rule in &structural.removed {
        let dry = if rule.dry_run { ", dry run" } else { "" };
        lines.push(format!("removed rule {} ({}{dry})", rule.name, rule.action));
    }
    for rule in &structural.changed {
        let fields: Vec<String> = rule.fields.iter().map(field_change).collect();
        let note = if rule.affects_decisions {
            ""
        } else {
            " (text only)"
        };
        lines.push(format!(
            "changed rule {}{note}: {}",
            rule.name,
            fields.join("; ")
        ));
    }
    lines
}

fn field_change(change: &FieldChange) -> String {
    format!(
        "{}: {} -> {}",
        change.field,
        value(&change.old),
        value(&change.new)
    )
}

fn value(value: &Value) -> String {
    match value {
        Value::Null => "(unset)".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(self::value).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

fn source_lines(recorded: &RecordedDiff) -> Vec<String> {
    let mut lines: Vec<String> = recorded
        .sources
        .iter()
        .map(|s| {
            format!(
                "{} ({}): {} flow(s), {} check(s); skipped {} other event(s), {} not replayable",
                s.file,
                s.kind.as_str(),
                s.flows,
                s.checks,
                s.skipped_events,
                s.not_replayable
            )
        })
        .collect();
    lines.push(format!(
        "replayed {} distinct flow(s), {} check(s)",
        recorded.flows, recorded.checks
    ));
    lines
}

fn flow_groups(recorded: &RecordedDiff) -> [(&'static str, &FlowGroup); 3] {
    [
        ("allow -> deny (breaks someone)", &recorded.newly_denied),
        ("deny -> allow (widens access)", &recorded.newly_allowed),
        ("rule changed, same decision", &recorded.rule_changed),
    ]
}

fn flow_table(out: &mut String, group: &FlowGroup) {
    let _ = writeln!(
        out,
        "{} recorded flow(s), {} check(s), callers: {}\n",
        group.flows,
        group.checks,
        group
            .callers
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.push_str("| Caller | Request | Checks | Old | New |\n|---|---|---|---|---|\n");
    for flow in group.entries.iter().take(MAX_FLOWS_SHOWN) {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            cell(&flow.caller),
            cell(&destination(flow)),
            flow.checks,
            cell(&outcome(&flow.old)),
            cell(&outcome(&flow.new))
        );
    }
    if group.entries.len() > MAX_FLOWS_SHOWN {
        let _ = writeln!(
            out,
            "\n… and {} more (see `--json`)",
            group.entries.len() - MAX_FLOWS_SHOWN
        );
    }
    out.push('\n');
}

fn destination(flow: &ChangedFlow) -> String {
    let port = flow.port.map(|p| format!(":{p}")).unwrap_or_default();
    let mut text = format!("{} {}{port}", flow.protocol, flow.host);
    for part in [&flow.method, &flow.path].into_iter().flatten() {
        text.push(' ');
        text.push_str(part);
    }
    if flow.sni_mismatch {
        text.push_str(" (SNI names another host)");
    }
    text
}

fn flow_request(flow: &ChangedFlow) -> String {
    format!("{} {}", flow.caller, destination(flow))
}

fn outcome(outcome: &super::Outcome) -> String {
    match &outcome.rule {
        Some(rule) => format!("{} ({})", outcome.decision, rule),
        None => format!("{} ({})", outcome.decision, outcome.reason),
    }
}

fn region_sentence(region: &Region, newly_allowed: bool) -> String {
    let verb = if newly_allowed {
        "may now reach"
    } else {
        "may no longer reach"
    };
    format!(
        "{} {verb} {} ({}) [{}; {}]",
        region.callers,
        region.destination,
        region.requests,
        region.cause,
        coverage(region)
    )
}

/// How much of the region the witnesses show changed.
fn coverage(region: &Region) -> String {
    if region.is_partial() {
        format!(
            "partly: {} of {} representative requests",
            region.changed, region.witnesses
        )
    } else {
        format!("all {} representative request(s)", region.witnesses)
    }
}

/// Text safe in a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
