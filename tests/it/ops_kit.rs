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

/// A tool `ops/install-kit-tools` puts in `.tools/bin` (`promtool`, `prometheus`).
fn tool(name: &str) -> Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/bin")
        .join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: run ops/install-kit-tools (ops/test does)",
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

#[tokio::test]
async fn nats_server_configs_load_in_a_real_server() -> Result<()> {
    let tw = TestWorld::start().await?;
    let dir = tempfile::tempdir()?;
    let world_conf = std::fs::read_to_string(tw.world.server_config_path())?;
    std::fs::write(
        dir.path().join("operator.conf"),
        natster_testkit::operator_block(&world_conf),
    )?;
    let state = dir.path().join("state");
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls)?;
    natster_testkit::TestCertificates::make(&tls)?;
    let binary = find_binary()?;
    for name in [
        "single.conf",
        "cluster-node-1.conf",
        "cluster-node-2.conf",
        "cluster-node-3.conf",
    ] {
        let shipped = std::fs::read_to_string(ops(&format!("nats-server/{name}")))?;
        // Secure by default: TLS for clients, and for routes mutual TLS (route authorization).
        assert!(
            shipped.contains("tls {") && shipped.contains("ca_file"),
            "{name}: client TLS"
        );
        if shipped.contains("cluster {") {
            let cluster = &shipped[shipped.find("cluster {").context("cluster")?..];
            assert!(
                cluster.contains("tls {") && cluster.contains("verify: true"),
                "{name}: route mTLS"
            );
        }
        let text = shipped
            .replace("/var/lib/nats", &state.display().to_string())
            .replace("/etc/nats/tls", &tls.display().to_string())
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
    // The single node runs for real: the service's account connects over TLS verified against
    // the CA and works; a client that cannot verify the certificate is refused.
    let server = NatsServer::start(ServerSpec {
        config: Some(dir.path().join("single.conf")),
        ..Default::default()
    })
    .await?;
    let creds = tw
        .world
        .creds_path(natster_global::tooling::bootstrap::NATSTER);
    let client = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await?
        .add_root_certificates(tls.join("ca.pem"))
        .require_tls(true)
        .connect(server.url())
        .await?;
    let account = async_nats::jetstream::new(client).query_account().await?;
    assert_ne!(
        account.limits.max_streams,
        Some(0),
        "JetStream is enabled for the service"
    );
    let unverified = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await?
        .max_reconnects(Some(1))
        .connect(server.url())
        .await;
    assert!(unverified.is_err(), "a client without the CA is refused");
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

/// The pinned rules pass `promtool check rules`, and `promtool test rules` runs the unit tests
/// of `natster-global.rules.test.yaml`, which hold, for every alert, a case where it fires
/// (with its labels and rendered annotations) and one where it stays silent. The job the rules
/// select is the one both shipped scrape set-ups produce.
#[test]
fn alert_rules_pass_promtool_and_every_alert_has_firing_and_silent_unit_tests() -> Result<()> {
    let promtool = tool("promtool")?;
    let rules = ops("prometheus/natster-global.rules.yaml");
    let tests = ops("prometheus/natster-global.rules.test.yaml");
    for args in [
        vec!["check".into(), "rules".into(), rules.clone()],
        vec!["test".into(), "rules".into(), tests.clone()],
    ] {
        let output = std::process::Command::new(&promtool).args(&args).output()?;
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let rules: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(&rules)?)?;
    let unit: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(&tests)?)?;
    let cases: Vec<&serde_json::Value> = unit["tests"]
        .as_array()
        .context("tests")?
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    for rule in rules["groups"][0]["rules"].as_array().context("rules")? {
        let name = rule["alert"].as_str().context("alert")?;
        let of_rule = |fires: bool| {
            cases.iter().any(|c| {
                c["alertname"] == name
                    && c["exp_alerts"]
                        .as_array()
                        .is_some_and(|a| a.is_empty() != fires)
            })
        };
        assert!(of_rule(true), "{name} has no case where it fires");
        assert!(of_rule(false), "{name} has no case where it stays silent");
        if let Some(job) = rule["expr"].as_str().and_then(|e| e.split("job=\"").nth(1)) {
            assert!(job.starts_with("natster-global\""), "{name} selects {job}");
        }
    }
    // The static job, and the ServiceMonitor's job (the Service's app.kubernetes.io/name).
    let scrape: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(ops("prometheus/scrape.yaml"))?)?;
    assert_eq!(scrape["scrape_configs"][0]["job_name"], "natster-global");
    let text = std::fs::read_to_string(ops("k8s/natster-global.yaml"))?;
    let documents: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&text)
        .map(serde_json::Value::deserialize)
        .collect::<Result<_, _>>()?;
    let monitor = documents
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .context("ServiceMonitor")?;
    let job_label = monitor["spec"]["jobLabel"].as_str().context("jobLabel")?;
    let service = documents
        .iter()
        .find(|d| d["kind"] == "Service")
        .context("Service")?;
    assert_eq!(service["metadata"]["labels"][job_label], "natster-global");
    Ok(())
}

