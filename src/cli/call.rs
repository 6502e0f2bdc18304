//! `natster-global call`: any op as an importing account, through [`GlobalClient`].
//!
//! The connection comes from `--creds`/`--nats-url`, `--context`, the environment
//! (`NATS_URL`, `NATS_CREDS`, `NATS_CONTEXT`), or else the `nats` CLI's selected context.
//! Replies print as JSON (`--output table` for `my.shares` and `stats`). `call watch` prints
//! the caller's feed, one JSON line per message, until Ctrl-C.
//!
//! Exit codes: 0 success, 2 bad arguments, 3 the service refused the request (4xx), 4 the
//! service failed (5xx), 5 no connection or no responder.

use super::args::{CallArgs, OutputFormat};
use super::output::{self, outln};
use crate::client::{ClientError, ClientErrorKind, GlobalClient};
use crate::contract::{
    op, ContextReply, EmptyReply, EventsPutReply, NameValidation, Op, Operation, OtcGenerateReply,
    RequestBody, Shape, ShareSummary, StatsReply, WhoamiReply,
};
use crate::model::NatsterContext;
use crate::tooling::nats_context;
use futures::StreamExt;
use serde::Serialize;

/// Exit code for arguments that do not make a request.
pub const EXIT_USAGE: i32 = super::EXIT_BAD_SETTING;
/// Exit code for a 4xx reply.
pub const EXIT_CLIENT_ERROR: i32 = 3;
/// Exit code for a 5xx reply.
pub const EXIT_SERVER_ERROR: i32 = 4;
/// Exit code when the service could not be reached.
pub const EXIT_UNREACHABLE: i32 = super::EXIT_UNREACHABLE;

/// What `call` takes besides the ops: following the feed.
const WATCH: &str = "watch";

