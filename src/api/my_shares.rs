//! `my.shares`: the shares from and to the caller.

use super::{ApiContext, ApiError, ApiRequest, Handler};
use crate::contract::{op, ShareSummary};
use crate::model::online::{online_key, OnlineRecord};
use crate::model::AccountRecord;
use crate::projections::online_view::OnlineEntry;
use crate::projections::{accounts::Accounts, Projection};
use crate::store::kv::is_valid_key;
use std::collections::{BTreeSet, HashMap};

impl Handler for op::MyShares {
    /// Lists the caller's outgoing then incoming shares (empty when there are none), each with
    /// its catalog's online state.
    async fn handle(
        context: &ApiContext,
        request: &ApiRequest<'_>,
    ) -> Result<Vec<ShareSummary>, ApiError> {
        request.wait_min_seq(context, &[Accounts::NAME]).await?;
        let me = &request.caller.account;
        let record = request.own_account(context).await?;
        let mut summaries = record.map(|r| summaries(me, &r)).unwrap_or_default();
        // The online state of each share's catalog (the owner is the sharing account) from
        // the instance's view, or one read per distinct catalog while the view is rebuilt; a
        // catalog of an adopted log whose name no key can hold is in neither, so never online.
        let keys: Vec<String> = summaries
            .iter()
            .map(|s| online_key(&s.from_account, &s.catalog))
            .collect();
        let online = match context.online_view.lookup(keys.iter().map(String::as_str)) {
            Some(entries) => entries,
            None => read_online(context, request, &keys).await?,
        };
        for (summary, entry) in summaries.iter_mut().zip(online) {
            if let Some(entry) = entry {
                summary.catalog_online = entry.online;
                summary.revision = entry.revision;
            }
        }
        Ok(summaries)
    }
}

/// The online state of each of `keys` read from the bucket (one read per distinct key the
/// bucket can hold, all at once), in the order of `keys`.
async fn read_online(
    context: &ApiContext,
    request: &ApiRequest<'_>,
    keys: &[String],
) -> Result<Vec<Option<OnlineEntry>>, ApiError> {
    let distinct: BTreeSet<&str> = (keys.iter().map(String::as_str))
        .filter(|key| is_valid_key(key))
        .collect();
    let records: Vec<Option<OnlineRecord>> = futures::future::try_join_all(
        distinct
            .iter()
            .map(|key| request.read_record(&context.store.online_records, key)),
    )
    .await?;
    let by_key: HashMap<&str, OnlineEntry> = distinct
        .iter()
        .zip(records)
        .filter_map(|(key, record)| Some((*key, OnlineEntry::from(&record?))))
        .collect();
    Ok(keys
        .iter()
        .map(|key| by_key.get(key.as_str()).copied())
        .collect())
}

/// The account's outgoing then incoming shares, all offline at revision 0.
fn summaries(me: &str, record: &AccountRecord) -> Vec<ShareSummary> {
    let summary = |from: &str, to: &str, catalog: &str| ShareSummary {
        from_account: from.to_string(),
        to_account: to.to_string(),
        catalog: catalog.to_string(),
        catalog_online: false,
        revision: 0,
    };
    let outgoing = record
        .out_shares
        .iter()
        .map(|s| summary(me, &s.account, &s.catalog));
    let incoming = record
        .in_shares
        .iter()
        .map(|s| summary(&s.account, me, &s.catalog));
    outgoing.chain(incoming).collect()
}
