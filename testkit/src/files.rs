//! Rule files on disk the ways they change in production: rewritten in place, replaced by rename, or
//! projected from a ConfigMap by the kubelet (symlinked generations).

use std::path::{Path, PathBuf};

/// A rule set (default DENY) with one ALLOW rule named `rule` letting namespace `default` reach `host`.
pub fn rules_allowing(rule: &str, host: &str) -> String {
    format!(
        "defaultAction: DENY\nrules:\n- name: {rule}\n  from:\n    namespaces: [default]\n  to:\n    hosts: [{host}]\n"
    )
}

/// Rewrites a file in place: same inode, truncated then written (what `echo > file` and many editors do).
pub fn write_in_place(path: &Path, contents: &str) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)
        .expect("open rule file for writing");
    file.write_all(contents.as_bytes())
        .expect("write rule file");
    file.sync_all().expect("sync rule file");
}

/// Writes a temporary file in the same directory and renames it over `path` (atomic replace).
pub fn write_by_rename(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents).expect("write temporary rule file");
    std::fs::rename(&tmp, path).expect("rename over rule file");
}

/// A directory laid out the way the kubelet projects a ConfigMap volume: the files live in a
/// timestamped `..<ts>` directory, `..data` is a symlink to it, and each key is a symlink
/// `<key> -> ..data/<key>`. `update` swaps the content the way the kubelet's AtomicWriter does.
#[derive(Debug)]
pub struct ConfigMapDir {
    dir: PathBuf,
    generation: u32,
}

impl ConfigMapDir {
    /// Projects `files` (key, content) into `dir`, which must exist.
    pub fn create(dir: &Path, files: &[(&str, &str)]) -> Self {
        let mut this = Self {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        let ts = this.write_generation(files);
        std::os::unix::fs::symlink(&ts, dir.join("..data")).expect("symlink ..data");
        for (key, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(key), dir.join(key))
                .expect("symlink key");
        }
        this
    }

    /// The mount directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the content of the keys (the same key set) atomically: new timestamped directory, new
    /// symlink `..data_tmp`, rename it over `..data`, remove the old directory.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        let old = std::fs::read_link(self.dir.join("..data")).expect("read ..data");
        let ts = self.write_generation(files);
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("rename ..data_tmp over ..data");
        std::fs::remove_dir_all(self.dir.join(old)).expect("remove the old generation");
    }

    fn write_generation(&mut self, files: &[(&str, &str)]) -> PathBuf {
        self.generation += 1;
        let ts = PathBuf::from(format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation,
            std::process::id()
        ));
        let full = self.dir.join(&ts);
        std::fs::create_dir(&full).expect("create generation directory");
        for (key, contents) in files {
            std::fs::write(full.join(key), contents).expect("write ConfigMap key");
        }
        ts
    }
}
