//! The compare-and-set layer against a real nats-server: each kind of failure as the server
//! really produces it.

use super::many::KEYS_PER_READ;
use super::*;
use crate::store::error::StoreErrorKind;
use async_nats::jetstream;
use std::time::Duration;

async fn bucket(server: &natster_testkit::PlainServer) -> kv::Store {
    let mut js = jetstream::new(server.connect().await.expect("connect"));
    js.set_timeout(Duration::from_millis(500));
    js.create_key_value(kv::Config {
        bucket: "T".into(),
        ..Default::default()
    })
    .await
    .expect("bucket")
}

#[tokio::test]
async fn a_moved_revision_or_an_existing_key_is_a_conflict() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let bucket = bucket(&server).await;
    let first = write(&bucket, "k", Some(&1u32), None)
        .await
        .expect("create");
    let second = write(&bucket, "k", Some(&2u32), first)
        .await
        .expect("update");
    let stale = write(&bucket, "k", Some(&3u32), first).await.unwrap_err();
    assert_eq!(stale.kind(), StoreErrorKind::Conflict, "{stale}");
    let taken = create(&bucket, "k", encode(&4u32)).await.unwrap_err();
    assert_eq!(taken.kind(), StoreErrorKind::Conflict, "{taken}");
    let read: Versioned<u32> = load(&bucket, "k").await.expect("read");
    assert_eq!((read.value, read.revision), (Some(2), second));
    assert_eq!(
        write::<u32>(&bucket, "k", None, second)
            .await
            .expect("delete"),
        None
    );
    let gone: Versioned<u32> = load(&bucket, "k").await.expect("read");
    assert!(gone.value.is_none() && gone.revision.is_some());
}

#[tokio::test]
async fn a_value_or_key_the_server_refuses_is_permanent() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let bucket = bucket(&server).await;
    let too_large = Bytes::from(vec![b'x'; 2 * 1024 * 1024]);
    for revision in [None, Some(1)] {
        let error = write_bytes(&bucket, "big", Some(too_large.clone()), revision)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Permanent, "{error}");
    }
    let error = write(&bucket, "café", Some(&1u32), None).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Permanent, "{error}");
    put(&bucket, "junk", Bytes::from_static(b"not json"))
        .await
        .expect("put");
    let error = load::<u32>(&bucket, "junk").await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Permanent, "{error}");
}

#[tokio::test]
async fn a_server_that_is_gone_is_unavailable() {
    let mut server = natster_testkit::PlainServer::start().await.expect("server");
    let bucket = bucket(&server).await;
    write(&bucket, "k", Some(&1u32), None)
        .await
        .expect("create");
    server.server.kill();
    let error = load::<u32>(&bucket, "k").await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
    let error = write(&bucket, "k", Some(&2u32), Some(1)).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
}

#[tokio::test]
async fn a_batched_read_answers_what_reads_key_by_key_answer() {
    let server = natster_testkit::PlainServer::start().await.expect("server");
    let bucket = bucket(&server).await;
    let client = server.connect().await.expect("connect");
    // More keys than one request asks for: values, a deleted key, a key rewritten, and keys
    // never written, interleaved.
    let mut keys = Vec::new();
    for i in 0..(KEYS_PER_READ * 2 + 44) {
        let key = format!("k.{i}");
        match i % 4 {
            0 => {}
            1 => {
                put(&bucket, &key, encode(&i)).await.expect("put");
            }
            2 => {
                put(&bucket, &key, encode(&i)).await.expect("put");
                delete(&bucket, &key).await.expect("delete");
            }
            _ => {
                put(&bucket, &key, encode(&i)).await.expect("put");
                put(&bucket, &key, encode(&(i * 10))).await.expect("put");
            }
        }
        keys.push(key);
    }
    let mut read = load_many(&client, &bucket, keys.clone(), 3)
        .await
        .expect("batched read");
    read.sort_by_key(|(key, _)| keys.iter().position(|k| k == key));
    assert_eq!(read.len(), keys.len());
    for ((key, batched), asked) in read.iter().zip(&keys) {
        assert_eq!(key, asked);
        let single = load_bytes(&bucket, key).await.expect("read");
        assert_eq!(batched, &single, "{key}");
    }
    let values = read.iter().filter(|(_, v)| v.value.is_some()).count();
    let deleted = read
        .iter()
        .filter(|(_, v)| v.value.is_none() && v.revision.is_some())
        .count();
    assert_eq!((values, deleted), (keys.len() / 2, keys.len() / 4));
    // Keys none of which was ever written.
    let absent = load_many(&client, &bucket, vec!["nope.1".into(), "nope.2".into()], 1)
        .await
        .expect("batched read");
    assert!(absent.iter().all(|(_, v)| *v == Versioned::default()));
}
