//! `my.shares`: the shares from and to the caller.

use super::{read_record, wait_min_seq, ApiContext, ApiError, ApiRequest};
use crate::model::{AccountRecord, ShareSummary};
use crate::online::{online_key, OnlineRecord};
use crate::projections::{accounts::Accounts, Projection};
use std::collections::{BTreeSet, HashMap};

/// Lists the caller's outgoing then incoming shares (empty when there are none).
pub async fn handle(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    wait_min_seq(context, request, &[Accounts::NAME]).await?;
    let me = &request.caller.account;
    let record: Option<AccountRecord> = read_record(&context.store.accounts, me).await?;
    let mut summaries: Vec<ShareSummary> = record
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
    // One online read per distinct catalog (the owner is the sharing account).
    let catalogs: BTreeSet<String> = summaries
        .iter()
        .map(|s| online_key(&s.from_account, &s.catalog))
        .collect();
    let online: Vec<Option<OnlineRecord>> = futures::future::try_join_all(
        catalogs
            .iter()
            .map(|key| read_record(&context.store.online_records, key)),
    )
    .await?;
    let online: HashMap<&String, OnlineRecord> = catalogs
        .iter()
        .zip(online)
        .filter_map(|(key, record)| Some((key, record?)))
        .collect();
    for summary in &mut summaries {
        if let Some(record) = online.get(&online_key(&summary.from_account, &summary.catalog)) {
            summary.catalog_online = record.online;
            summary.revision = record.revision;
        }
    }
    serde_json::to_value(summaries).map_err(|_| ApiError::internal())
}
