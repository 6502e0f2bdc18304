//! Proof that a connection's earlier operations reached the server.

use futures::StreamExt;
use std::time::Duration;

/// A round trip through the server did not complete.
#[derive(Debug, thiserror::Error)]
#[error("round trip through the server failed: {0}")]
pub struct RoundTripError(String);

/// Returns once every subscription `client` made before this call is registered at the
/// server: a message round-trips through a fresh inbox on the same connection, and the server
/// handles one connection's operations in order. (`Client::flush` only drains the socket
/// buffer, so it proves nothing of the kind.)
pub async fn sync(client: &async_nats::Client) -> Result<(), RoundTripError> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| RoundTripError(e.to_string()))?;
    client
        .publish(inbox, bytes::Bytes::from_static(b"sync"))
        .await
        .map_err(|e| RoundTripError(e.to_string()))?;
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .map_err(|_| RoundTripError("timed out".into()))?
        .ok_or_else(|| RoundTripError("subscription closed".into()))?;
    Ok(())
}
