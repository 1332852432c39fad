//! Rule files → [`Policy`]: parse, validate everything, normalise, locate every error.
//!
//! Compilation is all-or-nothing and reports *every* error it finds (so `validate` shows them all at
//! once), each with file, line and column. No I/O happens here: the caller hands in file contents.

use std::collections::HashMap;

use super::decision::{Policy, Settings};
use super::identity::is_valid_trust_domain;
use super::matcher::{
    HostPattern, InvalidPattern, PathPattern, ServiceAccountPattern, StringPattern, parse_method,
};
use super::rule::{FromConditions, Rule, RuleMetadata, RuleOrigin, ToConditions};
pub use super::source::{Location, SourceFile};
use super::source::{Locator, digest};
use super::spec::{Action, FromSpec, RuleFile, RuleSpec, ToSpec};

/// The trust domain Istio uses unless the mesh configures another.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// One problem in the rule files, located.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {}{kind}", rule.as_ref().map(|r| format!("rule {r:?}: ")).unwrap_or_default())]
pub struct CompileError {
    /// Where the problem is.
    pub location: Location,
    /// The rule it belongs to, if any.
    pub rule: Option<String>,
    /// What the problem is.
    pub kind: CompileErrorKind,
}

/// What is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileErrorKind {
    /// The YAML does not parse or does not fit the schema (includes unknown fields).
    #[error("{0}")]
    Syntax(String),
    /// The file holds no YAML document at all (a truncated or half-written file).
    #[error("the file is empty")]
    EmptyFile,
    /// A rule name that is not a DNS-label-like identifier.
    #[error("rule names must match [a-z0-9]([-a-z0-9.]*[a-z0-9])?")]
    InvalidRuleName,
    /// Two rules with the same name.
    #[error("duplicate rule name; first defined at {first}")]
    DuplicateRuleName {
        /// Where the first rule with that name is.
        first: Location,
    },
    /// A value that is not a valid pattern for its field.
    #[error("{field}: {value:?}: {source}")]
    InvalidValue {
        /// The field, as written in the file (`to.hosts`).
        field: &'static str,
        /// The offending value.
        value: String,
        /// Why it is invalid.
        source: InvalidPattern,
    },
    /// A `from:` or `to:` block with no condition in it: almost always a mistake that widens the rule.
    #[error("'{0}' has no conditions; remove it to match any {1}")]
    EmptyBlock(&'static str, &'static str),
    /// A top-level setting given differently in two files.
    #[error("{setting} conflicts with the value set at {other}")]
    ConflictingSetting {
        /// The setting's name.
        setting: &'static str,
        /// Where the other value is.
        other: Location,
    },
    /// An invalid or empty `trustDomains`.
    #[error("trustDomains: {0}")]
    InvalidTrustDomains(String),
}

/// Compiles rule files, in the order given, into one policy; or returns every error found.
pub fn compile(files: &[SourceFile]) -> Result<Policy, Vec<CompileError>> {
    compile_with_digest(files, digest(files))
}

/// [`compile`] for a caller that already hashed the files (to skip unchanged content): hashing a large
/// rule set is not free, so it is not done twice.
pub fn compile_with_digest(
    files: &[SourceFile],
    digest: String,
) -> Result<Policy, Vec<CompileError>> {
    let mut errors = Vec::new();
    let mut settings = SettingsBuilder::default();
    let mut rules = Vec::new();
    let mut first_by_name: HashMap<String, Location> = HashMap::new();

    for (file_index, file) in files.iter().enumerate() {
        let Some(parsed) = parse_file(file, &mut errors) else {
            continue;
        };
        let locator = Locator::new(file);
        settings.merge(&parsed, &locator, &mut errors);
        let mut search_from = 0;
        for spec in parsed.rules {
            let (rule_offset, location) = locator.rule(&spec.name, search_from);
            search_from = rule_offset + 1;
            let mut report = |kind| {
                errors.push(CompileError {
                    location: location.clone(),
                    rule: Some(spec.name.clone()),
                    kind,
                });
            };
            if !is_valid_rule_name(&spec.name) {
                report(CompileErrorKind::InvalidRuleName);
            }
            match first_by_name.get(&spec.name) {
                Some(first) => report(CompileErrorKind::DuplicateRuleName {
                    first: first.clone(),
                }),
                None => {
                    first_by_name.insert(spec.name.clone(), location.clone());
                }
            }
            let origin = RuleOrigin {
                file: file_index,
                line: location.line,
            };
            let name = spec.name.clone();
            match compile_rule(spec, origin) {
                Ok(rule) => rules.push(rule),
                Err(kinds) => {
                    for (kind, value) in kinds {
                        let at = value
                            .and_then(|v| locator.value_after(rule_offset, &v))
                            .unwrap_or_else(|| location.clone());
                        errors.push(CompileError {
                            location: at,
                            rule: Some(name.clone()),
                            kind,
                        });
                    }
                }
            }
        }
    }

    let settings = settings.finish();
    if !errors.is_empty() {
        return Err(errors);
    }
    let file_names = files.iter().map(|f| f.name.clone()).collect();
    Ok(Policy::new(settings, rules, file_names, digest))
}

