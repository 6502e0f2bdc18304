//! `natster-global call`: any op as an importing account, through [`GlobalClient`].
//!
//! The connection comes from `--creds`/`--nats-url`, `--context`, the environment
//! (`NATS_URL`, `NATS_CREDS`, `NATS_CONTEXT`), or else the `nats` CLI's selected context.
//! Replies print as JSON (`--output table` for `my.shares` and `stats`). `call watch` prints
//! the caller's feed, one JSON line per message, until Ctrl-C.
//!
//! Exit codes: 0 success, 2 bad arguments, 3 the service refused the request (4xx), 4 the
//! service failed (5xx), 5 no connection or no responder.

use crate::cli::{CallArgs, OutputFormat};
use crate::client::{ClientError, ClientErrorKind, GlobalClient};
use crate::model::{EventsPutRequest, HeartbeatRequest, NatsterContext, OtcClaimRequest};
use futures::StreamExt;
use serde::Serialize;

/// Exit code for arguments that do not make a request.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a 4xx reply.
pub const EXIT_CLIENT_ERROR: i32 = 3;
/// Exit code for a 5xx reply.
pub const EXIT_SERVER_ERROR: i32 = 4;
/// Exit code when the service could not be reached.
pub const EXIT_UNREACHABLE: i32 = 5;

/// The ops `call` knows, and `watch`.
pub const CALLS: [&str; 10] = [
    "events.put",
    "heartbeats.put",
    "stats",
    "my.shares",
    "otc.generate",
    "otc.claim",
    "whoami",
    "context.get",
    "catalogs.validatename",
    "watch",
];

/// Runs the call and prints the outcome; returns the process exit code.
pub async fn run(args: &CallArgs) -> i32 {
    if !CALLS.contains(&args.op.as_str()) {
        eprintln!(
            "error: unknown op {:?} (one of: {})",
            args.op,
            CALLS.join(", ")
        );
        return EXIT_USAGE;
    }
    let mut connect = args.connect.clone();
    if connect.nats_url.is_none() && connect.creds.is_none() && connect.context.is_none() {
        connect.context =
            crate::nats_context::config_dir().and_then(|dir| crate::nats_context::selected(&dir));
    }
    let config = match connect.nats_config("natster-global-call") {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("error: {problem}");
            return EXIT_UNREACHABLE;
        }
    };
    let nats = match config.connect_once().await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_UNREACHABLE;
        }
    };
    let client = GlobalClient::new(nats).with_timeout(args.timeout);
    let client = match args.min_seq {
        Some(seq) => client.at_least(seq),
        None => client,
    };
    match call(&client, args).await {
        Ok(()) => 0,
        Err(Failure::Usage(problem)) => {
            eprintln!("error: {problem}");
            EXIT_USAGE
        }
        Err(Failure::Client(error)) => {
            eprintln!("error: {error}");
            exit_code(&error)
        }
    }
}

/// The exit code for a failed call.
pub fn exit_code(error: &ClientError) -> i32 {
    match (error.kind, error.code) {
        (ClientErrorKind::Transport, _) | (ClientErrorKind::Unavailable, None) => EXIT_UNREACHABLE,
        (ClientErrorKind::Server | ClientErrorKind::Unavailable, _) => EXIT_SERVER_ERROR,
        _ => EXIT_CLIENT_ERROR,
    }
}

enum Failure {
    Usage(String),
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Failure::Client(error)
    }
}

fn json_arg<T: serde::de::DeserializeOwned>(args: &CallArgs, shape: &str) -> Result<T, Failure> {
    let text = args.payload.as_deref().unwrap_or_default();
    serde_json::from_str(text)
        .map_err(|e| Failure::Usage(format!("{} takes JSON {shape}: {e}", args.op)))
}

fn text_arg<'a>(args: &'a CallArgs, what: &str) -> Result<&'a str, Failure> {
    args.payload
        .as_deref()
        .ok_or_else(|| Failure::Usage(format!("{} takes {what}", args.op)))
}

