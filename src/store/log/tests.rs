//! The log reader against a real nats-server: every message once, in order, across a broken
//! read, and a bounded replay that stops where it was told.

use super::*;
use async_nats::jetstream;

/// Decodes a message as its sequence (shared with the shared read's tests).
pub(super) fn seq_of(seq: u64, _time: i64, _message: &jetstream::Message) -> Option<u64> {
    Some(seq)
}

/// Stream `T` over `t.>`, holding `messages` messages.
pub(super) async fn stream_with(js: &jetstream::Context, messages: usize) -> stream::Stream {
    let stream = js
        .create_stream(stream::Config {
            name: "T".into(),
            subjects: vec!["t.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    publish(js, messages).await;
    stream
}

/// Publishes `messages` more messages to `T`, each acknowledged.
pub(super) async fn publish(js: &jetstream::Context, messages: usize) {
    for i in 0..messages {
        js.publish(format!("t.{i}"), "x".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
}

/// Reads until the reader has handed out sequence `upto`.
async fn read_to(reader: &mut LogReader<u64>, upto: u64, seen: &mut Vec<u64>) {
    while reader.position() < upto {
        let chunk = reader.next_chunk().await.expect("a chunk");
        assert_eq!(chunk.read, chunk.items.len(), "every message decodes here");
        assert_eq!(chunk.items.last().copied(), Some(chunk.last_seq));
        seen.extend(chunk.items);
    }
}

#[tokio::test]
async fn every_message_once_in_order_across_a_server_restart() {
    let mut server = natster_testkit::PlainServer::start().await.expect("server");
    let js = jetstream::new(server.connect().await.expect("connect"));
    let stream = stream_with(&js, 100).await;
    let mut reader = LogReader::new(stream, 1, seq_of, 10);
    let mut seen = Vec::new();
    read_to(&mut reader, 50, &mut seen).await;
    server.server.restart().await.expect("restart");
    publish(&js, 50).await;
    read_to(&mut reader, 150, &mut seen).await;
    assert_eq!(seen, (1..=150).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_bounded_replay_hands_out_nothing_past_its_end() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let js = jetstream::new(server.connect().await.expect("connect"));
    let stream = stream_with(&js, 40).await;
    let mut reader = LogReader::new(stream.clone(), 11, seq_of, 1024).up_to(30);
    let mut seen = Vec::new();
    read_to(&mut reader, 30, &mut seen).await;
    assert_eq!(seen, (11..=30).collect::<Vec<u64>>());
    assert_eq!(reader.position(), 30);
    let chunk = LogReader::new(stream, 31, seq_of, 1024)
        .next_chunk()
        .await
        .expect("a chunk");
    assert_eq!(chunk.items, (31..=40).collect::<Vec<u64>>());
    assert!(chunk.caught_up);
}
