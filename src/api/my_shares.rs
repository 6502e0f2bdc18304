//! `my.shares`: the shares from and to the caller.

use super::{read_record, wait_min_seq, ApiContext, ApiError, ApiRequest};
use crate::model::{AccountRecord, ShareSummary};
use crate::projections::{accounts::Accounts, Projection};

/// Lists the caller's outgoing then incoming shares (empty when there are none).
pub async fn handle(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    wait_min_seq(context, request, &[Accounts::NAME]).await?;
    let me = &request.caller.account;
    let record: Option<AccountRecord> = read_record(&context.store.accounts, me).await?;
    let summaries: Vec<ShareSummary> = record
        .map(|r| {
            let outgoing = r.out_shares.iter().map(|s| ShareSummary {
                from_account: me.clone(),
                to_account: s.account.clone(),
                catalog: s.catalog.clone(),
                catalog_online: false,
                revision: 0,
            });
            let incoming = r.in_shares.iter().map(|s| ShareSummary {
                from_account: s.account.clone(),
                to_account: me.clone(),
                catalog: s.catalog.clone(),
                catalog_online: false,
                revision: 0,
            });
            outgoing.chain(incoming).collect()
        })
        .unwrap_or_default();
    serde_json::to_value(summaries).map_err(|_| ApiError::internal())
}
