//! Compiled patterns: parsed once when rules load, matched per request without allocating.

use super::host::{NormalizedHost, is_valid_dns_name};

/// A value pattern for namespaces, service-account parts and principals, as Istio writes them:
/// `*` (any non-empty value), `prefix*`, `*suffix`, or an exact value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StringPattern {
    /// `*`: any value.
    Any,
    /// An exact value.
    Exact(String),
    /// `team-*`: values starting with the prefix.
    Prefix(String),
    /// `*-prod`: values ending with the suffix.
    Suffix(String),
}

/// Why a pattern could not be compiled; the caller adds where it was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPattern {
    /// An empty string.
    #[error("empty value")]
    Empty,
    /// A `*` anywhere but alone, first or last.
    #[error("'*' is allowed only as the whole value, as a prefix or as a suffix")]
    MisplacedWildcard,
    /// A host pattern that is neither `*`, a wildcard over a DNS name, a DNS name nor an IP literal.
    #[error("not a host name, IP literal, '*', '*.<domain>' or '**.<domain>'")]
    InvalidHost,
    /// A path that does not start with `/` (or is not `*`).
    #[error("paths must start with '/' (optionally ending in '*') or be '*'")]
    InvalidPath,
    /// A service account not written as `<namespace>/<name>`.
    #[error("service accounts are written '<namespace>/<name>'")]
    InvalidServiceAccount,
    /// An HTTP method that is not a token.
    #[error("not an HTTP method")]
    InvalidMethod,
    /// Port 0.
    #[error("port must be between 1 and 65535")]
    InvalidPort,
}

impl StringPattern {
    /// Parses an Istio-style value pattern.
    pub fn parse(raw: &str) -> Result<Self, InvalidPattern> {
        if raw.is_empty() {
            return Err(InvalidPattern::Empty);
        }
        if raw == "*" {
            return Ok(Self::Any);
        }
        let pattern = if let Some(suffix) = raw.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else if let Some(prefix) = raw.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else {
            Self::Exact(raw.to_owned())
        };
        match &pattern {
            Self::Exact(s) | Self::Prefix(s) | Self::Suffix(s) if s.contains('*') => {
                Err(InvalidPattern::MisplacedWildcard)
            }
            _ => Ok(pattern),
        }
    }

    /// True when `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => !value.is_empty(),
            Self::Exact(s) => value == s,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
        }
    }
}

/// A service-account pattern `<namespace>/<name>`, each part a [`StringPattern`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAccountPattern {
    /// The namespace part.
    pub namespace: StringPattern,
    /// The service-account name part.
    pub name: StringPattern,
}

impl ServiceAccountPattern {
    /// Parses `<namespace>/<name>`.
    pub fn parse(raw: &str) -> Result<Self, InvalidPattern> {
        let (namespace, name) = raw
            .split_once('/')
            .ok_or(InvalidPattern::InvalidServiceAccount)?;
        if name.contains('/') {
            return Err(InvalidPattern::InvalidServiceAccount);
        }
        Ok(Self {
            namespace: StringPattern::parse(namespace)?,
            name: StringPattern::parse(name)?,
        })
    }

    /// True when both parts match.
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        self.namespace.matches(namespace) && self.name.matches(name)
    }
}

/// A destination host pattern, DNS-label aware.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `*`: any host.
    Any,
    /// `example.com`: exactly this host (normalised).
    Exact(String),
    /// `*.example.com`: exactly one more label. Holds the suffix with its leading dot: `.example.com`.
    OneLabel(String),
    /// `**.example.com`: one or more labels. Holds the suffix with its leading dot: `.example.com`.
    AnyLabels(String),
}

impl HostPattern {
    /// Parses and normalises a host pattern.
    pub fn parse(raw: &str) -> Result<Self, InvalidPattern> {
        if raw == "*" {
            return Ok(Self::Any);
        }
        let (domain, make): (&str, fn(String) -> Self) = if let Some(d) = raw.strip_prefix("**.") {
            (d, Self::AnyLabels)
        } else if let Some(d) = raw.strip_prefix("*.") {
            (d, Self::OneLabel)
        } else {
            let host = NormalizedHost::parse(raw).ok_or(InvalidPattern::InvalidHost)?;
            return Ok(Self::Exact(host.as_str().to_owned()));
        };
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if !is_valid_dns_name(domain) {
            return Err(InvalidPattern::InvalidHost);
        }
        Ok(make(format!(".{}", domain.to_ascii_lowercase())))
    }

    /// True when the normalised `host` matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => host == exact,
            Self::OneLabel(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            Self::AnyLabels(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|labels| !labels.is_empty()),
        }
    }
}

