//! `natster-global call`: one request as an importing account, reply printed as JSON.
//!
//! Exit codes: 0 success, 3 the service refused the request (4xx), 4 the service failed
//! (5xx), 5 no connection or no responder.

use crate::api::Envelope;
use crate::cli::CallArgs;

/// Exit code for a 4xx reply.
pub const EXIT_CLIENT_ERROR: i32 = 3;
/// Exit code for a 5xx reply.
pub const EXIT_SERVER_ERROR: i32 = 4;
/// Exit code when the service could not be reached.
pub const EXIT_UNREACHABLE: i32 = 5;

/// Sends the request and prints the outcome; returns the process exit code.
pub async fn run(args: &CallArgs) -> i32 {
    let config = match args.connect.nats_config("natster-global-call") {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("error: {problem}");
            return EXIT_UNREACHABLE;
        }
    };
    let client = match config.connect_once().await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_UNREACHABLE;
        }
    };
    let subject = format!("natster.global.{}", args.op);
    let payload = args.payload.clone().unwrap_or_default();
    let request = client.request(subject, payload.into());
    let reply = match tokio::time::timeout(args.timeout, request).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => {
            eprintln!("error: {} did not answer: {error}", args.op);
            return EXIT_UNREACHABLE;
        }
        Err(_) => {
            eprintln!("error: no reply within {:?}", args.timeout);
            return EXIT_UNREACHABLE;
        }
    };
    match serde_json::from_slice::<Envelope>(&reply.payload) {
        Ok(envelope) if envelope.code == 200 => {
            println!(
                "{}",
                serde_json::to_string_pretty(&envelope.data).unwrap_or_default()
            );
            0
        }
        Ok(envelope) => {
            eprintln!(
                "error {}: {}",
                envelope.code,
                envelope.error.unwrap_or_default()
            );
            if envelope.code >= 500 {
                EXIT_SERVER_ERROR
            } else {
                EXIT_CLIENT_ERROR
            }
        }
        Err(_) => {
            eprintln!(
                "error: the reply is not an envelope: {}",
                String::from_utf8_lossy(&reply.payload)
            );
            EXIT_SERVER_ERROR
        }
    }
}
