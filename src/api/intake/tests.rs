//! The intake's loop: what it answers itself and what it hands to a task.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

#[tokio::test]
async fn a_run_that_need_not_wait_is_finished_in_the_loop_and_one_that_waits_gets_a_task() {
    let tracker = TaskTracker::new();
    let finished = Arc::new(AtomicUsize::new(0));
    let done = finished.clone();
    answer_inline_or_spawn(
        Box::pin(async move {
            done.fetch_add(1, Ordering::SeqCst);
        }),
        &tracker,
    )
    .await;
    assert_eq!(finished.load(Ordering::SeqCst), 1, "answered in the loop");
    assert_eq!(tracker.len(), 0, "no task for it");

    let (release, released) = oneshot::channel::<()>();
    let done = finished.clone();
    answer_inline_or_spawn(
        Box::pin(async move {
            let _ = released.await;
            done.fetch_add(1, Ordering::SeqCst);
        }),
        &tracker,
    )
    .await;
    assert_eq!(tracker.len(), 1, "a waiting run goes on in a task");
    release.send(()).expect("the run waits");
    tracker.close();
    tracker.wait().await;
    assert_eq!(finished.load(Ordering::SeqCst), 2, "and finishes there");
}

#[tokio::test]
async fn a_panic_in_the_first_poll_ends_that_run_only() {
    let tracker = TaskTracker::new();
    let held = Arc::new(());
    let in_run = held.clone();
    answer_inline_or_spawn(
        Box::pin(async move {
            let _held = in_run;
            panic!("a handler bug");
        }),
        &tracker,
    )
    .await;
    assert_eq!(tracker.len(), 0);
    assert_eq!(
        Arc::strong_count(&held),
        1,
        "what the run held is given back"
    );
}