fn parse_file(file: &SourceFile, errors: &mut Vec<CompileError>) -> Option<RuleFile> {
    let at = |line, column| Location {
        file: file.name.clone(),
        line,
        column,
    };
    if file.text.trim().is_empty()
        || file
            .text
            .lines()
            .all(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
    {
        errors.push(CompileError {
            location: at(1, 1),
            rule: None,
            kind: CompileErrorKind::EmptyFile,
        });
        return None;
    }
    // Some editors on Windows start UTF-8 files with a byte-order mark; YAML allows it, the parser does not.
    let text = file.text.strip_prefix('\u{feff}').unwrap_or(&file.text);
    match yaml_serde::from_str::<RuleFile>(text) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let (line, column) = error.location().map_or((1, 1), |l| (l.line(), l.column()));
            // The message repeats the location at its end; keep just the cause.
            let message = error.to_string();
            let message = message
                .rsplit_once(" at line ")
                .map_or(message.as_str(), |(cause, _)| cause)
                .to_owned();
            errors.push(CompileError {
                location: at(line, column),
                rule: None,
                kind: CompileErrorKind::Syntax(message),
            });
            None
        }
    }
}

fn is_valid_rule_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.');
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match bytes {
        [] => false,
        [only] => edge(only),
        [first, middle @ .., last] => edge(first) && edge(last) && middle.iter().all(inner),
    }
}

type RuleErrors = Vec<(CompileErrorKind, Option<String>)>;

fn compile_rule(spec: RuleSpec, origin: RuleOrigin) -> Result<Rule, RuleErrors> {
    // Exhaustive destructuring: a new field in the file format does not compile until it is handled here.
    let RuleSpec {
        name,
        action,
        dry_run,
        from,
        to,
        description,
        owner,
    } = spec;
    let mut errors = Vec::new();
    let from = from.map(|f| compile_from(f, &mut errors));
    let to = to.map(|t| compile_to(t, &mut errors));
    // Only when nothing else is wrong: a block whose every value was invalid is not "empty".
    if errors.is_empty() && from.as_ref().is_some_and(FromConditions::is_empty) {
        errors.push((CompileErrorKind::EmptyBlock("from", "caller"), None));
    }
    if errors.is_empty() && to.as_ref().is_some_and(ToConditions::is_empty) {
        errors.push((CompileErrorKind::EmptyBlock("to", "destination"), None));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Rule {
        name,
        action: action.unwrap_or(Action::Allow),
        dry_run: dry_run.unwrap_or(false),
        from,
        to,
        metadata: (description.is_some() || owner.is_some())
            .then(|| Box::new(RuleMetadata { description, owner })),
        origin,
    })
}

fn compile_list<T>(
    field: &'static str,
    values: Vec<String>,
    parse: impl Fn(&str) -> Result<T, InvalidPattern>,
    errors: &mut RuleErrors,
) -> Box<[T]> {
    let mut out = Vec::with_capacity(values.len());
    for value in values {
        match parse(&value) {
            Ok(p) => out.push(p),
            Err(source) => errors.push((
                CompileErrorKind::InvalidValue {
                    field,
                    value: value.clone(),
                    source,
                },
                Some(value),
            )),
        }
    }
    out.into_boxed_slice()
}

fn parse_principal(raw: &str) -> Result<StringPattern, InvalidPattern> {
    StringPattern::parse(raw.strip_prefix("spiffe://").unwrap_or(raw))
}