impl HostPattern {
    /// True when every host this pattern matches is also matched by `outer`: exact on the pattern
    /// language, so a tenant's host is accepted by a guardrail only if no host it names escapes it.
    /// `api.x.com` is within `*.x.com` and `**.x.com`; `*.x.com` is within `**.x.com` and `**.com` but
    /// not within `*.com` (its hosts have two labels before `.com`); `**.x.com` is within `**.x.com`,
    /// `**.com` and `*` only; `*` is within `*` only.
    pub fn is_within(&self, outer: &Self) -> bool {
        match (self, outer) {
            (_, Self::Any) => true,
            (Self::Any, _) => false,
            (Self::Exact(host), outer) => outer.matches(host),
            (Self::OneLabel(inner), Self::OneLabel(suffix)) => inner == suffix,
            // Both suffixes start with a dot, so `ends_with` compares whole labels: `.x.com` is under
            // `.com`, and `.badx.com` is not under `.x.com`.
            (Self::OneLabel(inner) | Self::AnyLabels(inner), Self::AnyLabels(suffix)) => {
                inner.ends_with(suffix.as_str())
            }
            // A wildcard matches infinitely many hosts; an exact host or one label only finitely many
            // shapes, so nothing wider fits in them.
            (Self::OneLabel(_) | Self::AnyLabels(_), Self::Exact(_))
            | (Self::AnyLabels(_), Self::OneLabel(_)) => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    /// The pattern as it would be written, normalised: `*`, `api.x.com`, `*.x.com`, `**.x.com`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(host) => f.write_str(host),
            Self::OneLabel(suffix) => write!(f, "*{suffix}"),
            Self::AnyLabels(suffix) => write!(f, "**{suffix}"),
        }
    }
}

/// An HTTP path pattern: `*`, an exact path, or a prefix ending in `*`. Matched on the path without query.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathPattern {
    /// `*`: any path.
    Any,
    /// `/headers`: exactly this path.
    Exact(String),
    /// `/api/*`: paths starting with `/api/`.
    Prefix(String),
}

impl PathPattern {
    /// Parses a path pattern.
    pub fn parse(raw: &str) -> Result<Self, InvalidPattern> {
        if raw == "*" {
            return Ok(Self::Any);
        }
        if !raw.starts_with('/') {
            return Err(InvalidPattern::InvalidPath);
        }
        match raw.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err(InvalidPattern::MisplacedWildcard),
            Some(prefix) => Ok(Self::Prefix(prefix.to_owned())),
            None if raw.contains('*') => Err(InvalidPattern::MisplacedWildcard),
            None => Ok(Self::Exact(raw.to_owned())),
        }
    }

    /// True when `path` (already stripped of query and fragment) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => path == exact,
            Self::Prefix(prefix) => path.starts_with(prefix.as_str()),
        }
    }
}

/// Parses an HTTP method (an RFC 9110 token), normalised to upper case. Methods then match
/// case-insensitively: a DENY on `POST` must not be dodged by sending `post`.
pub(super) fn parse_method(raw: &str) -> Result<String, InvalidPattern> {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if raw.is_empty() || !raw.bytes().all(is_tchar) {
        return Err(InvalidPattern::InvalidMethod);
    }
    Ok(raw.to_ascii_uppercase())
}

