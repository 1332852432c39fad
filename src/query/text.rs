//! Patterns written back as the rule file writes them, and the lists answers are made of.

use crate::policy::{HostPattern, PathPattern, ServiceAccountPattern, StringPattern};

/// `label value`, `labels a, b`, or `None` for an empty list.
pub(super) fn labelled_list<T>(
    label: &str,
    items: &[T],
    render: impl Fn(&T) -> String,
) -> Option<String> {
    let plural = if items.len() > 1 { "s" } else { "" };
    (!items.is_empty()).then(|| format!("{label}{plural} {}", joined(items, render)))
}

/// The items rendered and separated by `, `.
pub(super) fn joined<T>(items: &[T], render: impl Fn(&T) -> String) -> String {
    items.iter().map(render).collect::<Vec<_>>().join(", ")
}

pub(super) fn string_pattern_text(pattern: &StringPattern) -> String {
    match pattern {
        StringPattern::Any => "*".to_owned(),
        StringPattern::Exact(value) => value.clone(),
        StringPattern::Prefix(prefix) => format!("{prefix}*"),
        StringPattern::Suffix(suffix) => format!("*{suffix}"),
    }
}

pub(super) fn service_account_text(pattern: &ServiceAccountPattern) -> String {
    format!(
        "{}/{}",
        string_pattern_text(&pattern.namespace),
        string_pattern_text(&pattern.name)
    )
}

/// Host patterns hold their suffix with its leading dot (`.example.com`).
pub(super) fn host_pattern_text(pattern: &HostPattern) -> String {
    match pattern {
        HostPattern::Any => "*".to_owned(),
        HostPattern::Exact(host) => host.clone(),
        HostPattern::OneLabel(suffix) => format!("*{suffix}"),
        HostPattern::AnyLabels(suffix) => format!("**{suffix}"),
    }
}

pub(super) fn path_pattern_text(pattern: &PathPattern) -> String {
    match pattern {
        PathPattern::Any => "*".to_owned(),
        PathPattern::Exact(path) => path.clone(),
        PathPattern::Prefix(prefix) => format!("{prefix}*"),
    }
}
