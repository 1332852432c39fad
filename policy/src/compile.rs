//! Rule files → [`Policy`]: parse, validate everything, normalise, locate every error.
//!
//! Compilation is all-or-nothing and reports *every* error it finds (so `validate` shows them all at
//! once), each with file, line and column. No I/O happens here: the caller hands in file contents.

use std::collections::HashMap;

use serde::Deserialize as _;

use super::decision::{Policy, Settings};
use super::guardrail::{Guardrails, compile_guardrails};
use super::identity::is_valid_trust_domain;
use super::matcher::{
    HostPattern, InvalidPattern, PathPattern, ServiceAccountPattern, StringPattern, parse_method,
};
use super::rule::{FromConditions, Rule, RuleMetadata, RuleOrigin, ToConditions};
pub use super::source::{Location, SourceFile};
use super::source::{Locator, digest};
use super::spec::{FromSpec, RULES_WITHOUT_VALUE, RuleFile, RuleSpec, ToSpec};
use super::tenant::TenantScope;
use super::verdict::Verdict;
pub use super::yaml_limits::Limit;
use super::yaml_limits::{Budget, MAX_DEPTH, MAX_NODES, pre_parse_check, walk_within_budget};

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
    /// The file holds no YAML document at all, or an empty one (only `---`): a truncated or half-written
    /// file.
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
    /// `rules:` with no value: what a deny list cut off after its `rules:` line looks like.
    #[error("rules has no value; write `rules: []` for a file without rules")]
    RulesWithoutValue,
    /// The file would make the server build too much (an alias bomb, say); it is refused whole.
    #[error("{0}; the file is refused to protect the server")]
    LimitExceeded(Limit),
    /// A second YAML document (`---`): one file holds one rule set, and a parser reading only the first
    /// would silently ignore the rest.
    #[error(
        "a second YAML document starts here; a rule file holds one document (put each in a file of its own)"
    )]
    MultipleDocuments,
    /// A `tenants:` key that is neither `defaults` nor a valid namespace name.
    #[error(
        "tenants: {0:?} is not a namespace name (a lower-case RFC 1123 label of at most 63 characters) nor 'defaults'"
    )]
    InvalidTenantNamespace(String),
    /// A tenant file whose name is not `<namespace>.yaml` or `<namespace>.yml` with a valid namespace.
    #[error(
        "a tenant file is named <namespace>.yaml or <namespace>.yml, with a valid namespace name (a lower-case RFC 1123 label of at most 63 characters)"
    )]
    InvalidTenantFileName,
    /// Two tenant files for one namespace (`<ns>.yaml` and `<ns>.yml`).
    #[error("namespace {namespace:?} also has the tenant file {other}; keep one")]
    DuplicateTenantFile {
        /// The namespace.
        namespace: String,
        /// The other file.
        other: String,
    },
    /// A tenant file for a namespace the platform rules give no guardrail (no `tenants.<ns>`, no
    /// `tenants.defaults`).
    #[error(
        "namespace {0:?} may not have a tenant file: the platform rules have neither tenants.{0} nor tenants.defaults"
    )]
    NoGuardrail(String),
    /// A top-level setting in a tenant file: those belong to the platform.
    #[error("{0} may be set only in the platform rules; a tenant file has only `rules:`")]
    SettingInTenantFile(&'static str),
    /// A tenant file with more rules than its guardrail's `maxRules`.
    #[error("{count} rules, more than maxRules {max} for this namespace")]
    TooManyRules {
        /// Rules in the file.
        count: usize,
        /// The guardrail's `maxRules`.
        max: usize,
    },
    /// A tenant rule naming a caller outside its own namespace.
    #[error(
        "{field}: {value:?}: a rule of namespace {namespace:?} may name only callers of that namespace{hint}"
    )]
    OtherNamespace {
        /// The field, as written in the file (`from.serviceAccounts`).
        field: &'static str,
        /// The offending value.
        value: String,
        /// The tenant's namespace.
        namespace: String,
        /// How a value of that field names the namespace.
        hint: &'static str,
    },
    /// A tenant ALLOW rule in a namespace without `allowedHosts`.
    #[error(
        "namespace {namespace:?} has no allowedHosts in the platform rules: it may write DENY rules only"
    )]
    DenyOnlyTenant {
        /// The tenant's namespace.
        namespace: String,
    },
    /// A tenant ALLOW rule reaching beyond its guardrail.
    #[error(
        "{field}: {value}: not within the platform's guardrail for namespace {namespace:?} ({allowed})"
    )]
    OutsideGuardrail {
        /// The field, as written in the file (`to.hosts`, `to.ports`).
        field: &'static str,
        /// The offending value, or what its absence means.
        value: String,
        /// The tenant's namespace.
        namespace: String,
        /// What the guardrail allows for that field.
        allowed: String,
    },
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
    let mut settings = SettingsBuilder::default();
    let mut collected = Collected::default();

    for (file_index, file) in files.iter().enumerate() {
        let Some(parsed) = parse_file(file, &mut collected.errors) else {
            continue;
        };
        let locator = Locator::new(file);
        settings.merge(&parsed, &locator, &mut collected.errors);
        compile_rules(
            file,
            &locator,
            file_index,
            parsed.rules,
            None,
            &mut collected,
        );
    }

    let settings = settings.finish();
    let Collected { rules, errors, .. } = collected;
    if !errors.is_empty() {
        return Err(errors);
    }
    let file_names = files.iter().map(|f| f.name.clone()).collect();
    Ok(Policy::new(settings, rules, file_names, digest))
}

