//! `stats`: community totals, from the in-memory view of the projection counters (no scan).

use super::{wait_min_seq, ApiContext, ApiError, ApiRequest};
use crate::model::StatsReply;
use crate::projections::{accounts::Accounts, catalogs::Catalogs, Projection};

/// Initialised accounts, active shares and running catalogs.
pub async fn handle(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    wait_min_seq(context, request, &[Accounts::NAME, Catalogs::NAME]).await?;
    let snapshot = context.view.snapshot();
    let reply = StatsReply {
        total_initialized: snapshot.counters(Accounts::NAME).total_initialized.max(0) as u64,
        running_catalogs: snapshot
            .counters(crate::online::projector::NAME)
            .running_catalogs
            .max(0) as u64,
        share_count: snapshot.counters(Catalogs::NAME).share_count.max(0) as u64,
    };
    serde_json::to_value(reply).map_err(|_| ApiError::internal())
}
