//! `events.put`: append an event decided against current state. Reply `{"seq": N}`.

use super::{parse_json, ApiContext, ApiError, ApiRequest};
use crate::model::{Command, EventType, EventsPutRequest, InitData};

/// Parses, decides, appends.
pub async fn handle(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    let put: EventsPutRequest = parse_json(request.payload, "event")?;
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
        Some(EventType::NatsterInitialized) => {
            let data = put.data.unwrap_or(serde_json::Value::Null);
            if !data.is_object() {
                return Err(ApiError::bad_request(
                    "natster_initialized needs data {account_id, account_name, account_key}",
                ));
            }
            let data: InitData = serde_json::from_value(data).map_err(|_| {
                ApiError::bad_request("natster_initialized data fields must be strings")
            })?;
            Command::Initialize { caller, data }
        }
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
        .header("Nats-Msg-Id")
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .map(|id| format!("{}:{id}", request.caller.account));
    let appended = context.decider.execute(&command, msg_id.as_deref()).await?;
    Ok(serde_json::json!({ "seq": appended.seq }))
}