fn compile_from(spec: FromSpec, errors: &mut RuleErrors) -> FromConditions {
    let FromSpec {
        namespaces,
        service_accounts,
        principals,
        not_namespaces,
        not_service_accounts,
        not_principals,
    } = spec;
    FromConditions {
        namespaces: compile_list("from.namespaces", namespaces, StringPattern::parse, errors),
        service_accounts: compile_list(
            "from.serviceAccounts",
            service_accounts,
            ServiceAccountPattern::parse,
            errors,
        ),
        principals: compile_list("from.principals", principals, parse_principal, errors),
        not_namespaces: compile_list(
            "from.notNamespaces",
            not_namespaces,
            StringPattern::parse,
            errors,
        ),
        not_service_accounts: compile_list(
            "from.notServiceAccounts",
            not_service_accounts,
            ServiceAccountPattern::parse,
            errors,
        ),
        not_principals: compile_list(
            "from.notPrincipals",
            not_principals,
            parse_principal,
            errors,
        ),
    }
}

fn compile_to(spec: ToSpec, errors: &mut RuleErrors) -> ToConditions {
    let ToSpec {
        hosts,
        not_hosts,
        ports,
        methods,
        paths,
    } = spec;
    if ports.contains(&0) {
        errors.push((
            CompileErrorKind::InvalidValue {
                field: "to.ports",
                value: "0".to_owned(),
                source: InvalidPattern::InvalidPort,
            },
            None,
        ));
    }
    ToConditions {
        hosts: compile_list("to.hosts", hosts, HostPattern::parse, errors),
        not_hosts: compile_list("to.notHosts", not_hosts, HostPattern::parse, errors),
        ports: ports.into_boxed_slice(),
        methods: compile_list("to.methods", methods, parse_method, errors),
        paths: compile_list("to.paths", paths, PathPattern::parse, errors),
    }
}

/// Top-level settings seen so far, with where each was set.
#[derive(Default)]
struct SettingsBuilder {
    default_action: Option<(Action, Location)>,
    trust_domains: Option<(Vec<String>, Location)>,
    require_sni_matches_host: Option<(bool, Location)>,
}

impl SettingsBuilder {
    fn merge(&mut self, file: &RuleFile, locator: &Locator<'_>, errors: &mut Vec<CompileError>) {
        fn merge_one<T: PartialEq + Clone>(
            slot: &mut Option<(T, Location)>,
            value: Option<&T>,
            setting: &'static str,
            locator: &Locator<'_>,
            errors: &mut Vec<CompileError>,
        ) {
            let Some(value) = value else { return };
            let here = locator.key(setting);
            match slot {
                Some((existing, other)) if existing != value => errors.push(CompileError {
                    location: here,
                    rule: None,
                    kind: CompileErrorKind::ConflictingSetting {
                        setting,
                        other: other.clone(),
                    },
                }),
                Some(_) => {}
                None => *slot = Some((value.clone(), here)),
            }
        }
        merge_one(
            &mut self.default_action,
            file.default_action.as_ref(),
            "defaultAction",
            locator,
            errors,
        );
        if let Some(tds) = &file.trust_domains {
            let location = locator.key("trustDomains");
            if tds.is_empty() {
                errors.push(CompileError {
                    location: location.clone(),
                    rule: None,
                    kind: CompileErrorKind::InvalidTrustDomains(
                        "at least one trust domain is required".into(),
                    ),
                });
            }
            for td in tds.iter().filter(|td| !is_valid_trust_domain(td)) {
                errors.push(CompileError {
                    location: locator.value_after(0, td).unwrap_or_else(|| location.clone()),
                    rule: None,
                    kind: CompileErrorKind::InvalidTrustDomains(format!(
                        "{td:?} is not a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_')"
                    )),
                });
            }
        }
        let sorted = file.trust_domains.as_ref().map(|tds| {
            let mut tds = tds.clone();
            tds.sort();
            tds.dedup();
            tds
        });
        merge_one(
            &mut self.trust_domains,
            sorted.as_ref(),
            "trustDomains",
            locator,
            errors,
        );
        merge_one(
            &mut self.require_sni_matches_host,
            file.require_sni_matches_host.as_ref(),
            "requireSniMatchesHost",
            locator,
            errors,
        );
    }

    fn finish(self) -> Settings {
        Settings {
            default_action: self.default_action.map_or(Action::Deny, |(a, _)| a),
            trust_domains: self
                .trust_domains
                .map_or_else(|| vec![DEFAULT_TRUST_DOMAIN.to_owned()], |(t, _)| t),
            require_sni_matches_host: self.require_sni_matches_host.is_none_or(|(b, _)| b),
        }
    }
}
