//! A Check through the real server binary, written with the test kit: rules on disk, the server
//! started and ready, one Envoy-shaped check, its answer. The pattern for any new test of a Check.

use testkit::check::{REASON_HEADER, denied_header};
use testkit::{ServerBuilder, bounded, check, is_allowed, mk_http_check, rules_allowing, spiffe};

#[tokio::test]
async fn a_host_no_rule_allows_is_denied_with_the_reason_header() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.yaml");
        std::fs::write(&rules, rules_allowing("to-google", "www.google.com")).unwrap();
        let server = ServerBuilder::new(&rules).spawn().await;

        let caller = spiffe("default", "sleep");
        let denied = mk_http_check(&caller, "evil.example.com", 443, "GET", "/");
        let response = check(&mut server.authz().await, denied).await;

        assert!(!is_allowed(&response));
        assert_eq!(
            denied_header(&response, REASON_HEADER),
            Some("no_matching_rule")
        );
    })
    .await;
}