/// Strips the query string and fragment from a request path.
pub(super) fn path_without_query(path: &str) -> &str {
    // A byte scan: cheaper than a two-char `str::find` on every HTTP check.
    let end = path
        .bytes()
        .position(|b| matches!(b, b'?' | b'#'))
        .unwrap_or(path.len());
    &path[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_pattern_containment_is_exact_on_the_pattern_language() {
        let cases: &[(&str, &str, bool)] = &[
            ("api.x.com", "api.x.com", true),
            ("api.x.com", "API.X.com.", true),
            ("api.x.com", "web.x.com", false),
            ("api.x.com", "*.x.com", true),
            ("api.x.com", "**.x.com", true),
            ("api.x.com", "*", true),
            ("a.api.x.com", "*.x.com", false),
            ("a.api.x.com", "**.x.com", true),
            ("x.com", "*.x.com", false),
            ("x.com", "**.x.com", false),
            ("api.badx.com", "**.x.com", false),
            ("*.x.com", "*.x.com", true),
            ("*.x.com", "**.x.com", true),
            ("*.x.com", "**.com", true),
            ("*.x.com", "*.com", false),
            ("*.x.com", "*.y.com", false),
            ("*.x.com", "**.y.com", false),
            ("*.a.x.com", "**.x.com", true),
            ("*.x.com", "api.x.com", false),
            ("*.x.com", "*", true),
            ("**.x.com", "**.x.com", true),
            ("**.x.com", "**.com", true),
            ("**.x.com", "*.x.com", false),
            ("**.x.com", "**.a.x.com", false),
            ("**.x.com", "x.com", false),
            ("**.x.com", "*", true),
            ("**.badx.com", "**.x.com", false),
            ("*", "*", true),
            ("*", "**.com", false),
            ("*", "api.x.com", false),
            ("10.0.0.1", "*", true),
            ("10.0.0.1", "10.0.0.1", true),
        ];
        for &(inner, outer, within) in cases {
            let (inner_pattern, outer_pattern) = (
                HostPattern::parse(inner).unwrap(),
                HostPattern::parse(outer).unwrap(),
            );
            assert_eq!(
                inner_pattern.is_within(&outer_pattern),
                within,
                "{inner} within {outer}"
            );
        }
    }

    #[test]
    fn host_patterns_display_as_written_normalised() {
        for (raw, shown) in [
            ("*", "*"),
            ("API.x.com.", "api.x.com"),
            ("*.X.com", "*.x.com"),
            ("**.x.com", "**.x.com"),
        ] {
            assert_eq!(HostPattern::parse(raw).unwrap().to_string(), shown);
        }
    }

    #[test]
    fn host_patterns_are_label_aware() {
        let cases: &[(&str, &str, bool)] = &[
            ("developers.google.com", "developers.google.com", true),
            ("developers.google.com", "xdevelopers.google.com", false),
            ("Developers.Google.com.", "developers.google.com", true),
            ("*.googleapis.com", "storage.googleapis.com", true),
            ("*.googleapis.com", "a.storage.googleapis.com", false),
            ("*.googleapis.com", "googleapis.com", false),
            ("*.googleapis.com", "evilgoogleapis.com", false),
            ("**.s3.amazonaws.com", "bucket.s3.amazonaws.com", true),
            ("**.s3.amazonaws.com", "a.b.s3.amazonaws.com", true),
            ("**.s3.amazonaws.com", "s3.amazonaws.com", false),
            ("**.s3.amazonaws.com", "evils3.amazonaws.com", false),
            ("*", "anything.example", true),
            ("10.0.0.1", "10.0.0.1", true),
            ("[::1]", "::1", true),
        ];
        for (pattern, host, expected) in cases {
            let p = HostPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(host), *expected, "{pattern} vs {host}");
        }
    }

    #[test]
    fn misplaced_host_wildcards_are_rejected() {
        for bad in [
            "a.*.com",
            "*example.com",
            "foo*.com",
            "***.a.com",
            "*.",
            "**",
            "*.*.com",
            "*.a..com",
            "",
        ] {
            assert_eq!(
                HostPattern::parse(bad),
                Err(InvalidPattern::InvalidHost),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn string_patterns_follow_istio() {
        let cases: &[(&str, &str, bool)] = &[
            ("default", "default", true),
            ("default", "default2", false),
            ("team-*", "team-a", true),
            ("team-*", "xteam-a", false),
            ("*-prod", "pay-prod", true),
            ("*-prod", "pay-prod2", false),
            ("*", "anything", true),
            ("*", "", false),
        ];
        for (pattern, value, expected) in cases {
            assert_eq!(
                StringPattern::parse(pattern).unwrap().matches(value),
                *expected,
                "{pattern} vs {value}"
            );
        }
        assert_eq!(
            StringPattern::parse("a*b"),
            Err(InvalidPattern::MisplacedWildcard)
        );
        assert_eq!(
            StringPattern::parse("*a*"),
            Err(InvalidPattern::MisplacedWildcard)
        );
        assert_eq!(StringPattern::parse(""), Err(InvalidPattern::Empty));
    }

    #[test]
    fn service_account_patterns_match_per_part() {
        let p = ServiceAccountPattern::parse("team-*/sleep").unwrap();
        assert!(p.matches("team-a", "sleep"));
        assert!(!p.matches("team-a", "sleep-google"));
        assert!(ServiceAccountPattern::parse("sleep").is_err());
        assert!(ServiceAccountPattern::parse("a/b/c").is_err());
    }

    #[test]
    fn path_patterns() {
        assert!(PathPattern::parse("/headers").unwrap().matches("/headers"));
        assert!(
            !PathPattern::parse("/headers")
                .unwrap()
                .matches("/headers/x")
        );
        assert!(PathPattern::parse("/api/*").unwrap().matches("/api/v1"));
        assert!(!PathPattern::parse("/api/*").unwrap().matches("/apix"));
        assert!(PathPattern::parse("headers").is_err());
        assert!(PathPattern::parse("/a*b").is_err());
        assert_eq!(path_without_query("/get?x=1"), "/get");
        assert_eq!(path_without_query("/get#frag"), "/get");
    }

    #[test]
    fn methods_are_tokens() {
        assert_eq!(parse_method("get").unwrap(), "GET");
        assert!(parse_method("GE T").is_err());
        assert!(parse_method("").is_err());
    }
}
