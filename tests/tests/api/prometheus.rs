//! The dashboards and alerts are true: a real Prometheus (Debian's package)
//! scrapes a Sovra that has run a partner journey, and every dashboard panel
//! query and every alert expression (without its threshold) returns data.

use std::{path::PathBuf, process::Stdio, time::Duration};

use crate::{helpers::*, journey::journey};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result vector of an instant query, or why there is none.
async fn query(prom: &str, q: &str) -> Result<Vec<serde_json::Value>, String> {
    let body = http_get(prom, &format!("/api/v1/query?query={}", encode(q)))
        .await
        .ok_or("Prometheus did not answer")?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(body);
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Every `"expr"` in the dashboards.
fn panel_queries() -> Vec<(String, String)> {
    let dir = root().join("deploy/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let d: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for p in d["panels"].as_array().unwrap() {
                for t in p["targets"].as_array().unwrap() {
                    out.push((
                        format!("{} / {}", d["title"], p["title"]),
                        t["expr"].as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    out
}

/// Every alert expression without its comparisons against numbers (what the
/// alert measures: a firing-or-not expression is empty while all is well).
fn alert_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("deploy/dashboards/alerts.yaml")).unwrap();
    let mut out = Vec::new();
    let mut name = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(n) = t.strip_prefix("- alert: ") {
            name = n.to_owned();
        } else if let Some(e) = t.strip_prefix("expr:") {
            let mut expr = e.trim().trim_start_matches(">-").trim().to_owned();
            while let Some(next) = lines.peek() {
                let n = next.trim();
                if n.is_empty() || n.starts_with('#') || n.contains(": ") || n.ends_with(':') {
                    break;
                }
                expr.push(' ');
                expr.push_str(n);
                lines.next();
            }
            out.push((name.clone(), strip_thresholds(&expr)));
        }
    }
    out
}

fn strip_thresholds(expr: &str) -> String {
    let mut out = expr.to_owned();
    for op in [" >= ", " <= ", " == ", " != ", " > ", " < "] {
        while let Some(i) = out.find(op) {
            let rest = &out[i + op.len()..];
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            if num_len == 0 {
                break;
            }
            out.replace_range(i..i + op.len() + num_len, "");
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_and_alert_has_data_in_a_real_prometheus() {
    let Ok(prom_bin) = which("prometheus") else {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("prometheus is required under CI=true (.ci/run installs Debian's package)");
        }
        eprintln!("\n!!! SKIPPED: no prometheus binary (apt-get install prometheus)\n");
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await;
    journey(&app).await;
    let target = app.admin.expect("the test app serves /metrics").to_string();
    assert!(http_get(&target, "/metrics")
        .await
        .unwrap()
        .contains("rpc_server_requests_total"));

    let dir = TempDir::new("prometheus");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: sovra\n    static_configs:\n      - targets: [\"{target}\"]\n",
            root().join("deploy/dashboards/alerts.yaml").display()
        ),
    )
    .unwrap();
    let prometheus = std::process::Command::new(prom_bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _prometheus = KillOnDrop(prometheus);
    let prom = format!("127.0.0.1:{port}");

    // Up, scraped a few times.
    let mut up = false;
    for _ in 0..150 {
        if let Ok(r) = query(&prom, "up{job=\"sovra\"} == 1").await {
            if !r.is_empty() {
                up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(up, "Prometheus never scraped Sovra at {target}");
    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut queries = panel_queries();
    assert!(
        queries.len() >= 25,
        "the dashboards hold {} queries",
        queries.len()
    );
    let alerts = alert_queries();
    assert_eq!(alerts.len(), 5, "{alerts:?}");
    queries.extend(alerts);
    let mut missing = Vec::new();
    for (what, q) in &queries {
        let mut result = query(&prom, q).await;
        // A rate needs two scrapes after the journey; give it a moment.
        for _ in 0..20 {
            if matches!(&result, Ok(r) if !r.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            result = query(&prom, q).await;
        }
        match result {
            Ok(r) if !r.is_empty() => {}
            other => missing.push(format!("{what}: {q} → {other:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "queries without data:\n{}",
        missing.join("\n")
    );
}

fn which(bin: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(bin))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
