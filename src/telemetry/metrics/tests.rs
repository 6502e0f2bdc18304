use super::*;

#[test]
fn names_follow_prometheus_rules() {
    let (metrics, registry) = Metrics::new(&["accounts"]);
    metrics.observe_request("whoami", 200, std::time::Duration::from_micros(300));
    metrics
        .events_appended
        .get_or_create(&EventTypeLabels {
            r#type: "catalog_shared",
        })
        .inc();
    let text = encode(&registry);
    assert!(text.contains("natster_build_info{"), "{text}");
    assert!(text.contains("natster_requests_total{op=\"whoami\",code=\"200\"} 1"));
    assert!(text.contains(
        "natster_request_duration_seconds_bucket{le=\"0.0005\",op=\"whoami\",code=\"200\"} 1"
    ));
    assert!(text.contains(
        "natster_request_duration_seconds_bucket{le=\"0.00025\",op=\"whoami\",code=\"200\"} 0"
    ));
    assert!(text.contains("natster_events_appended_total{type=\"catalog_shared\"} 1"));
    assert!(
        text.contains("# TYPE natster_projection_lag_seconds gauge"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
}
