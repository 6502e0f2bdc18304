//! Standing work down while signals say so: a follower's watch of a bucket this instance is
//! writing in bulk, or a snapshot write, while the projections catch up in passes.

use futures::future::{select_all, BoxFuture};
use tokio::sync::watch;

/// Asked for while any of its signals reads `true`; a signal whose sender is gone asks for
/// nothing. Cheap to clone.
#[derive(Clone, Default)]
pub struct Pause(Vec<watch::Receiver<bool>>);

impl Pause {
    /// Never asked for.
    pub fn never() -> Pause {
        Pause::default()
    }

    /// Asked for while any of `signals` reads `true`.
    pub fn while_any_raised(signals: impl IntoIterator<Item = watch::Receiver<bool>>) -> Pause {
        Pause(signals.into_iter().collect())
    }

    /// Resolves once a pause is asked for; never without signals. Cancellation-safe. Makes one
    /// future per signal: make it once and poll it, rather than once per event of a loop.
    pub async fn asked(&mut self) {
        if self.0.is_empty() {
            return std::future::pending().await;
        }
        let raised = self.0.iter_mut().map(|signal| -> BoxFuture<'_, ()> {
            Box::pin(async move {
                if signal.wait_for(|raised| *raised).await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
        });
        select_all(raised).await;
    }

    /// Resolves once no pause is asked for (every signal reads `false`). Cancellation-safe.
    pub async fn lifted(&mut self) {
        for signal in &mut self.0 {
            let _ = signal.wait_for(|raised| !*raised).await;
        }
    }
}