/// What compiling the rules of one or more files produced so far.
#[derive(Default)]
pub(super) struct Collected {
    pub(super) rules: Vec<Rule>,
    pub(super) errors: Vec<CompileError>,
    /// Where each rule name was first written, to report duplicates.
    first_by_name: HashMap<String, Location>,
}

/// Compiles the rules of one parsed file into `collected`, locating every error. A tenant file's
/// rules are also scoped to its namespace and checked against its guardrail (`tenant`).
pub(super) fn compile_rules(
    file: &SourceFile,
    locator: &Locator<'_>,
    file_index: usize,
    specs: Vec<RuleSpec>,
    tenant: Option<&TenantScope<'_>>,
    collected: &mut Collected,
) {
    let Collected {
        rules,
        errors,
        first_by_name,
    } = collected;
    // Where each rule starts, in file order; a rule's extent runs to the next rule's start, so that
    // searching for a value never scans the rest of the file.
    let mut search_from = 0;
    let rule_offsets: Vec<usize> = specs
        .iter()
        .map(|spec| {
            let offset = locator.rule(&spec.name, search_from);
            search_from = offset + 1;
            offset
        })
        .collect();
    for (index, mut spec) in specs.into_iter().enumerate() {
        let rule_offset = rule_offsets[index];
        let rule_end = rule_offsets[index + 1..]
            .first()
            .copied()
            .filter(|&next| next > rule_offset)
            .unwrap_or(file.text.len());
        let location = locator.at(rule_offset);
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
        let mut kinds = RuleErrors::new();
        if let Some(tenant) = tenant {
            tenant.scope_from(&mut spec.from, &mut kinds);
        }
        match compile_rule(spec, origin) {
            Ok(mut rule) => {
                if let Some(tenant) = tenant {
                    tenant.finish_rule(&mut rule, &mut kinds);
                }
                if kinds.is_empty() {
                    rules.push(rule);
                }
            }
            Err(more) => kinds.extend(more),
        }
        // Invalid values are reported in the order they are written, mostly: search on from the
        // previous one first, so a rule with many bad values is still scanned once.
        let mut cursor = rule_offset;
        for (kind, value) in kinds {
            let found = value.and_then(|v| {
                locator
                    .find_within(cursor..rule_end, &v)
                    .or_else(|| locator.find_within(rule_offset..cursor, &v))
                    .map(|at| (at, v.len()))
            });
            let at = match found {
                Some((at, len)) => {
                    cursor = at + len;
                    locator.at(at)
                }
                None => location.clone(),
            };
            errors.push(CompileError {
                location: at,
                rule: Some(name.clone()),
                kind,
            });
        }
    }
}

