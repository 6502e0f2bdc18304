//! `my.shares`: the shares from and to the caller.

use super::{read_record, ApiContext, ApiError, ApiRequest, Handler};
use crate::contract::{op, ShareSummary};
use crate::model::online::{online_key, OnlineRecord};
use crate::model::AccountRecord;
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
        let record: Option<AccountRecord> = read_record(&context.store.accounts, me).await?;
        let mut summaries = record.map(|r| summaries(me, &r)).unwrap_or_default();
        // One online read per distinct catalog (the owner is the sharing account); a catalog
        // of an adopted log whose name no key can hold is never online.
        let catalogs: BTreeSet<String> = summaries
            .iter()
            .map(|s| online_key(&s.from_account, &s.catalog))
            .filter(|key| is_valid_key(key))
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
        Ok(summaries)
    }
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
