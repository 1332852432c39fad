//! Paths to the files the project checks in for its tests and demos, so no caller spells out where the
//! repository is (the kit lives one directory below it).

use std::path::{Path, PathBuf};

/// The repository root (the egress-authz package directory).
pub fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the kit lives inside the repository")
        .to_path_buf()
}

/// `relative` under the repository root.
pub fn project_file(relative: impl AsRef<Path>) -> PathBuf {
    project_dir().join(relative)
}

/// `relative` under tests/fixtures.
pub fn fixture(relative: impl AsRef<Path>) -> PathBuf {
    project_dir().join("tests/fixtures").join(relative)
}

/// The captured Envoy 1.40 CheckRequest (protobuf JSON) of `kind`: `http` or `tcp`.
pub fn envoy_sample(kind: &str) -> PathBuf {
    fixture(format!("envoy-1.40/{kind}_checkrequest.json"))
}
