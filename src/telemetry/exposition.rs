//! The two formats `/metrics` speaks, chosen by the scraper's `Accept` header: OpenMetrics
//! 1.0 (what Prometheus asks for first) and the classic Prometheus text format 0.0.4 (what a
//! scraper that does not ask, `curl`, or `promtool check metrics` reads).
//!
//! The registry renders OpenMetrics; the classic text is derived from it line by line: the
//! family names of counters and infos take their samples' suffix (`_total`, `_info`), an info
//! is a gauge, `unknown` is `untyped`, and `# UNIT` and `# EOF` are left out. Samples are the
//! same in both.

/// A format `/metrics` can answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The format an `Accept` header prefers: OpenMetrics when it is accepted with a quality
    /// at least that of the text format (`text/plain`, `text/*`, `*/*`), else the text format;
    /// no header at all means the text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "text/plain" | "text/*" | "*/*" => text = text.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// The classic text format of an OpenMetrics exposition (see the module docs).
pub fn to_classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // Family names renamed in the `# TYPE` line, so the `# HELP` line before it (OpenMetrics
    // puts HELP first) is renamed the same way.
    let mut pending_help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(help) = pending_help.take() {
                out.push_str(help);
                out.push('\n');
            }
            pending_help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (
                    format!("{}_total", name.trim_end_matches("_total")),
                    "counter",
                ),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            if let Some(help) = pending_help.take() {
                let text = help.split_once(' ').map_or("", |(_, text)| text);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(help) = pending_help.take() {
            out.push_str("# HELP ");
            out.push_str(help);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{to_classic_text, Format};

    const OPENMETRICS: &str = "\
# HELP natster_requests Requests handled.
# TYPE natster_requests counter
natster_requests_total{op=\"whoami\",code=\"200\"} 1
# HELP natster_build Build information.
# TYPE natster_build info
natster_build_info{version=\"0.1.0\"} 1
# HELP natster_request_duration_seconds Request latency.
# TYPE natster_request_duration_seconds histogram
# UNIT natster_request_duration_seconds seconds
natster_request_duration_seconds_sum 0.5
natster_request_duration_seconds_count 2
natster_request_duration_seconds_bucket{le=\"+Inf\"} 2
# HELP natster_projection_lag_seconds Lag.
# TYPE natster_projection_lag_seconds gauge
natster_projection_lag_seconds{projection=\"accounts\"} 0.0
# EOF
";

    #[test]
    fn classic_text_names_families_by_their_samples_and_drops_openmetrics_only_lines() {
        let text = to_classic_text(OPENMETRICS);
        let expected = "\
# HELP natster_requests_total Requests handled.
# TYPE natster_requests_total counter
natster_requests_total{op=\"whoami\",code=\"200\"} 1
# HELP natster_build_info Build information.
# TYPE natster_build_info gauge
natster_build_info{version=\"0.1.0\"} 1
# HELP natster_request_duration_seconds Request latency.
# TYPE natster_request_duration_seconds histogram
natster_request_duration_seconds_sum 0.5
natster_request_duration_seconds_count 2
natster_request_duration_seconds_bucket{le=\"+Inf\"} 2
# HELP natster_projection_lag_seconds Lag.
# TYPE natster_projection_lag_seconds gauge
natster_projection_lag_seconds{projection=\"accounts\"} 0.0
";
        assert_eq!(text, expected);
    }

    #[test]
    fn accept_headers_choose_the_format() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.5")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
    }
}
