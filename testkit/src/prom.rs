//! The Prometheus text exposition format, as the server's `/metrics` writes it, parsed into samples.

use std::collections::BTreeMap;

/// One scrape: every sample with its labels.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (name, labels, value).
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
    /// `# TYPE` per metric family.
    pub types: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses the Prometheus text exposition format (the subset the exporter writes).
    pub fn parse(text: &str) -> Self {
        let mut metrics = Self::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    metrics.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value.parse().expect("sample value is a number");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (
                    name,
                    parse_labels(rest.strip_suffix('}').expect("closing brace")),
                ),
                None => (series, BTreeMap::new()),
            };
            metrics.samples.push((name.to_owned(), labels, value));
        }
        metrics
    }

    /// Sum of the samples named `name` whose labels include every pair in `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, _, v)| v).sum()
    }

    /// The value of the one sample named `name` whose labels include `labels`; `None` if there is none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<_> = self.matching(name, labels).collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} matches several series: {found:?}"
        );
        found.first().map(|(_, _, v)| *v)
    }

    /// Every sample named `name` whose labels include `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a (String, BTreeMap<String, String>, f64)> + 'a {
        self.samples.iter().filter(move |(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// True if any sample has this name.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

fn parse_labels(raw: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = raw;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}
