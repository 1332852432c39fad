//! Test-only variations of the checked-in Envoy bootstraps: settings a mesh operator may choose instead
//! of istiod's defaults (fail open, a wildcard server name, `include_tls_session`, a CUSTOM policy's
//! RBAC gate), applied to the rendered text and checked to change exactly the lines they target.

use super::Gateway;
use crate::fixtures::project_dir;
use crate::world::GOOGLE;

/// Test-only variations of the checked-in bootstraps, applied to the rendered text, so the templates keep
/// reproducing istiod's output for the deploy bundle. A variant is a setting a mesh operator can choose
/// instead; each edit is checked to land exactly on the lines that setting changes, and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// `failure_mode_allow: true` on every ext_authz filter (the provider's `failOpen: true`): a failed
    /// check then lets the traffic through, so only an answered check keeps a request out.
    pub fail_open: bool,
    /// Adds `*.google.com` to the server names of the filter chain that serves developers.google.com, as
    /// istiod renders a Gateway whose `hosts` include that wildcard. Without it a ClientHello whose SNI is
    /// not exactly a configured host matches no filter chain and Envoy closes the connection before any
    /// filter runs, so the SNI never reaches the authz server.
    pub google_wildcard: bool,
    /// `include_tls_session: true` on the network ext_authz filters of the TCP gateway, as the deploy
    /// bundle's EnvoyFilter merges it in (the HTTP side of that patch is [`Gateway::HttpTlsSession`]).
    /// Only the TCP gateway is changed.
    pub tcp_tls_session: bool,
    /// Puts Istio's shadow RBAC filter (`shadow_rules_stat_prefix: istio_ext_authz_`) in front of every
    /// ext_authz filter and gates ext_authz on it with `filter_enabled_metadata`, as istiod renders a
    /// CUSTOM AuthorizationPolicy: ext_authz then runs only for what the policy's rules match.
    pub custom_gate: Option<CustomGate>,
}

/// The rules of a CUSTOM AuthorizationPolicy as far as they decide *when* ext_authz runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomGate {
    /// One rule without conditions (`rules: [{}]`): istiod renders the permission `any: true`.
    EveryPort,
    /// One rule `to: [{operation: {ports: [a, b]}}]`: `destination_port` a or b.
    Ports(u16, u16),
}

impl CustomGate {
    /// The gate of the deploy bundle's CUSTOM policy (deploy/istio/gateway/authorizationpolicy.yaml),
    /// so the suite runs what the bundle would make istiod generate. Panics on a shape it does not model.
    pub fn from_bundle() -> (String, Self) {
        let path = project_dir().join("deploy/istio/gateway/authorizationpolicy.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let policy: yaml_serde::Value = yaml_serde::from_str(&text).unwrap();
        let spec = &policy["spec"];
        assert_eq!(
            spec["action"].as_str(),
            Some("CUSTOM"),
            "{}",
            path.display()
        );
        let name = policy["metadata"]["name"].as_str().unwrap().to_owned();
        let rules = spec["rules"].as_sequence().expect("rules");
        assert_eq!(rules.len(), 1, "one CUSTOM rule is modelled");
        let rule = rules[0].as_mapping().expect("a rule is a mapping");
        if rule.is_empty() {
            return (name, Self::EveryPort);
        }
        assert_eq!(rule.len(), 1, "only `to` is modelled: {rule:?}");
        let ports: Vec<u16> = rule["to"][0]["operation"]["ports"]
            .as_sequence()
            .expect("to.operation.ports")
            .iter()
            .map(|p| p.as_str().unwrap().parse().unwrap())
            .collect();
        let [a, b] = ports[..] else {
            panic!("two ports are modelled: {ports:?}")
        };
        (name, Self::Ports(a, b))
    }

    /// The shadow policy's permissions (flow-style YAML), as istiod renders the rule.
    fn permissions(self) -> String {
        match self {
            Self::EveryPort => "[{and_rules: {rules: [{any: true}]}}]".to_owned(),
            Self::Ports(a, b) => format!(
                "[{{and_rules: {{rules: [{{or_rules: {{rules: [{{destination_port: {a}}}, {{destination_port: {b}}}]}}}}]}}}}]"
            ),
        }
    }
}

/// The AuthorizationPolicy name istiod's shadow policy ids carry (Istio 1.24–1.29 naming).
const CUSTOM_POLICY_ID: &str = "istio-ext-authz-ns[istio-system]-policy[egress-authz]-rule[0]";

/// The SNI pattern [`Variant::google_wildcard`] adds.
pub const GOOGLE_WILDCARD: &str = "*.google.com";

const HTTP_EXT_AUTHZ_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const NETWORK_EXT_AUTHZ_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";

impl Variant {
    pub const ISTIO_DEFAULT: Self = Self {
        fail_open: false,
        google_wildcard: false,
        tcp_tls_session: false,
        custom_gate: None,
    };

