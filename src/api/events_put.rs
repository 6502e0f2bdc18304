//! `events.put`: append an event decided against current state. Reply `{"seq": N}`.

use super::{ApiContext, ApiError, ApiRequest, Handler};
use crate::contract::{op, EventsPutReply, MSG_ID_HEADER};
use crate::model::{Command, EventType, InitData};

/// Longest `Nats-Msg-Id` taken as the request's idempotency key.
const MAX_MSG_ID: usize = 128;

impl Handler for op::EventsPut {
    /// Parses, decides, appends. A `Nats-Msg-Id` (scoped to the caller) makes a retry append
    /// once.
    async fn handle(
        context: &ApiContext,
        request: &ApiRequest<'_>,
    ) -> Result<EventsPutReply, ApiError> {
        let put = request.body::<Self>("event")?;
        let caller = request.caller.account.clone();
        let command = match EventType::parse(&put.event_type) {
            None => {
                return Err(ApiError::bad_request(
                    "unknown event_type (natster_initialized, catalog_shared, catalog_unshared, catalog_imported)",
                ))
            }
            Some(EventType::ContextBound) => {
                return Err(ApiError::forbidden(
                    "context_bound events come only from claiming a one-time code",
                ))
            }
            Some(EventType::NatsterInitialized) => Command::Initialize {
                caller,
                data: init_data(put.data)?,
            },
            Some(EventType::CatalogShared) => Command::Share {
                caller,
                target: put.target,
                catalog: put.catalog,
            },
            Some(EventType::CatalogUnshared) => Command::Unshare {
                caller,
                target: put.target,
                catalog: put.catalog,
            },
            Some(EventType::CatalogImported) => Command::Import {
                caller,
                owner: put.target,
                catalog: put.catalog,
            },
        };
        let msg_id = request
            .header(MSG_ID_HEADER)
            .filter(|id| !id.is_empty() && id.len() <= MAX_MSG_ID)
            .map(|id| format!("{}:{id}", request.caller.account));
        let appended = context.decider.execute(&command, msg_id.as_deref()).await?;
        Ok(EventsPutReply { seq: appended.seq })
    }
}

/// The data of `natster_initialized`: an object of strings.
fn init_data(data: Option<serde_json::Value>) -> Result<InitData, ApiError> {
    let data = data.unwrap_or(serde_json::Value::Null);
    if !data.is_object() {
        return Err(ApiError::bad_request(
            "natster_initialized needs data {account_id, account_name, account_key}",
        ));
    }
    serde_json::from_value(data)
        .map_err(|_| ApiError::bad_request("natster_initialized data fields must be strings"))
}
