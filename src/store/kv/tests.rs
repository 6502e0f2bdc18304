//! The compare-and-set layer against a real nats-server: each kind of failure as the server
//! really produces it.

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
