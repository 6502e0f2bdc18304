//! The ops kit is usable as shipped: alert rules and the dashboard parse and reference only
//! metrics a running service exports; the nats-server configs load in a real server; the
//! systemd unit and Kubernetes manifests hold what operators rely on.

use anyhow::{Context, Result};
use natster_global::tooling::natsd::{find_binary, NatsServer, ServerSpec};
use natster_testkit::{call, http_get, http_get_with, Harness, TestWorld};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn ops(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ops").join(path)
}

/// A tool `ops/install-prometheus` puts in `.tools/bin` (`promtool`, `prometheus`).
fn tool(name: &str) -> Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/bin")
        .join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: run ops/install-prometheus (ops/test does)",
        path.display()
    );
    Ok(path)
}

/// Runs `program` with `input` on stdin; its exit status, stdout and stderr.
fn run_with_input(
    mut command: std::process::Command,
    input: &str,
) -> Result<(std::process::ExitStatus, String)> {
    use std::io::Write;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status, text))
}

/// Every `natster_…` metric name in a PromQL expression.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(at) = rest.find("natster_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        into.insert(name);
    }
}

fn rule_exprs() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(ops("prometheus/natster-global.rules.yaml"))?;
    let rules: serde_json::Value = serde_norway::from_str(&text)?;
    let mut exprs = Vec::new();
    for group in rules["groups"].as_array().context("groups")? {
        for rule in group["rules"].as_array().context("rules")? {
            assert!(rule["alert"].is_string(), "every rule alerts: {rule}");
            assert!(rule["annotations"]["summary"].is_string(), "{rule}");
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("warning" | "critical")
                ),
                "{rule}"
            );
            exprs.push(rule["expr"].as_str().context("expr")?.to_string());
        }
    }
    Ok(exprs)
}

fn dashboard_exprs() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(ops("grafana/natster-global.json"))?;
    let dashboard: serde_json::Value = serde_json::from_str(&text)?;
    assert_eq!(dashboard["uid"], "natster-global");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().context("expr")?.to_string());
        }
    }
    Ok(exprs)
}

#[tokio::test]
async fn alert_rules_and_dashboard_reference_only_exported_metrics() -> Result<()> {
    let rules = rule_exprs()?;
    let alerts = [
        "NatsterGlobalDown",
        "NatsterGlobalNatsDisconnected",
        "NatsterGlobalProjectionLagHigh",
        "NatsterGlobalProjectionStalled",
        "NatsterGlobalEventsParked",
        "NatsterGlobalErrorRatioHigh",
        "NatsterGlobalCodesFailing",
    ];
    let text = std::fs::read_to_string(ops("prometheus/natster-global.rules.yaml"))?;
    for alert in alerts {
        assert!(text.contains(&format!("alert: {alert}")), "{alert}");
    }
    let dashboard = dashboard_exprs()?;
    let mut referenced = BTreeSet::new();
    for expr in rules.iter().chain(&dashboard) {
        metric_names(expr, &mut referenced);
    }
    for wanted in [
        "natster_requests_total",
        "natster_request_duration_seconds_bucket",
        "natster_events_appended_total",
        "natster_projection_lag_events",
        "natster_projection_lag_seconds",
        "natster_catalogs_online",
        "natster_accounts_initialized",
        "natster_shares_active",
        "natster_nats_connected",
    ] {
        assert!(referenced.contains(wanted), "the dashboard shows {wanted}");
    }

    let h = Harness::start(&["alice"]).await?;
    let http = h.serve_http(0).await?;
    let alice = h.connect("alice").await?;
    assert_eq!(call(&alice, "whoami", "", None).await?.code, 404);
    let (status, exported) = http_get(http, "/metrics").await?;
    assert_eq!(status, 200);
    // Families are described (`# TYPE name kind`) even before their first sample; samples add
    // `_total` to counters, `_bucket`/`_count`/`_sum` to histograms, `_info` to infos.
    let families: BTreeSet<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let is_exported = |name: &str| {
        families.contains(name)
            || ["_total", "_bucket", "_count", "_sum", "_info"]
                .iter()
                .any(|suffix| {
                    name.strip_suffix(suffix)
                        .is_some_and(|family| families.contains(family))
                })
    };
    let missing: Vec<&String> = referenced.iter().filter(|n| !is_exported(n)).collect();
    assert!(
        missing.is_empty(),
        "referenced but not exported: {missing:?}"
    );
    h.stop().await
}

