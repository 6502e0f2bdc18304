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
async fn a_key_that_held_a_value_inside_a_group_is_not_overwritten() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let (client, bucket) = bucket(&server).await;
    let taken = GROUP + 476;
    bucket.put(key(taken), "old".into()).await.expect("put");
    let handed_back = create_all(&client, &bucket, entries(0..TOTAL))
        .await
        .expect("create");
    assert_eq!(handed_back, entries(GROUP..TOTAL), "its group and the rest");
    all_hold_their_values(&bucket, 0..taken).await;
    assert_eq!(value(&bucket, &key(taken)).await, Some("old".into()));
    for i in taken + 1..TOTAL {
        assert_eq!(value(&bucket, &key(i)).await, None, "{i} was refused");
    }
}

#[tokio::test]
async fn a_write_between_two_messages_of_a_call_refuses_everything_after_it() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let (client, bucket) = bucket(&server).await;
    let js = jetstream::new(client.clone());
    let mut chain = Chain::new(&bucket);
    let first = chain
        .send_group(&client, &js, &entries(0..3))
        .await
        .expect("send");
    assert!(
        first.settle().await.expect("settle"),
        "nothing came between"
    );
    // Another writer creates a new key between two messages of the chain: neither the stream's
    // subject count nor its sequence would show that one of ours is missing.
    bucket.put("foreign", "x".into()).await.expect("put");
    let second = chain
        .send_group(&client, &js, &entries(3..10))
        .await
        .expect("send");
    assert!(!second.settle().await.expect("settle"), "not proven whole");
    all_hold_their_values(&bucket, 0..3).await;
    for i in 3..10 {
        assert_eq!(value(&bucket, &key(i)).await, None, "{i} was refused");
    }
}

#[tokio::test]
async fn a_created_record_names_no_other_key() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let (client, bucket) = bucket(&server).await;
    let handed_back = create_all(&client, &bucket, entries(0..GROUP + 10))
        .await
        .expect("create");
    assert!(handed_back.is_empty());
    // What an account reads of its own record through a direct-get import.
    for i in [0, 1, GROUP - 1, GROUP, GROUP + 9] {
        let own = format!("{}{}", bucket.prefix, key(i));
        let stored = bucket
            .stream
            .direct_get_last_for_subject(own.as_str())
            .await
            .expect("direct get");
        for (name, values) in stored.headers.iter() {
            for value in values {
                let value = value.as_str();
                assert!(
                    !value.contains("$KV.") || value == own,
                    "{own} carries {name}: {value}"
                );
            }
        }
    }
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
