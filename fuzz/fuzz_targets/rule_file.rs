//! Any text as a rule file. Compiling must give a policy or located errors, never a panic, in bounded
//! memory and time (the run's `-rss_limit_mb` and `-timeout`: a YAML alias bomb must be refused by the
//! rule-loading limits, not expanded). A policy that compiles must decide the same with its index as
//! by checking every rule in order, and explain what it decides.

#![no_main]

use egress_authz::policy::{EgressRequest, HttpRequest, SourceFile, compile, lint};
use libfuzzer_sys::fuzz_target;

const FILE_NAME: &str = "fuzz.yaml";

/// Requests near what rule files name: the hosts and identities of the seed files and the dictionary.
const REQUESTS: &[EgressRequest<'static>] = &[
    EgressRequest {
        http: Some(HttpRequest {
            authority: "developers.google.com",
            method: "GET",
            path: "/api/x?y",
        }),
        principal: "spiffe://cluster.local/ns/default/sa/sleep",
        destination_service: "",
        sni: "developers.google.com",
        port: Some(443),
    },
    EgressRequest {
        http: None,
        principal: "spiffe://cluster.local/ns/otherns/sa/sleep-yahoo",
        destination_service: "developer.yahoo.com",
        sni: "developer.yahoo.com",
        port: Some(443),
    },
    EgressRequest {
        http: Some(HttpRequest {
            authority: "10.0.0.1:8080",
            method: "POST",
            path: "/",
        }),
        principal: "spiffe://example.org/ns/team-a/sa/billing",
        destination_service: "",
        sni: "",
        port: Some(80),
    },
    EgressRequest {
        http: None,
        principal: "",
        destination_service: "",
        sni: "a.b.example.com",
        port: None,
    },
];

fuzz_target!(|data: &[u8]| {
    let file = SourceFile {
        name: FILE_NAME.to_owned(),
        text: String::from_utf8_lossy(data).into_owned(),
    };
    match compile(&[file]) {
        Ok(policy) => {
            let _ = lint(&policy);
            for request in REQUESTS {
                let decision = policy.decide(request);
                assert_eq!(decision, policy.decide_linear(request), "{request:?}");
                assert_eq!(policy.explain(request).decision, decision, "{request:?}");
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a failed compile without an error");
            for error in errors {
                let location = &error.location;
                assert!(location.line >= 1 && location.column >= 1, "{error:?}");
                assert!(error.to_string().starts_with("fuzz.yaml:"), "{error}");
            }
        }
    }
});
