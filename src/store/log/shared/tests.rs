//! The shared read against a real nats-server: every subscription sees its messages once and
//! in order wherever it starts and whenever it joins, and one that takes nothing is detached
//! without holding the others up.

use super::super::tests::{publish, seq_of, stream_with};
use super::*;
use async_nats::jetstream;

fn identity(seq: &u64) -> u64 {
    *seq
}

/// Reads `subscription` until it has handed out sequence `upto`; checks each chunk's own
/// bookkeeping on the way.
async fn read_to(subscription: &mut Subscription<u64>, upto: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(0) < upto {
        let chunk = subscription.next().await;
        assert_eq!(chunk.items.last().copied(), Some(chunk.last_seq));
        seen.extend(chunk.items.iter().copied());
    }
    seen
}

fn small(detach_after: Duration) -> SharedConfig {
    SharedConfig {
        max_chunk: 10,
        read_ahead: 2,
        detach_after,
    }
}

#[tokio::test]
async fn each_subscription_sees_its_messages_once_in_order_wherever_and_whenever_it_starts() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let js = jetstream::new(server.connect().await.expect("connect"));
    let stream = stream_with(&js, 100).await;
    let log = SharedLog::spawn(stream, seq_of, identity, small(Duration::from_secs(60)));
    let (mut first, mut ahead) = (log.subscribe(1), log.subscribe(60));
    // Chunks end where the server's batches end: the first read may go a little past 50.
    let first_read = read_to(&mut first, 50).await;
    let first_end = *first_read.last().expect("read something");
    assert_eq!(first_read, (1..=first_end).collect::<Vec<_>>());
    // Joins behind the read: the read starts over for it, the others see nothing twice.
    let mut behind = log.subscribe(10);
    publish(&js, 20).await;
    // Subscriptions of one read are read side by side (the read goes at the slowest's pace).
    let (ahead_saw, behind_saw, first_saw) = tokio::join!(
        read_to(&mut ahead, 120),
        read_to(&mut behind, 120),
        read_to(&mut first, 120)
    );
    assert_eq!(ahead_saw, (60..=120).collect::<Vec<_>>());
    assert_eq!(behind_saw, (10..=120).collect::<Vec<_>>());
    assert_eq!(first_saw, (first_end + 1..=120).collect::<Vec<_>>());
    for subscription in [&first, &ahead, &behind] {
        assert!(!subscription.is_detached());
    }
}

#[tokio::test]
async fn a_subscription_that_takes_nothing_is_detached_and_reads_on_its_own() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let js = jetstream::new(server.connect().await.expect("connect"));
    let stream = stream_with(&js, 200).await;
    let log = SharedLog::spawn(stream, seq_of, identity, small(Duration::from_millis(200)));
    let (mut busy, mut stuck) = (log.subscribe(1), log.subscribe(1));
    // `stuck` takes nothing while `busy` reads far past what its queue holds.
    assert_eq!(read_to(&mut busy, 200).await, (1..=200).collect::<Vec<_>>());
    assert!(!busy.is_detached());
    assert_eq!(
        read_to(&mut stuck, 200).await,
        (1..=200).collect::<Vec<_>>()
    );
    assert!(stuck.is_detached(), "the stuck subscription was detached");
    // A dropped subscription holds nobody up either.
    let left = log.subscribe(1);
    drop(left);
    publish(&js, 30).await;
    let (busy_saw, stuck_saw) = tokio::join!(read_to(&mut busy, 230), read_to(&mut stuck, 230));
    assert_eq!(busy_saw, (201..=230).collect::<Vec<_>>());
    assert_eq!(stuck_saw, (201..=230).collect::<Vec<_>>());
}

#[test]
fn the_part_of_a_chunk_a_subscription_wants_skips_what_it_has_across_gaps() {
    let chunk = Arc::new(Chunk {
        items: vec![3, 7, 8, 12],
        last_seq: 13,
        read: 6,
        caught_up: false,
        pending: 5,
    });
    let whole = part_for(&chunk, 3, identity).expect("all of it");
    assert!(Arc::ptr_eq(&whole, &chunk), "shared, not copied");
    let part = part_for(&chunk, 8, identity).expect("the end of it");
    assert_eq!(part.items, vec![8, 12]);
    assert_eq!((part.last_seq, part.pending), (13, 5));
    let tail = part_for(&chunk, 13, identity).expect("nothing decoded, but the position");
    assert!(tail.items.is_empty());
    assert_eq!(tail.last_seq, 13);
    assert!(part_for(&chunk, 14, identity).is_none());
}