    /// Applies the variant to a rendered bootstrap of `gw`; panics unless every edit changed exactly the
    /// lines it targets: one ext_authz filter in each HTTP template, one per filter chain (two) in the TCP
    /// one, one filter chain serving developers.google.com in each.
    pub fn apply(self, gw: Gateway, rendered: &str) -> String {
        let name = gw.template();
        let ext_authz_filters = match gw {
            Gateway::HttpIstio | Gateway::HttpTlsSession => 1,
            Gateway::TcpIstio => 2,
            // Every variant is a setting of ext_authz; the filter's gateways have none to vary.
            Gateway::HttpWasm | Gateway::TcpWasm => {
                assert_eq!(self, Self::ISTIO_DEFAULT, "{name}: no ext_authz to vary");
                return rendered.to_owned();
            }
        };
        let mut lines: Vec<String> = rendered.lines().map(str::to_owned).collect();
        let code = |line: &str| line.split('#').next().unwrap_or_default().trim().to_owned();
        let indent = |line: &str| line[..line.len() - line.trim_start().len()].to_owned();
        if self.fail_open {
            let mut replaced = 0;
            for l in &mut lines {
                if code(l) == "failure_mode_allow: false" {
                    replaced += 1;
                    *l = format!(
                        "{}failure_mode_allow: true # provider `failOpen: true`",
                        indent(l)
                    );
                }
            }
            assert_eq!(
                replaced, ext_authz_filters,
                "{name}: one `failure_mode_allow: false` per ext_authz filter"
            );
        }
        if self.google_wildcard {
            let mut replaced = 0;
            for l in &mut lines {
                let c = code(l);
                if c.contains("server_names: [") && c.contains(GOOGLE) {
                    replaced += 1;
                    *l = l.replacen(
                        "server_names: [",
                        &format!("server_names: [\"{GOOGLE_WILDCARD}\", "),
                        1,
                    );
                }
            }
            assert_eq!(replaced, 1, "{name}: one filter chain serves {GOOGLE}");
        }
        if self.tcp_tls_session && gw == Gateway::TcpIstio {
            let at: Vec<usize> = (0..lines.len())
                .filter(|&i| code(&lines[i]) == format!("\"@type\": {NETWORK_EXT_AUTHZ_TYPE}"))
                .collect();
            assert_eq!(
                at.len(),
                ext_authz_filters,
                "{name}: network ext_authz filters"
            );
            for i in at.into_iter().rev() {
                let line = format!(
                    "{}include_tls_session: true # the EnvoyFilter's patch",
                    indent(&lines[i])
                );
                lines.insert(i + 1, line);
            }
        }
        if let Some(gate) = self.custom_gate {
            let kind = if gw == Gateway::TcpIstio {
                "network"
            } else {
                "http"
            };
            let at: Vec<usize> = (0..lines.len())
                .filter(|&i| code(&lines[i]) == format!("- name: envoy.filters.{kind}.ext_authz"))
                .collect();
            assert_eq!(at.len(), ext_authz_filters, "{name}: ext_authz filters");
            for i in at.into_iter().rev() {
                let ty = (i..lines.len())
                    .find(|&j| code(&lines[j]).starts_with("\"@type\""))
                    .unwrap();
                let inner = indent(&lines[ty]);
                lines.insert(
                    ty + 1,
                    format!(
                        "{inner}filter_enabled_metadata: {{filter: envoy.filters.{kind}.rbac, path: [{{key: istio_ext_authz_shadow_effective_policy_id}}], value: {{string_match: {{prefix: istio-ext-authz}}}}}} # istiod's gate"
                    ),
                );
                let outer = indent(&lines[i]);
                // The network RBAC filter requires a stat prefix; istiod uses "tcp.".
                let stat_prefix = if kind == "network" {
                    ", stat_prefix: tcp."
                } else {
                    ""
                };
                let rbac = [
                    format!(
                        "{outer}- name: envoy.filters.{kind}.rbac # istiod's shadow RBAC for the CUSTOM policy"
                    ),
                    format!(
                        "{outer}  typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.{kind}.rbac.v3.RBAC, shadow_rules_stat_prefix: istio_ext_authz_{stat_prefix}, shadow_rules: {{action: DENY, policies: {{\"{CUSTOM_POLICY_ID}\": {{permissions: {}, principals: [{{and_ids: {{ids: [{{any: true}}]}}}}]}}}}}}}}",
                        gate.permissions()
                    ),
                ];
                lines.splice(i..i, rbac);
            }
        }
        let text = lines.join("\n");
        self.assert_applied(gw, &text, ext_authz_filters);
        text
    }

