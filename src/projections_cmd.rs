//! `natster-global projections status|rebuild`.

use crate::cli::{ProjectionsAction, ProjectionsArgs};
use crate::projections::rebuild::{rebuild, status, RebuildReport};
use crate::projections::{accounts::Accounts, catalogs::Catalogs, oauth::OAuthIndex, Projection};
use anyhow::{bail, Context, Result};
use async_nats::jetstream;

/// Names of every projection.
pub const PROJECTIONS: [&str; 3] = [Accounts::NAME, Catalogs::NAME, OAuthIndex::NAME];

/// Runs the subcommand.
pub async fn run(args: &ProjectionsArgs) -> Result<()> {
    let connect = match &args.action {
        ProjectionsAction::Status { connect, .. } | ProjectionsAction::Rebuild { connect, .. } => {
            connect
        }
    };
    let client = connect
        .nats_config("natster-global-projections")
        .map_err(anyhow::Error::msg)?
        .connect_once()
        .await?;
    let js = jetstream::new(client);
    let events = js
        .get_stream(crate::store::EVENTS_STREAM)
        .await
        .context("the event stream (has the service run here yet?)")?;
    let stats = js.get_key_value(crate::store::PROJ_STATS_BUCKET).await?;
    match &args.action {
        ProjectionsAction::Status { json, .. } => {
            let mut rows = Vec::new();
            for name in PROJECTIONS {
                rows.push(
                    status(&events, &stats, name)
                        .await
                        .map_err(anyhow::Error::msg)?,
                );
            }
            // The online projection applies the heartbeat stream (absent before a service of
            // this version has run).
            if let Ok(online) = js.get_stream(crate::store::ONLINE_STREAM).await {
                rows.push(
                    status(&online, &stats, crate::online::projector::NAME)
                        .await
                        .map_err(anyhow::Error::msg)?,
                );
            }
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
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
                        row.projection,
                        row.stream,
                        row.applied_seq,
                        row.stream_last_seq,
                        row.lag_events,
                    );
                }
            }
        }
        ProjectionsAction::Rebuild { projection, .. } => {
            let names: Vec<&str> = match projection {
                Some(name) if PROJECTIONS.contains(&name.as_str()) => vec![name.as_str()],
                Some(name) => bail!("unknown projection {name:?}; one of {PROJECTIONS:?}"),
                None => PROJECTIONS.to_vec(),
            };
            for name in names {
                let report = match name {
                    n if n == Accounts::NAME => {
                        let bucket = js.get_key_value(Accounts::BUCKET).await?;
                        with_bar::<Accounts>(&events, &bucket, &stats).await?
                    }
                    n if n == Catalogs::NAME => {
                        let bucket = js.get_key_value(Catalogs::BUCKET).await?;
                        with_bar::<Catalogs>(&events, &bucket, &stats).await?
                    }
                    _ => {
                        let bucket = js.get_key_value(OAuthIndex::BUCKET).await?;
                        with_bar::<OAuthIndex>(&events, &bucket, &stats).await?
                    }
                };
                println!(
                    "{}: replayed {} events up to sequence {}; {} records written, {} unchanged, {} deleted",
                    report.projection, report.events, report.last_seq, report.written, report.unchanged, report.deleted
                );
            }
        }
    }
    Ok(())
}

async fn with_bar<P: Projection>(
    events: &jetstream::stream::Stream,
    bucket: &jetstream::kv::Store,
    stats: &jetstream::kv::Store,
) -> Result<RebuildReport> {
    let bar = indicatif::ProgressBar::new(0).with_message(P::NAME);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} events ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let report = rebuild::<P>(events, bucket, stats, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    Ok(report)
}
