//! `stats`: community totals, from the in-memory view of the projection counters (no scan).

use super::{ApiContext, ApiError, ApiRequest, Handler};
use crate::contract::{op, StatsReply};
use crate::projections::{accounts::Accounts, catalogs::Catalogs, online::Online, Projection};

impl Handler for op::Stats {
    /// Initialised accounts, active shares and running catalogs.
    async fn handle(
        context: &ApiContext,
        request: &ApiRequest<'_>,
    ) -> Result<StatsReply, ApiError> {
        request
            .wait_min_seq(context, &[Accounts::NAME, Catalogs::NAME])
            .await?;
        let snapshot = context.view.snapshot();
        let count = |projection: &str, pick: fn(&crate::projections::stored::Counters) -> i64| {
            pick(&snapshot.counters(projection)).max(0) as u64
        };
        Ok(StatsReply {
            total_initialized: count(Accounts::NAME, |c| c.total_initialized),
            running_catalogs: count(Online::NAME, |c| c.running_catalogs),
            share_count: count(Catalogs::NAME, |c| c.share_count),
        })
    }
}