/// Runs the call and prints the outcome; returns the process exit code.
pub async fn run(args: &CallArgs) -> i32 {
    let op = Op::parse(&args.op);
    if op.is_none() && args.op != WATCH {
        let known: Vec<&str> = Op::ALL.iter().map(|op| op.name()).chain([WATCH]).collect();
        eprintln!(
            "error: unknown op {:?} (one of: {})",
            args.op,
            known.join(", ")
        );
        return EXIT_USAGE;
    }
    if args.output == OutputFormat::Table && !op.is_some_and(has_table) {
        eprintln!(
            "error: --output table shows only {}; {} prints JSON",
            Op::ALL
                .iter()
                .copied()
                .filter(|op| has_table(*op))
                .map(|op| op.name())
                .collect::<Vec<_>>()
                .join(" and "),
            args.op
        );
        return EXIT_USAGE;
    }
    let mut connect = args.connect.clone();
    if connect.nats_url.is_none() && connect.creds.is_none() && connect.context.is_none() {
        connect.context = nats_context::config_dir().and_then(|dir| nats_context::selected(&dir));
    }
    let config = match connect.nats_config("natster-global-call") {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("error: {problem}");
            return EXIT_USAGE;
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
    let outcome = match op {
        Some(op) => call(&client, op, args).await,
        None => watch(&client).await,
    };
    match outcome {
        Ok(()) => 0,
        Err(Failure::Usage(problem)) => {
            eprintln!("error: {problem}");
            EXIT_USAGE
        }
        Err(Failure::Client(error)) => {
            eprintln!("error: {error}");
            exit_code(&error)
        }
        Err(Failure::Output(error)) if output::is_closed(&error) => 0,
        Err(Failure::Output(error)) => {
            eprintln!("error: cannot write the reply: {error}");
            super::EXIT_FAILED
        }
    }
}

/// Whether `--output table` can show op's reply (see [`Printed::table`]).
fn has_table(op: Op) -> bool {
    matches!(op, Op::Stats | Op::MyShares)
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
    /// Stdout could not be written (a closed pipe ends the command quietly).
    Output(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::Output(error)
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Failure::Client(error)
    }
}

/// The request of op `O` from the command line's payload argument.
fn request<O: Operation>(args: &CallArgs) -> Result<O::Request, Failure> {
    let payload = args.payload.as_deref();
    let body = match (<O::Request as RequestBody>::SHAPE, payload) {
        (Shape::Text(what), None) => {
            return Err(Failure::Usage(format!("{} takes {what}", args.op)))
        }
        (_, payload) => payload.unwrap_or_default(),
    };
    O::Request::from_bytes(body.as_bytes()).map_err(|e| {
        Failure::Usage(format!(
            "{} takes a JSON request (schemas/{}.request.json): {e}",
            args.op, args.op
        ))
    })
}

/// Sends op `O` and prints its reply.
async fn send<O: Operation>(client: &GlobalClient, args: &CallArgs) -> Result<(), Failure>
where
    O::Reply: Printed,
{
    let reply = client.call::<O>(&request::<O>(args)?).await?;
    match reply.table().filter(|_| args.output == OutputFormat::Table) {
        Some((header, rows)) => print_table(header, &rows)?,
        None => print_json(&reply)?,
    }
    Ok(())
}

async fn call(client: &GlobalClient, op: Op, args: &CallArgs) -> Result<(), Failure> {
    match op {
        Op::EventsPut => send::<op::EventsPut>(client, args).await,
        Op::HeartbeatsPut => send::<op::HeartbeatsPut>(client, args).await,
        Op::Stats => send::<op::Stats>(client, args).await,
        Op::MyShares => send::<op::MyShares>(client, args).await,
        Op::OtcGenerate => send::<op::OtcGenerate>(client, args).await,
        Op::OtcClaim => send::<op::OtcClaim>(client, args).await,
        Op::Whoami => send::<op::Whoami>(client, args).await,
        Op::ContextGet => send::<op::ContextGet>(client, args).await,
        Op::CatalogsValidateName => send::<op::CatalogsValidateName>(client, args).await,
    }
}

/// A reply as `call` prints it: JSON, or a table for the replies that have one.
trait Printed: Serialize {
    /// The header and rows of `--output table`.
    fn table(&self) -> Option<(&'static [&'static str], Vec<Vec<String>>)> {
        None
    }
}

impl Printed for EventsPutReply {}
impl Printed for EmptyReply {}
impl Printed for OtcGenerateReply {}
impl Printed for NatsterContext {}
impl Printed for WhoamiReply {}
impl Printed for ContextReply {}
impl Printed for NameValidation {}

impl Printed for StatsReply {
    fn table(&self) -> Option<(&'static [&'static str], Vec<Vec<String>>)> {
        let row = |name: &str, value: u64| vec![name.to_string(), value.to_string()];
        Some((
            &["STATISTIC", "VALUE"],
            vec![
                row("initialized accounts", self.total_initialized),
                row("running catalogs", self.running_catalogs),
                row("active shares", self.share_count),
            ],
        ))
    }
}

impl Printed for Vec<ShareSummary> {
    fn table(&self) -> Option<(&'static [&'static str], Vec<Vec<String>>)> {
        let rows = self
            .iter()
            .map(|s| {
                let state = if s.catalog_online {
                    "online"
                } else {
                    "offline"
                };
                vec![
                    s.catalog.clone(),
                    s.from_account.clone(),
                    s.to_account.clone(),
                    state.into(),
                    s.revision.to_string(),
                ]
            })
            .collect();
        Some((&["CATALOG", "FROM", "TO", "STATE", "REVISION"], rows))
    }
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
                outln!(
                    "{}",
                    serde_json::json!({"kind": message.kind(), "message": message.payload()})
                )?;
            }
            Err(error) => eprintln!("warning: {error}"),
        }
    }
}

fn print_json(value: &impl Serialize) -> std::io::Result<()> {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )
}

/// A plain aligned table.
fn print_table(header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
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
    outln!("{}", line(header.to_vec()))?;
    for row in rows {
        outln!("{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}
