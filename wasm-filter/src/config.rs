//! The plugin configuration: which rule file the filter enforces. Pure: bytes in, a compiled policy
//! or the reason there is none out; the proxy-wasm glue (`filter`) reads the bytes and logs.
//!
//! Two shapes are accepted, because the two ways of deploying the filter deliver the rules differently:
//! - a JSON object with a `rules` member, which is what Istio makes of a `WasmPlugin`'s
//!   `pluginConfig: {rules: ...}` (it serialises `pluginConfig` as JSON). `rules` is the rule file's
//!   text, or the rule file itself written as a mapping (its JSON text is a valid rule file, since YAML
//!   reads JSON);
//! - anything else is the rule file's YAML text itself, as an Envoy `configuration` StringValue
//!   carries it.

use egress_authz_policy::{CompileError, Policy, SourceFile, compile};
use serde::Deserialize;

/// The name compile errors locate a problem in when the rules came as `pluginConfig.rules`.
pub const PLUGIN_CONFIG_RULES: &str = "pluginConfig.rules";
/// The name compile errors locate a problem in when the whole configuration was the rule file.
pub const CONFIGURATION: &str = "configuration";

/// Which of Envoy's filters a plugin is: Envoy does not tell a module, so the plugin's `root_id` (Istio:
/// the WasmPlugin's `pluginName`) says it. The HTTP and network plugins need distinct root ids anyway
/// when they share a VM, since a VM has one root context per root id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKind {
    /// `envoy.filters.http.wasm`: the default.
    Http,
    /// `envoy.filters.network.wasm`: a root id ending in [`NETWORK_ROOT_ID_SUFFIXES`].
    Network,
}

/// Root-id endings that make a plugin the network filter (`egress-authz-tcp`, `egress-authz.network`).
pub const NETWORK_ROOT_ID_SUFFIXES: [&str; 2] = ["tcp", "network"];

impl FilterKind {
    /// The kind a plugin with root id `root_id` is.
    pub fn of_root_id(root_id: &str) -> Self {
        if NETWORK_ROOT_ID_SUFFIXES
            .iter()
            .any(|suffix| root_id.ends_with(suffix))
        {
            Self::Network
        } else {
            Self::Http
        }
    }
}

/// What a configuration gave: rules to enforce, or why every request must be denied.
#[derive(Debug)]
pub enum Rules {
    /// A valid rule file, compiled once for every request this configuration serves.
    Compiled(Box<Policy>),
    /// The configuration is not a valid rule file: fail closed. The text locates every problem found.
    Invalid(String),
}

/// Istio's JSON rendering of `pluginConfig`. Other members are ignored, so a configuration may carry
/// settings for other tools beside the rules.
#[derive(Deserialize)]
struct PluginConfig {
    rules: serde_json::Value,
}

/// Compiles the rule file the configuration carries.
pub fn load(configuration: &[u8]) -> Rules {
    match rule_file(configuration) {
        Ok(file) => match compile(&[file]) {
            Ok(policy) => Rules::Compiled(Box::new(policy)),
            Err(errors) => Rules::Invalid(describe(&errors)),
        },
        Err(problem) => Rules::Invalid(problem),
    }
}

/// The rule file in `configuration`, named for where it came from, or why there is none.
///
/// A rule file has a top-level `rules` list too, and may be written as JSON: only a `rules` that is
/// text or a mapping makes the configuration Istio's `pluginConfig`; anything else is taken as the rule
/// file itself, so its own errors are reported against it.
fn rule_file(configuration: &[u8]) -> Result<SourceFile, String> {
    if let Ok(config) = serde_json::from_slice::<PluginConfig>(configuration) {
        let text = match config.rules {
            serde_json::Value::String(text) => Some(text),
            mapping @ serde_json::Value::Object(_) => Some(mapping.to_string()),
            _ => None,
        };
        if let Some(text) = text {
            return Ok(SourceFile {
                name: PLUGIN_CONFIG_RULES.to_owned(),
                text,
            });
        }
    }
    let text = std::str::from_utf8(configuration)
        .map_err(|error| format!("{CONFIGURATION}: not UTF-8 text: {error}"))?;
    if text.trim().is_empty() {
        return Err(format!(
            "{CONFIGURATION}: empty; it must hold the rule file, or {PLUGIN_CONFIG_RULES}"
        ));
    }
    Ok(SourceFile {
        name: CONFIGURATION.to_owned(),
        text: text.to_owned(),
    })
}

/// Every error on a line of its own, each located (`file:line:column: ...`).
fn describe(errors: &[CompileError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests;
