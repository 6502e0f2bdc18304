//! Grouped creates against a real nats-server: a group is acknowledged only when all of it was
//! stored in order with nothing in between; a refused group is handed back with everything
//! after it and replaced with compare-and-set.

use super::*;
use async_nats::jetstream;

async fn bucket(server: &natster_testkit::PlainServer) -> (async_nats::Client, kv::Store) {
    let client = server.connect().await.expect("connect");
    let bucket = jetstream::new(client.clone())
        .create_key_value(kv::Config {
            bucket: "T".into(),
            ..Default::default()
        })
        .await
        .expect("bucket");
    (client, bucket)
}

fn key(i: usize) -> String {
    format!("k{i:05}")
}

fn entries(range: std::ops::Range<usize>) -> Vec<(String, Bytes)> {
    range.map(|i| (key(i), Bytes::from(key(i)))).collect()
}

async fn value(bucket: &kv::Store, key: &str) -> Option<Bytes> {
    bucket.get(key).await.expect("get")
}

async fn all_hold_their_values(bucket: &kv::Store, range: std::ops::Range<usize>) {
    for i in range {
        assert_eq!(value(bucket, &key(i)).await, Some(Bytes::from(key(i))));
    }
}

const TOTAL: usize = 2 * GROUP + 952;

#[tokio::test]
async fn new_keys_are_created_in_whole_groups() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let (client, bucket) = bucket(&server).await;
    let handed_back = create_all(&client, &bucket, entries(0..TOTAL))
        .await
        .expect("create");
    assert!(handed_back.is_empty());
    all_hold_their_values(&bucket, 0..TOTAL).await;
    let state = crate::store::log::state(&bucket.stream)
        .await
        .expect("state");
    assert_eq!(state.messages, TOTAL as u64, "each written once");
}

#[tokio::test]
async fn a_refused_group_is_handed_back_with_everything_after_it() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let (client, bucket) = bucket(&server).await;
    // The second group's first key is taken: that group is refused whole.
    bucket.put(key(GROUP), "old".into()).await.expect("put");
    let handed_back = create_all(&client, &bucket, entries(0..TOTAL))
        .await
        .expect("create");
    assert_eq!(handed_back, entries(GROUP..TOTAL));
    all_hold_their_values(&bucket, 0..GROUP).await;
    assert_eq!(value(&bucket, &key(GROUP)).await, Some("old".into()));
    for i in GROUP + 1..TOTAL {
        assert_eq!(
            value(&bucket, &key(i)).await,
            None,
            "{i} was refused or not sent"
        );
    }
    replace_all(&client, &bucket, handed_back, 16)
        .await
        .expect("replace");
    all_hold_their_values(&bucket, 0..TOTAL).await;
}

#[tokio::test]
async fn a_key_that_held_a_value_inside_a_group_is_a_conflict() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let (client, bucket) = bucket(&server).await;
    bucket
        .put(key(GROUP + 476), "old".into())
        .await
        .expect("put");
    let error = create_all(&client, &bucket, entries(0..TOTAL))
        .await
        .expect_err("a conflict");
    assert_eq!(error.kind(), StoreErrorKind::Conflict, "{error}");
}

#[tokio::test]
async fn a_group_sent_after_a_sequence_that_moved_is_refused_whole() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let (client, bucket) = bucket(&server).await;
    bucket.put("foreign", "x".into()).await.expect("put");
    let foreign = bucket.put("foreign", "y".into()).await.expect("put");
    let prefix = bucket.prefix.clone();
    let js = jetstream::new(client.clone());
    let group = entries(0..10);
    // As if `foreign` had been written after this writer read the stream's end.
    let sent = send_group(&client, &js, &bucket, &prefix, &group, foreign - 1)
        .await
        .expect("send")
        .settle()
        .await
        .expect("settle");
    assert_eq!(sent, None, "not proven whole");
    for (key, _) in &group {
        assert_eq!(value(&bucket, key).await, None, "{key} was refused");
    }
    let sent = send_group(&client, &js, &bucket, &prefix, &entries(10..20), foreign)
        .await
        .expect("send")
        .settle()
        .await
        .expect("settle");
    assert_eq!(
        sent,
        Some(foreign + 10),
        "sent after the stream's end: whole"
    );
}

#[tokio::test]
async fn a_replicated_bucket_is_handed_back_whole_and_replaced() {
    let cluster = natster_testkit::Cluster::start_plain()
        .await
        .expect("cluster");
    let client = async_nats::connect(cluster.urls().as_slice())
        .await
        .expect("connect");
    let bucket = jetstream::new(client.clone())
        .create_key_value(kv::Config {
            bucket: "T".into(),
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("bucket");
    let handed_back = create_all(&client, &bucket, entries(0..TOTAL))
        .await
        .expect("create");
    assert_eq!(handed_back, entries(0..TOTAL), "nothing sent");
    assert_eq!(
        crate::store::log::state(&bucket.stream)
            .await
            .expect("state")
            .messages,
        0
    );
    the_bucket_answers_reads(&client, &bucket).await;
    replace_all(&client, &bucket, handed_back, 16)
        .await
        .expect("replace");
    all_hold_their_values(&bucket, 0..TOTAL).await;
}

/// Waits until reads of a bucket just created on a cluster are answered: until the servers
/// know a replica listens for them, a read gets "no responders" (503), as a starting
/// instance's would (its runner tries again).
async fn the_bucket_answers_reads(client: &async_nats::Client, bucket: &kv::Store) {
    crate::store::with_patience(|| super::super::load_many(client, bucket, [key(0)], 1))
        .await
        .expect("the bucket answers a read");
}
