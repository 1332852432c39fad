//! Allow or deny: what a rule or the default does with a request, and what a decision says. One type for
//! both, so a rule's action and the decision it makes cannot drift apart, and both spellings of it (the
//! rule file's and the decision's) are written here once.

use std::fmt;

use serde::{Deserialize, Deserializer, de};

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The request may proceed.
    Allow,
    /// The request is refused.
    Deny,
}

/// The rule file's spellings, as the static list serde's "expected one of" wants.
const RULE_SPELLINGS: &[&str] = &[Verdict::Allow.as_rule_str(), Verdict::Deny.as_rule_str()];

impl Verdict {
    /// Both verdicts.
    pub const ALL: [Self; 2] = [Self::Allow, Self::Deny];

    /// `allow` / `deny`: how decisions are named in metrics, logs and response metadata.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    /// `ALLOW` / `DENY`: how the rule file (`action`, `defaultAction`) and `explain` spell it.
    pub const fn as_rule_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
        }
    }
}

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RuleSpelling;

        impl de::Visitor<'_> for RuleSpelling {
            type Value = Verdict;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("ALLOW or DENY")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Verdict, E> {
                Verdict::ALL
                    .into_iter()
                    .find(|v| v.as_rule_str() == text)
                    .ok_or_else(|| E::unknown_variant(text, RULE_SPELLINGS))
            }
        }

        deserializer.deserialize_str(RuleSpelling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_verdict_has_a_decision_and_a_rule_file_spelling() {
        let cases = [
            (Verdict::Allow, "allow", "ALLOW"),
            (Verdict::Deny, "deny", "DENY"),
        ];
        for (verdict, decision, rule_file) in cases {
            assert_eq!(verdict.as_str(), decision, "{verdict:?}");
            assert_eq!(verdict.as_rule_str(), rule_file, "{verdict:?}");
        }
    }
}
