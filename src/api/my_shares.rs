//! `my.shares`: the shares from and to the caller.

mod listing;

pub use listing::ShareListing;

use super::{ApiContext, ApiError, ApiRequest};
use crate::model::online::OnlineRecord;
use crate::projections::online_view::OnlineEntry;
use crate::projections::{accounts::Accounts, Projection};
use crate::store::kv::is_valid_key;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};

/// Answers with the caller's outgoing then incoming shares (empty when there are none), each
/// with its catalog's online state: the success envelope of the op's reply type
/// (`Vec<ShareSummary>`), encoded from the listing held with the caller's account record
/// (see [`ShareListing`]).
pub(super) async fn serve(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<Bytes, ApiError> {
    request.wait_min_seq(context, &[Accounts::NAME]).await?;
    let Some(account) = request.own_account(context).await? else {
        return Ok(ShareListing::default().reply([]));
    };
    let listing = &account.shares;
    // The online state of each share's catalog (the owner is the sharing account) from the
    // instance's view, or one read per distinct catalog while the view is rebuilt; a catalog
    // of an adopted log whose name no key can hold is in neither, so never online.
    let online = match context.online_view.lookup(listing.keys()) {
        Some(entries) => entries,
        None => read_online(context, request, listing).await?,
    };
    Ok(listing.reply(online))
}

/// The online state of each share in `listing` read from the bucket (one read per distinct
/// key the bucket can hold, all at once), in the listing's order.
async fn read_online(
    context: &ApiContext,
    request: &ApiRequest<'_>,
    listing: &ShareListing,
) -> Result<Vec<Option<OnlineEntry>>, ApiError> {
    let distinct: BTreeSet<&str> = listing.keys().filter(|key| is_valid_key(key)).collect();
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
    Ok(listing.keys().map(|key| by_key.get(key).copied()).collect())
}