/// `/metrics` answers in the format the scraper asks for, and each passes its validator:
/// `promtool check metrics` for the classic text format, the reference OpenMetrics parser
/// (`prometheus_client.openmetrics.parser`, strict about `# EOF`, suffixes and types) for
/// OpenMetrics.
#[tokio::test]
async fn metrics_are_served_as_text_or_openmetrics_by_accept_and_both_validate() -> Result<()> {
    let h = Harness::start(&["alice"]).await?;
    let http = h.serve_http(0).await?;
    let alice = h.connect("alice").await?;
    // Samples in every family kind: counters, histograms, gauges, the build info.
    assert_eq!(call(&alice, "whoami", "", None).await?.code, 404);
    assert_eq!(call(&alice, "events.put", "{", None).await?.code, 400);

    let text = http_get_with(http, "/metrics", &[]).await?;
    assert_eq!(text.status, 200);
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(!text.body.contains("# EOF"), "{}", text.body);
    assert!(
        text.body.contains("# TYPE natster_build_info gauge"),
        "{}",
        text.body
    );
    let mut promtool = std::process::Command::new(tool("promtool")?);
    promtool.args(["check", "metrics"]);
    let (status, report) = run_with_input(promtool, &text.body)?;
    assert!(
        status.success(),
        "promtool check metrics: {report}\n{}",
        text.body
    );

    // What Prometheus 2.x sends.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let open = http_get_with(http, "/metrics", &[("Accept", accept)]).await?;
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    let mut parser = std::process::Command::new("python3");
    parser
        .env("PYTHONPATH", Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/python"))
        .args([
            "-c",
            "import sys\n\
             from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
             families = list(parse(sys.stdin.read()))\n\
             print(len(families), 'families')",
        ]);
    let (status, report) = run_with_input(parser, &open.body)?;
    assert!(
        status.success(),
        "OpenMetrics parser: {report}\n{}",
        open.body
    );
    let families: usize = report
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("family count")?;
    let text_families = text
        .body
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .count();
    assert_eq!(families, text_families, "the same families in both formats");
    h.stop().await
}

/// The operator block of a bootstrapped world's server config (operator, system account,
/// preloaded accounts), as `operator.conf` holds it in production.
fn operator_conf(world_conf: &str) -> String {
    world_conf
        .lines()
        .skip_while(|l| !l.starts_with("operator:"))
        .take_while(|l| !l.starts_with("jetstream"))
        .filter(|l| !l.starts_with("resolver: MEMORY"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn nats_server_configs_load_in_a_real_server() -> Result<()> {
    let tw = TestWorld::start().await?;
    let dir = tempfile::tempdir()?;
    let world_conf = std::fs::read_to_string(tw.world.server_config_path())?;
    std::fs::write(dir.path().join("operator.conf"), operator_conf(&world_conf))?;
    let state = dir.path().join("state");
    let binary = find_binary()?;
    for name in [
        "single.conf",
        "cluster-node-1.conf",
        "cluster-node-2.conf",
        "cluster-node-3.conf",
    ] {
        let text = std::fs::read_to_string(ops(&format!("nats-server/{name}")))?
            .replace("/var/lib/nats", &state.display().to_string())
            // Other servers on this machine may hold the monitoring port.
            .replace("http: 127.0.0.1:8222", "");
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        let checked = std::process::Command::new(&binary)
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()?;
        assert!(
            checked.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    // The single node runs for real, and the service's account works on it.
    let server = NatsServer::start(ServerSpec {
        config: Some(dir.path().join("single.conf")),
        ..Default::default()
    })
    .await?;
    let client = natster_testkit::connect_creds(
        &server.url(),
        &tw.world
            .creds_path(natster_global::tooling::bootstrap::NATSTER),
        "ops-kit",
    )
    .await?;
    let account = async_nats::jetstream::new(client).query_account().await?;
    assert_ne!(
        account.limits.max_streams,
        Some(0),
        "JetStream is enabled for the service"
    );
    Ok(())
}

#[test]
fn systemd_unit_and_kubernetes_manifests_hold_what_operators_rely_on() -> Result<()> {
    let unit = std::fs::read_to_string(ops("systemd/natster-global.service"))?;
    for line in [
        "ExecStart=/usr/local/bin/natster-global serve",
        "EnvironmentFile=/etc/natster-global/natster-global.env",
        "KillSignal=SIGTERM",
        "RestartPreventExitStatus=2",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit has {line}");
    }
    let env = std::fs::read_to_string(ops("systemd/natster-global.env"))?;
    for variable in ["NATS_URL=", "NATS_CREDS=", "NATSTER_HTTP_ADDR="] {
        assert!(env.contains(variable), "{variable}");
    }

    let text = std::fs::read_to_string(ops("k8s/natster-global.yaml"))?;
    let documents: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&text)
        .map(serde_json::Value::deserialize)
        .collect::<Result<_, _>>()?;
    let kind = |k: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == k)
            .with_context(|| format!("a {k}"))
    };
    let deployment = kind("Deployment")?;
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env: Vec<&str> = container["env"]
        .as_array()
        .context("env")?
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(env.contains(&"NATS_CREDS") && env.contains(&"NATSTER_HTTP_ADDR"));
    let volume = &deployment["spec"]["template"]["spec"]["volumes"][0];
    assert_eq!(volume["secret"]["secretName"], "natster-global-creds");
    let monitor = kind("ServiceMonitor")?;
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    Ok(())
}

use serde::Deserialize;
