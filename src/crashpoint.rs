//! Crash points: named places where a test build (feature `test-util`) halts the task that
//! reaches them, so a test can kill the process exactly there and see what a restart
//! recovers. `NATSTER_HALT_AT=<point>[,<point>…]` names the points to halt at; a halted task
//! logs one warn line naming its point. In a product build they compile to nothing.

/// A projection flush has stored its counters and not yet announced its notices.
pub const BEFORE_ANNOUNCE: &str = "before-announce";
/// A pass of a catch-up in passes has written its records and not yet recorded that it did.
pub const PASS_WRITTEN: &str = "pass-written";
/// The share feed has received an event and not yet published its notice.
pub const BEFORE_SHARE_NOTICE: &str = "before-share-notice";

/// Returns at once, unless this is a test build told to halt at `point`: then never.
#[cfg(feature = "test-util")]
pub async fn reached(point: &str) {
    static HALT_AT: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let halt_at = HALT_AT.get_or_init(|| {
        std::env::var("NATSTER_HALT_AT")
            .map(|points| points.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    });
    if halt_at.iter().any(|p| p == point) {
        tracing::warn!(point, "halted at a crash point");
        std::future::pending::<()>().await;
    }
}

/// Returns at once (a product build has no crash points).
#[cfg(not(feature = "test-util"))]
pub async fn reached(_point: &str) {}