/// What an alert expression is made of, to evaluate each part: the operands of `or`, `and` and
/// `unless`, without their threshold comparison, and `absent(x)` as `x`.
fn alert_operands(expr: &str) -> Vec<String> {
    let mut parts = vec![expr.to_string()];
    for joiner in [" or ", " and ", " unless "] {
        parts = parts
            .iter()
            .flat_map(|p| p.split(joiner).map(str::to_string).collect::<Vec<_>>())
            .collect();
    }
    parts
        .into_iter()
        .map(|part| {
            let part = [" == ", " != ", " >= ", " <= ", " > ", " < "]
                .iter()
                .filter_map(|op| part.rfind(op))
                .max()
                .map_or(part.as_str(), |at| &part[..at])
                .trim()
                .to_string();
            match part.strip_prefix("absent(") {
                Some(inner) => inner.strip_suffix(')').unwrap_or(inner).to_string(),
                None => part,
            }
        })
        .collect()
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus that exits with the test.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every dashboard query, and every part of every alert expression, evaluated by a real
/// Prometheus (2.42, pinned) scraping a running service, returns series: a query that names a
/// metric, label or value the service does not export returns none.
#[tokio::test]
async fn a_real_prometheus_scraping_the_service_gets_series_for_every_query() -> Result<()> {
    use natster_testkit::{init_data, put_event, seq_of};
    // Without an xkey, so the one-time-code ops answer 503 (series for the codes alert).
    let mut h = Harness::without_instances(&["alice", "bob"]).await?;
    h.add_instance(|c| c.sealer = None).await?;
    let http = h.serve_http(0).await?;
    let (alice, web) = (
        h.connect("alice").await?,
        h.connect(natster_global::tooling::bootstrap::WEB).await?,
    );
    let (a, b) = (h.key("alice"), h.key("bob"));
    assert_eq!(call(&alice, "whoami", "", None).await?.code, 404);
    seq_of(&put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?)?;
    let share = serde_json::json!({"catalog": "films", "target": b, "event_type": "catalog_shared", "data": null});
    seq_of(&call(&alice, "events.put", serde_json::to_vec(&share)?, None).await?)?;
    let heartbeat = serde_json::json!({"catalog": "films", "account_key": a, "revision": 1});
    assert_eq!(
        call(
            &alice,
            "heartbeats.put",
            serde_json::to_vec(&heartbeat)?,
            None
        )
        .await?
        .code,
        200
    );
    assert_eq!(call(&alice, "events.put", "{", None).await?.code, 400);
    assert_eq!(
        call(&alice, "whoami", "", Some(u64::MAX / 4)).await?.code,
        503
    );
    let context = serde_json::json!({"team_id": "t", "system_id": "s", "account_id": "a",
        "account_name": "alice", "account_public_key": a, "access_token": "token-0123456789",
        "user_id": "u", "creds": "x"});
    assert_eq!(
        call(&alice, "otc.generate", serde_json::to_vec(&context)?, None)
            .await?
            .code,
        503
    );
    let claim = serde_json::json!({"code": "nope", "oauth_id": "u"});
    assert_ne!(
        call(&web, "otc.claim", serde_json::to_vec(&claim)?, None)
            .await?
            .code,
        200
    );

    let dir = tempfile::tempdir()?;
    let port = natster_testkit::port()?;
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  - job_name: natster-global\n    static_configs: [{{targets: [\"{http}\"]}}]\n",
            rules = ops("prometheus/natster-global.rules.yaml").display().to_string(),
        ),
    )?;
    let _prometheus = Prometheus(
        std::process::Command::new(tool("prometheus")?)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let query = |expr: String| async move {
        let (status, body) =
            http_get(api, &format!("/api/v1/query?query={}", url_encode(&expr))).await?;
        anyhow::ensure!(status == 200, "{expr}: {status} {body}");
        let reply: serde_json::Value = serde_json::from_str(&body)?;
        Ok::<usize, anyhow::Error>(reply["data"]["result"].as_array().map_or(0, Vec::len))
    };
    // Ready, and five scrapes in, so rates over any range have their two samples.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let scraped = match http_get(api, "/-/ready").await {
            Ok((200, _)) => query("count_over_time(up{job=\"natster-global\"}[1m]) >= 5".into())
                .await
                .unwrap_or(0),
            _ => 0,
        };
        if scraped > 0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never scraped the service 5 times"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut empty = Vec::new();
    let dashboard = dashboard_exprs()?.into_iter().map(|e| {
        e.replace("$__rate_interval", "1m")
            .replace("$__range", "1m")
    });
    let rules = rule_exprs()?.into_iter().flat_map(|e| alert_operands(&e));
    for expr in dashboard.chain(rules) {
        if query(expr.clone()).await? == 0 {
            empty.push(expr);
        }
    }
    assert!(empty.is_empty(), "queries without series: {empty:#?}");
    h.stop().await
}

/// A tool `ops/install-kit-tools` puts in `.tools/kit/bin`, run with its Python packages.
fn kit_tool(name: &str) -> Result<std::process::Command> {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/kit");
    let path = kit.join("bin").join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: run ops/install-kit-tools (ops/test does)",
        path.display()
    );
    let mut command = std::process::Command::new(path);
    command.env("PYTHONPATH", &kit);
    Ok(command)
}

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The kit as the tools operators use see it: the manifests pass Kubernetes schema validation
/// (strict: no unknown fields), the Dockerfile passes hadolint and builds the image the
/// manifest runs, as the user it names; every YAML and JSON file of `ops/` parses.
#[test]
fn the_kit_passes_kubernetes_validate_hadolint_and_parses() -> Result<()> {
    let manifest = ops("k8s/natster-global.yaml");
    let validated = kit_tool("kubernetes-validate")?
        .arg("--strict")
        .arg(&manifest)
        .output()?;
    let report = output_text(&validated);
    assert!(validated.status.success(), "kubernetes-validate: {report}");
    for resource in [
        "deployment/natster-global",
        "configmap/natster-global",
        "service/natster-global-metrics",
    ] {
        assert!(
            report.contains(&format!("passed for resource {resource}")),
            "{resource}: {report}"
        );
    }

    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    let linted = kit_tool("hadolint")?.arg(&dockerfile).output()?;
    assert!(
        linted.status.success(),
        "hadolint: {}",
        output_text(&linted)
    );
    let docker = std::fs::read_to_string(&dockerfile)?;
    let text = std::fs::read_to_string(&manifest)?;
    let documents: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&text)
        .map(serde_json::Value::deserialize)
        .collect::<Result<_, _>>()?;
    let pod = &documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("Deployment")?["spec"]["template"]["spec"];
    let image = pod["containers"][0]["image"].as_str().context("image")?;
    assert!(
        docker.contains(&format!("docker build -t {image} .")),
        "the Dockerfile builds {image}"
    );
    let user = pod["securityContext"]["runAsUser"]
        .as_u64()
        .context("runAsUser")?;
    assert!(
        docker.contains(&format!("USER {user}:{user}")),
        "the image runs as {user}"
    );

    let mut checked = 0;
    let mut pending = vec![ops("")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let text = || std::fs::read_to_string(&path);
            match path.extension().and_then(|e| e.to_str()) {
                _ if path.is_dir() => pending.push(path.clone()),
                Some("yaml" | "yml") => {
                    for document in serde_norway::Deserializer::from_str(&text()?) {
                        serde_json::Value::deserialize(document)
                            .with_context(|| path.display().to_string())?;
                    }
                    checked += 1;
                }
                Some("json") => {
                    serde_json::from_str::<serde_json::Value>(&text()?)
                        .with_context(|| path.display().to_string())?;
                    checked += 1;
                }
                _ => {}
            }
        }
    }
    assert!(checked >= 5, "parsed {checked} YAML/JSON files");
    Ok(())
}

