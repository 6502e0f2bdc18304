//! `natster-global projections status|rebuild`, over the projection registry.

use super::args::{ProjectionsAction, ProjectionsArgs};
use super::connect::ConnectError;
use super::settings::SettingsError;
use crate::projections::rebuild::{rebuild, RebuildReport};
use crate::projections::registry::{ProjectionName, SourceStream};
use crate::projections::status::{status, ProjectionStatus};
use crate::projections::{accounts::Accounts, catalogs::Catalogs, oauth::OAuthIndex, Projection};
use crate::store::{StoreError, EVENTS_STREAM, ONLINE_STREAM, PROJ_STATS_BUCKET};
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
    #[error("{resource}: {source}")]
    Resource {
        resource: &'static str,
        source: jetstream::context::KeyValueError,
    },
    #[error("unknown projection {0:?}; one of {1:?}")]
    Unknown(String, Vec<&'static str>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs the subcommand.
pub async fn run(args: &ProjectionsArgs) -> Result<(), ProjectionsError> {
    let connect = match &args.action {
        ProjectionsAction::Status { connect, .. } | ProjectionsAction::Rebuild { connect, .. } => {
            connect
        }
    };
    let client = connect
        .nats_config("natster-global-projections")?
        .connect_once()
        .await?;
    let js = jetstream::new(client);
    let events = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(ProjectionsError::NoEventStream)?;
    let stats = bucket(&js, PROJ_STATS_BUCKET).await?;
    match &args.action {
        ProjectionsAction::Status { json, .. } => print_status(&js, &events, &stats, *json).await,
        ProjectionsAction::Rebuild { projection, .. } => {
            for name in chosen(projection.as_deref())? {
                let report = match name {
                    ProjectionName::Accounts => with_bar::<Accounts>(&js, &events, &stats).await?,
                    ProjectionName::Catalogs => with_bar::<Catalogs>(&js, &events, &stats).await?,
                    ProjectionName::OAuth => with_bar::<OAuthIndex>(&js, &events, &stats).await?,
                    ProjectionName::Online => unreachable!("not rebuildable"),
                };
                println!(
                    "{}: replayed {} events up to sequence {}; {} records written, {} unchanged, {} deleted",
                    report.projection, report.events, report.last_seq, report.written, report.unchanged, report.deleted
                );
            }
            Ok(())
        }
    }
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
            None => Err(ProjectionsError::Unknown(
                name.to_string(),
                rebuildable.iter().map(|p| p.as_str()).collect(),
            )),
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
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("status serializes")
        );
        return Ok(());
    }
    println!(
        "{:<10} {:<15} {:>12} {:>12} {:>10}  applied by",
        "projection", "stream", "applied_seq", "stream_last", "lag"
    );
    for row in rows {
        let holder = if row.holder.is_empty() {
            "nobody (no instance running)".to_string()
        } else {
            row.holder
        };
        println!(
            "{:<10} {:<15} {:>12} {:>12} {:>10}  {holder}",
            row.projection, row.stream, row.applied_seq, row.stream_last_seq, row.lag_events,
        );
    }
    Ok(())
}

async fn with_bar<P: Projection>(
    js: &jetstream::Context,
    events: &jetstream::stream::Stream,
    stats: &jetstream::kv::Store,
) -> Result<RebuildReport, ProjectionsError> {
    let records = bucket(js, P::BUCKET).await?;
    let bar = indicatif::ProgressBar::new(0).with_message(P::NAME);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} events ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let report = rebuild::<P>(events, &records, stats, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    Ok(report)
}
