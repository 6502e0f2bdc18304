//! `natster-global projections status|rebuild|parked|replay-parked`, over the projection
//! registry.

use super::args::{ProjectionsAction, ProjectionsArgs};
use super::connect::ConnectError;
use super::output::outln;
use super::settings::SettingsError;
use crate::projections::parking::{self, ParkedEvent, RecordLimit};
use crate::projections::rebuild::{rebuild, RebuildReport, RebuildTarget};
use crate::projections::registry::{ProjectionName, SourceStream};
use crate::projections::status::{status, ProjectionStatus};
use crate::projections::{accounts::Accounts, catalogs::Catalogs, oauth::OAuthIndex, Projection};
use crate::store::{
    StoreError, EVENTS_STREAM, ONLINE_STREAM, PROJ_PARKED_BUCKET, PROJ_STATS_BUCKET,
};
use async_nats::jetstream;

/// Why `projections` failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionsError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the event stream (has the service run here yet?): {0}")]
    NoEventStream(jetstream::context::GetStreamError),
    /// The creds are of an account without JetStream: not the service's.
    #[error("these credentials' account has no JetStream: projections needs the service account's creds (NATSTER, the account `serve` runs as)")]
    NotServiceAccount,
    #[error("{resource}: {source}")]
    Resource {
        resource: &'static str,
        source: jetstream::context::KeyValueError,
    },
    #[error("unknown projection {0:?}; one of {1:?}")]
    Unknown(String, Vec<&'static str>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl ProjectionsError {
    /// Whether the command line itself is wrong (exit code 2), not the run.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ProjectionsError::Settings(_) | ProjectionsError::Unknown(..)
        )
    }
}

/// Runs the subcommand.
pub async fn run(args: &ProjectionsArgs) -> Result<(), ProjectionsError> {
    // Everything the command line names is checked before connecting.
    let config = args
        .action
        .connect()
        .nats_config("natster-global-projections")?;
    match &args.action {
        ProjectionsAction::Rebuild { projection, .. }
        | ProjectionsAction::ReplayParked { projection, .. } => {
            chosen(projection.as_deref())?;
        }
        ProjectionsAction::Parked {
            projection: Some(name),
            ..
        } => {
            ProjectionName::parse(name).ok_or_else(|| unknown(name, ProjectionName::ALL))?;
        }
        _ => {}
    }
    let client = config.connect_once().await?;
    let limit = RecordLimit::for_max_payload(client.server_info().max_payload);
    let js = jetstream::new(client);
    let events = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|error| match error.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(inner)
                if inner.error_code()
                    == jetstream::ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT =>
            {
                ProjectionsError::NotServiceAccount
            }
            _ => ProjectionsError::NoEventStream(error),
        })?;
    let stats = bucket(&js, PROJ_STATS_BUCKET).await?;
    let parts = Parts {
        js: &js,
        events: &events,
        stats: &stats,
        limit,
    };
    match &args.action {
        ProjectionsAction::Status { json, .. } => print_status(&js, &events, &stats, *json).await,
        ProjectionsAction::Rebuild { projection, .. } => {
            for name in chosen(projection.as_deref())? {
                print_report(&rebuild_one(&parts, name).await?)?;
            }
            Ok(())
        }
        ProjectionsAction::Parked {
            projection, json, ..
        } => {
            let parked = parking::list(&parked_bucket(&js).await?, projection.as_deref()).await?;
            print_parked(&parked, *json)
        }
        ProjectionsAction::ReplayParked {
            projection, seq, ..
        } => {
            let wanted = chosen(projection.as_deref())?;
            let parked = parking::list(&parked_bucket(&js).await?, None).await?;
            let names: Vec<ProjectionName> = wanted
                .into_iter()
                .filter(|name| {
                    parked.iter().any(|event| {
                        event.projection == name.as_str() && seq.is_none_or(|s| event.seq == s)
                    })
                })
                .collect();
            if names.is_empty() {
                outln!("no parked event matches; nothing to replay")?;
            }
            for name in names {
                let report = rebuild_one(&parts, name).await?;
                print_report(&report)?;
            }
            Ok(())
        }
    }
}

/// What every action works on.
struct Parts<'a> {
    js: &'a jetstream::Context,
    events: &'a jetstream::stream::Stream,
    stats: &'a jetstream::kv::Store,
    limit: RecordLimit,
}

