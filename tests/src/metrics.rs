//! Prometheus metrics as a suite reads them: one scrape of a process's `/metrics`, and
//! how far its samples moved between two scrapes.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One scrape: every sample, by name and labels.
pub struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    pub async fn of(addr: SocketAddr) -> Self {
        let response = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("the metrics endpoint answers");
        assert!(response.status().is_success(), "{}", response.status());
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE].clone();
        assert!(
            content_type.to_str().unwrap().starts_with("text/plain"),
            "{content_type:?}"
        );
        let text = response.text().await.expect("a text body");
        Self(text.lines().filter_map(sample).collect())
    }

    /// The sum of `name`'s samples that carry all of `labels`; 0 if there are none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(sample, sample_labels, _)| {
                sample == name
                    && labels.iter().all(|(key, value)| {
                        sample_labels.get(*key).map(String::as_str) == Some(value)
                    })
            })
            .map(|(_, _, value)| value)
            .sum()
    }
}

/// How far each sample moved between two scrapes of one process.
pub struct Change<'a>(pub &'a Scrape, pub &'a Scrape);

impl Change<'_> {
    pub fn of(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.1.value(name, labels) - self.0.value(name, labels)
    }
}

/// `name{key="value",…} number`, as the text exposition format writes a sample.
fn sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    let labels = labels
        .split("\",")
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((key.to_owned(), value.trim_end_matches('"').to_owned()))
        })
        .collect();
    Some((name.to_owned(), labels, value.parse().ok()?))
}
