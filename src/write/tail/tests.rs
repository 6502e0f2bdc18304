//! The decision state's tail against a real nats-server: it catches up through the instance's
//! shared read, then reads alone, and a shared read held up by another reader holds up
//! neither its catch-up nor what follows.

use super::*;
use crate::contract::{MSG_ID_HEADER, REQUEST_FINGERPRINT_HEADER};
use crate::store::log::shared::SharedConfig;
use async_nats::jetstream;
use std::sync::atomic::{AtomicU64, Ordering};

/// Messages the counting shared read has decoded.
static SHARED_DECODES: AtomicU64 = AtomicU64::new(0);

fn counting_decode(seq: u64, time: i64, message: &jetstream::Message) -> Option<LogMessage> {
    SHARED_DECODES.fetch_add(1, Ordering::SeqCst);
    LogMessage::decode(seq, time, message)
}

/// A shared read that gets stuck after a few chunks for a reader that takes nothing (and
/// would detach it only after a minute).
fn small() -> SharedConfig {
    SharedConfig {
        max_chunk: 10,
        read_ahead: 2,
        detach_after: Duration::from_secs(60),
    }
}

/// The event log's stream holding `events` events of a mixed history, every fifth appended
/// under an idempotency key.
async fn event_log(js: &jetstream::Context, events: usize) -> stream::Stream {
    let stream = js
        .create_stream(stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["natster.events.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    append(js, events, 0).await;
    stream
}

/// Appends `events` more events of a mixed history; `already` were appended before.
async fn append(js: &jetstream::Context, events: usize, already: usize) {
    let log = natster_testkit::mixed_event_log(8, 6, events);
    for (i, (subject, body)) in log.into_iter().enumerate() {
        let n = already + i;
        let mut headers = async_nats::HeaderMap::new();
        if n.is_multiple_of(5) {
            headers.insert(MSG_ID_HEADER, format!("request-{n}").as_str());
            headers.insert(
                REQUEST_FINGERPRINT_HEADER,
                format!("fingerprint-{n}").as_str(),
            );
        }
        js.publish_with_headers(subject, headers, body.into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
}

/// What a full replay of the whole stream folds, read on its own (message by message, as
/// the tail folds each).
async fn replayed(events: &stream::Stream, window: i64) -> (DecisionState, RecentRequests) {
    let end = crate::store::log::end(events).await.expect("end");
    let mut reader = LogReader::new(events.clone(), 1, LogMessage::decode, CHUNK).up_to(end);
    let (mut state, mut recent) = (DecisionState::default(), RecentRequests::new(window));
    while state.last_seq < end {
        for message in reader.next_chunk().await.expect("chunk").items {
            fold_message(&mut state, &mut recent, &message);
        }
    }
    (state, recent)
}

/// A tail running from an empty state.
struct Running {
    state: Arc<RwLock<DecisionState>>,
    recent: Arc<Mutex<RecentRequests>>,
    folded: Arc<Progress>,
    _stop: tokio_util::sync::DropGuard,
}

const WINDOW: i64 = 3600;

fn start(log: &SharedLog<LogMessage>, start_target: u64) -> Running {
    let state = Arc::new(RwLock::new(DecisionState::default()));
    let recent = Arc::new(Mutex::new(RecentRequests::new(WINDOW)));
    let folded = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    spawn(
        log.clone(),
        start_target,
        state.clone(),
        recent.clone(),
        folded.clone(),
        stop.clone(),
    );
    Running {
        state,
        recent,
        folded,
        _stop: stop.drop_guard(),
    }
}

impl Running {
    async fn folded_to(&self, seq: u64) {
        self.folded
            .wait_for(seq, Duration::from_secs(20))
            .await
            .unwrap_or_else(|error| panic!("folded {} of {seq}: {error}", self.folded.reached()));
    }

    /// Its state and requests equal a full replay of `events`.
    async fn assert_replayed(&self, events: &stream::Stream) {
        let (state, recent) = replayed(events, WINDOW).await;
        assert_eq!(*self.state.read().expect("lock"), state);
        let remembered = self.recent.lock().expect("lock").remembered();
        assert_eq!(remembered, recent.remembered());
        assert!(!remembered.is_empty(), "the log holds requests");
    }
}

#[tokio::test]
async fn catches_up_through_the_shared_read_then_reads_alone() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let js = jetstream::new(server.connect().await.expect("connect"));
    let events = event_log(&js, 300).await;
    let log = SharedLog::spawn(events.clone(), counting_decode, LogMessage::seq, small());
    let tail = start(&log, 300);
    tail.folded_to(300).await;
    // Nothing else reads it: every message the tail folded went through the shared read.
    assert!(SHARED_DECODES.load(Ordering::SeqCst) >= 300);
    // A reader that takes nothing now holds the shared read up; the tail is no longer on it.
    let _stuck = log.subscribe(1);
    append(&js, 40, 300).await;
    tail.folded_to(340).await;
    tail.assert_replayed(&events).await;
}

#[tokio::test]
async fn a_shared_read_held_up_by_another_reader_does_not_hold_the_catch_up() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let js = jetstream::new(server.connect().await.expect("connect"));
    let events = event_log(&js, 300).await;
    let log = SharedLog::spawn(events.clone(), LogMessage::decode, LogMessage::seq, small());
    // Takes nothing: the shared read stops after a few chunks, for a minute.
    let _stuck = log.subscribe(1);
    let tail = start(&log, 300);
    tail.folded_to(300).await;
    append(&js, 40, 300).await;
    tail.folded_to(340).await;
    tail.assert_replayed(&events).await;
}