async fn call(client: &GlobalClient, args: &CallArgs) -> Result<(), Failure> {
    let table = args.output == OutputFormat::Table;
    match args.op.as_str() {
        "events.put" => {
            let request: EventsPutRequest =
                json_arg(args, r#"{"catalog","target","event_type","data"?}"#)?;
            print_json(&serde_json::json!({ "seq": client.put_event(&request).await? }));
        }
        "heartbeats.put" => {
            let heartbeat: HeartbeatRequest =
                json_arg(args, r#"{"catalog","account_key","revision"}"#)?;
            client.heartbeat(&heartbeat).await?;
            print_json(&serde_json::json!({}));
        }
        "stats" => {
            let stats = client.stats().await?;
            if table {
                print_table(
                    &["TOTAL", "VALUE"],
                    &[
                        vec![
                            "initialized accounts".into(),
                            stats.total_initialized.to_string(),
                        ],
                        vec![
                            "running catalogs".into(),
                            stats.running_catalogs.to_string(),
                        ],
                        vec!["active shares".into(), stats.share_count.to_string()],
                    ],
                );
            } else {
                print_json(&stats);
            }
        }
        "my.shares" => {
            let shares = client.my_shares().await?;
            if table {
                let rows: Vec<Vec<String>> = shares
                    .iter()
                    .map(|s| {
                        vec![
                            s.catalog.clone(),
                            s.from_account.clone(),
                            s.to_account.clone(),
                            if s.catalog_online {
                                "online"
                            } else {
                                "offline"
                            }
                            .into(),
                            s.revision.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["CATALOG", "FROM", "TO", "STATE", "REVISION"], &rows);
            } else {
                print_json(&shares);
            }
        }
        "otc.generate" => {
            let context: NatsterContext = json_arg(args, "natster context")?;
            print_json(&client.otc_generate(&context).await?);
        }
        "otc.claim" => {
            let claim: OtcClaimRequest = json_arg(args, r#"{"code","oauth_id"}"#)?;
            print_json(&client.otc_claim(&claim.code, &claim.oauth_id).await?);
        }
        "whoami" => print_json(&client.whoami().await?),
        "context.get" => print_json(&client.context_get(text_arg(args, "an OAuth id")?).await?),
        "catalogs.validatename" => print_json(
            &client
                .validate_name(text_arg(args, "a catalog name")?)
                .await?,
        ),
        "watch" => watch(client).await?,
        _ => unreachable!("checked against CALLS"),
    }
    Ok(())
}

/// Prints the feed until Ctrl-C.
async fn watch(client: &GlobalClient) -> Result<(), Failure> {
    let mut feed = Box::pin(client.feed().await?);
    eprintln!("watching the feed; Ctrl-C to stop");
    loop {
        let message = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            message = feed.next() => message,
        };
        let Some(message) = message else {
            return Err(ClientError {
                kind: ClientErrorKind::Transport,
                code: None,
                message: "the feed subscription ended".into(),
            }
            .into());
        };
        match message {
            Ok(message) => {
                let payload = match &message {
                    crate::client::FeedMessage::Heartbeat(h) => serde_json::to_value(h),
                    crate::client::FeedMessage::CatalogOnline(n)
                    | crate::client::FeedMessage::CatalogOffline(n) => serde_json::to_value(n),
                    crate::client::FeedMessage::CatalogShared(n)
                    | crate::client::FeedMessage::CatalogUnshared(n) => serde_json::to_value(n),
                    crate::client::FeedMessage::Other { payload, .. } => Ok(payload.clone()),
                }
                .unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({"kind": message.kind(), "message": payload})
                );
            }
            Err(error) => eprintln!("warning: {error}"),
        }
    }
}

fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// A plain aligned table.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(header.to_vec()));
    for row in rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}
