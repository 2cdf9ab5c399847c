//! Scraping a master's /metrics and reading it with a real Prometheus parser
//! (prometheus_client's text parser, from the venv .ci/install-servers
//! fills). Without it, a test prints SKIPPED and returns.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::master::Master;
use super::procs::Proc;

/// The parser: every sample as `[name, {labels}, value]`, and every family's
/// name and type, as JSON; a parse error exits 1 with the message.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
out = {"samples": [], "families": {}}
for fam in text_string_to_metric_families(text):
    out["families"][fam.name] = fam.type
    for s in fam.samples:
        out["samples"].append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

fn python() -> PathBuf {
    let dir = std::env::var_os("EINHYRNINGSINS_SERVERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-servers"));
    dir.join("venv/bin/python")
}

/// Whether the parser is installed; if not, say so loudly.
pub fn parser_available(test: &str) -> bool {
    let ok = Proc::new(python())
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIPPED: {test}: prometheus_client is not installed in {} (run .ci/install-servers)",
            python().display()
        );
    }
    ok
}

/// Parsed metrics: samples by name.
pub struct Metrics {
    pub text: String,
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
    pub families: BTreeMap<String, String>,
}

impl Metrics {
    /// The value of the sample `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
    }
}

/// Parse exposition text with prometheus_client; panics with the text if it fails.
pub fn parse(text: &str) -> Metrics {
    let dir = super::tempdir::TempDir::new("prom");
    let file = dir.join("metrics.txt");
    std::fs::write(&file, text).expect("write scrape");
    let out = Proc::new(python())
        .args(["-c", PARSE])
        .stdin(std::fs::File::open(&file).expect("open scrape"))
        .output()
        .expect("run the prometheus parser");
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: Value = serde_json::from_str(&out).expect("parser output");
    let samples = v["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| {
            let labels = s[1]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect();
            (
                s[0].as_str().unwrap_or("").to_string(),
                labels,
                s[2].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    let families = v["families"]
        .as_object()
        .expect("families")
        .iter()
        .map(|(k, t)| (k.clone(), t.as_str().unwrap_or("").to_string()))
        .collect();
    Metrics {
        text: text.to_string(),
        samples,
        families,
    }
}

/// The address the master logged for its metrics listener.
pub fn metrics_addr(m: &Master) -> String {
    let log = m.wait_log("metrics: serving http://", Duration::from_secs(10));
    let line = log
        .lines()
        .rfind(|l| l.contains("metrics: serving http://"))
        .expect("the log line");
    let rest = line
        .split("metrics: serving http://")
        .nth(1)
        .expect("address in log line");
    rest.trim_end().trim_end_matches("/metrics").to_string()
}

/// A raw HTTP exchange over any stream: (status code, headers, body).
pub fn exchange<S: Read + Write>(mut s: S, request: &str) -> (u16, String, String) {
    s.write_all(request.as_bytes()).expect("send request");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

/// GET /metrics over TCP: the body of a 200.
pub fn scrape(addr: &str) -> String {
    let s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let (code, head, body) = exchange(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// Scrape and parse until `f` holds (what it returns), within `timeout`.
pub fn wait_metrics<T>(
    what: &str,
    addr: &str,
    timeout: Duration,
    mut f: impl FnMut(&Metrics) -> Option<T>,
) -> T {
    let mut last = String::new();
    let r = super::wait::poll_until(timeout, || {
        let m = parse(&scrape(addr));
        let r = f(&m);
        last = m.text;
        r
    });
    match r {
        Some(v) => v,
        None => panic!("timed out waiting for {what}; last scrape:\n{last}"),
    }
}