pub(super) fn parse_file(file: &SourceFile, errors: &mut Vec<CompileError>) -> Option<RuleFile> {
    let at = |line, column| Location {
        file: file.name.clone(),
        line,
        column,
    };
    let mut report = |line, column, kind| {
        errors.push(CompileError {
            location: at(line, column),
            rule: None,
            kind,
        });
    };
    if file.text.trim().is_empty()
        || file
            .text
            .lines()
            .all(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
    {
        report(1, 1, CompileErrorKind::EmptyFile);
        return None;
    }
    // Some editors on Windows start UTF-8 files with a byte-order mark; YAML allows it, the parser does not.
    let text = file.text.strip_prefix('\u{feff}').unwrap_or(&file.text);
    if let Err((offset, limit)) = pre_parse_check(text, MAX_DEPTH, MAX_NODES) {
        let located = Locator::new(file).at(offset + (file.text.len() - text.len()));
        report(
            located.line,
            located.column,
            CompileErrorKind::LimitExceeded(limit),
        );
        return None;
    }
    // Only an anchor (`&name`) can make the file expand beyond what it writes out, so only a file that
    // could hold one pays for the walk. Only the first document: the parse below expands no other.
    if text.contains('&')
        && let Some(first) = yaml_serde::Deserializer::from_str(text).next()
    {
        match walk_within_budget(first, Budget::for_file_of(text.len())) {
            Ok(()) => {}
            Err((error, Some(limit))) => {
                let (line, column) = line_column(&error).unwrap_or((1, 1));
                report(line, column, CompileErrorKind::LimitExceeded(limit));
                return None;
            }
            // The parser's own guard on alias uses, which comes first on small files; it carries no
            // location, so point at the first anchor.
            Err((error, None)) if error.to_string().starts_with("repetition limit exceeded") => {
                let located = Locator::new(file).at(first_anchor(&file.text).unwrap_or(0));
                report(
                    located.line,
                    located.column,
                    CompileErrorKind::LimitExceeded(Limit::AliasUses),
                );
                return None;
            }
            // A YAML error, which the parse below reports.
            Err((_, None)) => {}
        }
    }
    let mut documents = yaml_serde::Deserializer::from_str(text);
    let first = documents.next()?;
    match Option::<RuleFile>::deserialize(first) {
        // A document that is only `---`, `~` or `null`: nothing was written, like an empty file. Treating
        // it as "no rules" would let a file cut off right after its `---` drop all its rules silently.
        Ok(None) => {
            report(1, 1, CompileErrorKind::EmptyFile);
            None
        }
        Ok(Some(parsed)) => {
            // Whatever follows the first document would be silently ignored by the parse: refuse it.
            if documents.next().is_some() {
                let offset = second_document_start(text).unwrap_or(0);
                let location = Locator::new(file).at(offset + (file.text.len() - text.len()));
                report(
                    location.line,
                    location.column,
                    CompileErrorKind::MultipleDocuments,
                );
                return None;
            }
            Some(parsed)
        }
        Err(error) if error.to_string().contains(RULES_WITHOUT_VALUE) => {
            let location = Locator::new(file).key("rules");
            report(
                location.line,
                location.column,
                CompileErrorKind::RulesWithoutValue,
            );
            None
        }
        Err(error) => {
            let (line, column) = line_column(&error).unwrap_or((1, 1));
            // The message repeats the location at its end; keep just the cause.
            let message = error.to_string();
            let message = message
                .rsplit_once(" at line ")
                .map_or(message.as_str(), |(cause, _)| cause)
                .to_owned();
            report(line, column, CompileErrorKind::Syntax(message));
            None
        }
    }
}

fn line_column(error: &yaml_serde::Error) -> Option<(usize, usize)> {
    error.location().map(|l| (l.line(), l.column()))
}

/// The offset of the first thing that looks like an anchor (`&name` where a value starts), for locating
/// an error about aliases that the parser does not locate.
fn first_anchor(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    text.match_indices('&').map(|(i, _)| i).find(|&i| {
        let starts_value =
            i == 0 || matches!(bytes[i - 1], b' ' | b'\t' | b'\n' | b'[' | b'{' | b',');
        starts_value && bytes.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace())
    })
}

/// The offset of the `---` (or of the content after a `...`) that starts the second YAML document.
/// Document markers are only markers at the start of a line, even inside a block scalar.
fn second_document_start(text: &str) -> Option<usize> {
    let is_marker = |line: &str, marker: &str| {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
    };
    let mut in_document = false;
    let mut ended = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        let blank = content.trim().is_empty() || content.trim_start().starts_with('#');
        if is_marker(content, "---") {
            if in_document || ended {
                return Some(offset);
            }
            in_document = true;
        } else if is_marker(content, "...") {
            ended = true;
            in_document = false;
        } else if !blank && !content.starts_with('%') {
            if ended {
                return Some(offset);
            }
            in_document = true;
        }
        offset += line.len();
    }
    None
}

pub(super) fn is_valid_rule_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.');
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match bytes {
        [] => false,
        [only] => edge(only),
        [first, middle @ .., last] => edge(first) && edge(last) && middle.iter().all(inner),
    }
}

/// A rule's problems, each with the value to locate it by (if any).
pub(super) type RuleErrors = Vec<(CompileErrorKind, Option<String>)>;

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
        action: action.unwrap_or(Verdict::Allow),
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
    default_action: Option<(Verdict, Location)>,
    trust_domains: Option<(Vec<String>, Location)>,
    require_sni_matches_host: Option<(bool, Location)>,
    /// Set in one file only: guardrails merged from several files would be hard to review, and two
    /// copies that must agree would drift.
    tenants: Option<(Guardrails, Location)>,
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
        self.merge_tenants(file, locator, errors);
    }

    fn merge_tenants(
        &mut self,
        file: &RuleFile,
        locator: &Locator<'_>,
        errors: &mut Vec<CompileError>,
    ) {
        let Some(spec) = &file.tenants else { return };
        let here = locator.key("tenants");
        if let Some((_, other)) = &self.tenants {
            errors.push(CompileError {
                location: here,
                rule: None,
                kind: CompileErrorKind::ConflictingSetting {
                    setting: "tenants",
                    other: other.clone(),
                },
            });
            return;
        }
        self.tenants = Some((compile_guardrails(spec, locator, errors), here));
    }

    fn finish(self) -> Settings {
        Settings {
            tenants: self.tenants.map(|(t, _)| t).unwrap_or_default(),
            default_action: self.default_action.map_or(Verdict::Deny, |(a, _)| a),
            trust_domains: self
                .trust_domains
                .map_or_else(|| vec![DEFAULT_TRUST_DOMAIN.to_owned()], |(t, _)| t),
            require_sni_matches_host: self.require_sni_matches_host.is_none_or(|(b, _)| b),
        }
    }
}

#[cfg(test)]
mod tests;