/// `ops/install --root` puts binary, unit, system user, configuration directory and an example
/// environment file in place (keeping an edited one), and the installed unit passes
/// `systemd-analyze verify`.
#[test]
fn ops_install_sets_up_a_fresh_host_and_the_unit_verifies() -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = tempfile::tempdir()?;
    let install = || -> Result<()> {
        let output = std::process::Command::new(ops("install"))
            .arg("--root")
            .arg(root.path())
            .arg(env!("CARGO_BIN_EXE_natster-global"))
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "ops/install: {}",
            output_text(&output)
        );
        Ok(())
    };
    install()?;
    let at = |path: &str| root.path().join(path.trim_start_matches('/'));
    let binary = std::fs::metadata(at("/usr/local/bin/natster-global"))?;
    assert_eq!(binary.permissions().mode() & 0o777, 0o755);
    let group = std::fs::read_to_string(at("/etc/group"))?;
    let gid: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("natster:x:"))
        .and_then(|rest| rest.split(':').next())
        .context("a natster group")?
        .parse()?;
    assert!(
        std::fs::read_to_string(at("/etc/passwd"))?.contains("natster:x:"),
        "a natster user"
    );
    let config = std::fs::metadata(at("/etc/natster-global"))?;
    assert_eq!(
        (
            config.permissions().mode() & 0o777,
            config.uid(),
            config.gid()
        ),
        (0o750, 0, gid)
    );
    let env = at("/etc/natster-global/natster-global.env");
    let meta = std::fs::metadata(&env)?;
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.gid()),
        (0o640, gid)
    );
    assert!(std::fs::read_to_string(&env)?.contains("NATS_CREDS="));
    std::fs::write(&env, "NATS_URL=tls://edited:4222\n")?;
    install()?;
    assert_eq!(
        std::fs::read_to_string(&env)?,
        "NATS_URL=tls://edited:4222\n",
        "an edited file is kept"
    );

    // `verify` checks that ExecStart exists on this host: point it at the installed binary.
    let unit = std::fs::read_to_string(at("/etc/systemd/system/natster-global.service"))?;
    let checked = root.path().join("natster-global.service");
    std::fs::write(
        &checked,
        unit.replace(
            "ExecStart=/usr/local/bin/natster-global",
            &format!(
                "ExecStart={}",
                at("/usr/local/bin/natster-global").display()
            ),
        ),
    )?;
    let verified = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&checked)
        .output()?;
    assert!(
        verified.status.success(),
        "systemd-analyze verify: {}",
        output_text(&verified)
    );
    assert!(
        output_text(&verified).trim().is_empty(),
        "{}",
        output_text(&verified)
    );
    Ok(())
}