    /// Checks the edited text as Envoy will read it (YAML, not lines): exactly the expected ext_authz
    /// configs exist, each with the variant's `failure_mode_allow` and `include_tls_session`, no such key
    /// elsewhere, and the wildcard in exactly the server names that list developers.google.com.
    fn assert_applied(self, gw: Gateway, text: &str, ext_authz_filters: usize) {
        fn walk(v: &yaml_serde::Value, f: &mut dyn FnMut(&yaml_serde::Mapping)) {
            match v {
                yaml_serde::Value::Mapping(m) => {
                    f(m);
                    for (_, child) in m {
                        walk(child, f);
                    }
                }
                yaml_serde::Value::Sequence(s) => s.iter().for_each(|c| walk(c, f)),
                _ => {}
            }
        }
        let name = gw.template();
        let doc: yaml_serde::Value = yaml_serde::from_str(text)
            .unwrap_or_else(|e| panic!("{name}: edited bootstrap is not YAML: {e}"));
        let mut configs = Vec::new();
        let (mut with_wildcard, mut google_chains) = (0, 0);
        let (mut rbac_filters, mut gated) = (0, 0);
        walk(&doc, &mut |m| {
            let ty = m.get("@type").and_then(yaml_serde::Value::as_str);
            let flag = |k: &str| m.get(k).map(|v| v.as_bool());
            if ty.is_some_and(|t| t.ends_with(".rbac.v3.RBAC")) {
                rbac_filters += 1;
            }
            if m.get("filter_enabled_metadata").is_some() {
                gated += 1;
            }
            if ty == Some(HTTP_EXT_AUTHZ_TYPE) || ty == Some(NETWORK_EXT_AUTHZ_TYPE) {
                let tls = flag("include_tls_session").unwrap_or(Some(false));
                configs.push((
                    ty == Some(NETWORK_EXT_AUTHZ_TYPE),
                    flag("failure_mode_allow"),
                    tls,
                ));
            } else {
                for k in ["failure_mode_allow", "include_tls_session"] {
                    assert!(
                        m.get(k).is_none(),
                        "{name}: {k} outside an ext_authz config"
                    );
                }
            }
            if let Some(names) = m
                .get("server_names")
                .and_then(yaml_serde::Value::as_sequence)
            {
                let names: Vec<&str> = names.iter().filter_map(yaml_serde::Value::as_str).collect();
                with_wildcard += usize::from(names.contains(&GOOGLE_WILDCARD));
                google_chains += usize::from(names.contains(&GOOGLE));
            }
        });
        let network = gw == Gateway::TcpIstio;
        let tls_session = if network {
            self.tcp_tls_session
        } else {
            gw == Gateway::HttpTlsSession
        };
        assert_eq!(
            configs,
            vec![(network, Some(Some(self.fail_open)), Some(tls_session)); ext_authz_filters],
            "{name}: (network filter, failure_mode_allow, include_tls_session) of each ext_authz config"
        );
        let gates = if self.custom_gate.is_some() {
            ext_authz_filters
        } else {
            0
        };
        assert_eq!(
            (rbac_filters, gated),
            (gates, gates),
            "{name}: shadow RBAC filters and gated ext_authz filters"
        );
        assert_eq!(google_chains, 1, "{name}: filter chains serving {GOOGLE}");
        assert_eq!(
            with_wildcard,
            usize::from(self.google_wildcard),
            "{name}: filter chains matching {GOOGLE_WILDCARD}"
        );
    }
}