async fn rebuild_one(
    parts: &Parts<'_>,
    name: ProjectionName,
) -> Result<RebuildReport, ProjectionsError> {
    match name {
        ProjectionName::Accounts => with_bar::<Accounts>(parts).await,
        ProjectionName::Catalogs => with_bar::<Catalogs>(parts).await,
        ProjectionName::OAuth => with_bar::<OAuthIndex>(parts).await,
        ProjectionName::Online => unreachable!("not rebuildable"),
    }
}

fn print_report(report: &RebuildReport) -> std::io::Result<()> {
    outln!(
        "{}: replayed {} events up to sequence {}; {} records written, {} unchanged, {} deleted; {} parked, {} parked before now applied",
        report.projection,
        report.events,
        report.last_seq,
        report.written,
        report.unchanged,
        report.deleted,
        report.parked,
        report.unparked
    )
}

fn print_parked(parked: &[ParkedEvent], json: bool) -> Result<(), ProjectionsError> {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(parked).expect("parked events serialize")
        )?;
        return Ok(());
    }
    if parked.is_empty() {
        outln!("no parked events")?;
        return Ok(());
    }
    outln!(
        "{:<10} {:>12} {:<24} {:<60} error",
        "projection",
        "seq",
        "parked at",
        "subject"
    )?;
    for event in parked {
        let at = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(event.parked_unix_ms),
        );
        outln!(
            "{:<10} {:>12} {:<24} {:<60} {}",
            event.projection,
            event.seq,
            at,
            event.subject,
            event.error
        )?;
    }
    Ok(())
}

async fn parked_bucket(js: &jetstream::Context) -> Result<jetstream::kv::Store, ProjectionsError> {
    bucket(js, PROJ_PARKED_BUCKET).await
}

fn unknown(name: &str, among: impl IntoIterator<Item = ProjectionName>) -> ProjectionsError {
    ProjectionsError::Unknown(
        name.to_string(),
        among.into_iter().map(ProjectionName::as_str).collect(),
    )
}

/// The projections `--projection` names (every rebuildable one when none).
fn chosen(projection: Option<&str>) -> Result<Vec<ProjectionName>, ProjectionsError> {
    let rebuildable: Vec<ProjectionName> = ProjectionName::ALL
        .into_iter()
        .filter(|p| p.rebuildable())
        .collect();
    match projection {
        None => Ok(rebuildable),
        Some(name) => match ProjectionName::parse(name).filter(|p| p.rebuildable()) {
            Some(projection) => Ok(vec![projection]),
            None => Err(unknown(name, rebuildable)),
        },
    }
}

async fn bucket(
    js: &jetstream::Context,
    name: &'static str,
) -> Result<jetstream::kv::Store, ProjectionsError> {
    js.get_key_value(name)
        .await
        .map_err(|source| ProjectionsError::Resource {
            resource: name,
            source,
        })
}

async fn print_status(
    js: &jetstream::Context,
    events: &jetstream::stream::Stream,
    stats: &jetstream::kv::Store,
    json: bool,
) -> Result<(), ProjectionsError> {
    let mut rows: Vec<ProjectionStatus> = Vec::new();
    for name in ProjectionName::ALL {
        let stream = match name.source() {
            SourceStream::Events => events.clone(),
            // The online projection applies the heartbeat stream (absent before a service of
            // this version has run).
            SourceStream::Online => match js.get_stream(ONLINE_STREAM).await {
                Ok(online) => online,
                Err(_) => continue,
            },
        };
        rows.push(status(&stream, stats, name.as_str()).await?);
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("status serializes")
        )?;
        return Ok(());
    }
    outln!(
        "{:<10} {:<15} {:>12} {:>12} {:>10}  applied by",
        "projection",
        "stream",
        "applied_seq",
        "stream_last",
        "lag"
    )?;
    for row in rows {
        let holder = if row.holder.is_empty() {
            "nobody (no instance running)".to_string()
        } else {
            row.holder
        };
        outln!(
            "{:<10} {:<15} {:>12} {:>12} {:>10}  {holder}",
            row.projection,
            row.stream,
            row.applied_seq,
            row.stream_last_seq,
            row.lag_events,
        )?;
    }
    Ok(())
}

async fn with_bar<P: Projection>(parts: &Parts<'_>) -> Result<RebuildReport, ProjectionsError> {
    let records = bucket(parts.js, P::BUCKET).await?;
    let parked = parked_bucket(parts.js).await?;
    let bar = indicatif::ProgressBar::new(0).with_message(P::NAME);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} events ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let target = RebuildTarget {
        events: parts.events,
        records: &records,
        stats: parts.stats,
        parked: &parked,
        limit: parts.limit,
    };
    let report = rebuild::<P>(target, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    Ok(report)
}
