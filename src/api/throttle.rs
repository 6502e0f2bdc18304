//! Refusals answered late: a refusal (429, or a 503 for a read of a sequence the log has not
//! reached) goes out between one and two `delay`s after it is decided (spread at random, so
//! refusals decided in one burst do not come back as one), and a client that sends again as
//! soon as it is refused (a loop with no back-off) is slowed instead of spinning. A held
//! refusal holds no slot: only its reply subject and envelope.
//!
//! Paced: one account's refusals go out at most [`REFUSALS_PER_SECOND`] a second, in the
//! order they were decided (each at least its delay late), so what a flooding account gets
//! back — and what answering it costs the server and everybody beside it — does not grow
//! with the requests it keeps in flight.
//!
//! Bounded: at most [`MAX_HELD_PER_ACCOUNT`] refusals held per account and [`MAX_HELD`] in
//! all; beyond either, the request gets no reply (the client's request times out, which slows
//! it further) and is counted in `natster_refusals_dropped_total`.

use bytes::Bytes;
use hashbrown::HashMap;
use prometheus_client::metrics::counter::Counter;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Refusals one account may have held at once.
pub const MAX_HELD_PER_ACCOUNT: usize = 1_024;
/// Refusals held at once, all accounts together (each about 300 bytes).
pub const MAX_HELD: usize = 65_536;
/// Refusals sent to one account per second at most (twice its default write budget).
pub const REFUSALS_PER_SECOND: u32 = 200;

/// Holds refusals until their delay has passed; cheap to clone.
#[derive(Clone)]
pub struct Throttle {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    delay: Duration,
    held: Mutex<Held>,
    dropped: Counter,
}

#[derive(Default)]
struct Held {
    by_account: HashMap<String, Account>,
    total: usize,
}

/// One account's refusals held.
struct Account {
    held: usize,
    /// The earliest its next refusal may go out.
    next: tokio::time::Instant,
}

/// A refusal's reply, ready to send.
pub struct Refusal {
    pub reply: async_nats::Subject,
    pub headers: async_nats::HeaderMap,
    pub envelope: Bytes,
}

impl Throttle {
    /// Sends refusals on `client` one to two `delay`s after they are handed over (at once for
    /// a zero delay); `dropped` counts the ones never sent.
    pub fn new(client: async_nats::Client, delay: Duration, dropped: Counter) -> Throttle {
        Throttle {
            inner: Arc::new(Inner {
                client,
                delay,
                held: Mutex::new(Held::default()),
                dropped,
            }),
        }
    }

    /// Sends `refusal` to `account`'s request after the delay and after the account's
    /// refusals handed over before it (at most [`REFUSALS_PER_SECOND`] a second), or never if
    /// the account (or everybody) already has the most refusals held. Returns at once.
    pub async fn refuse(&self, account: &str, refusal: Refusal) {
        let inner = &self.inner;
        if inner.delay.is_zero() {
            send(&inner.client, refusal).await;
            return;
        }
        let early = tokio::time::Instant::now() + inner.delay.mul_f64(1.0 + rand::random::<f64>());
        let at = {
            let mut held = inner.held.lock().expect("throttle lock");
            if held.total >= MAX_HELD {
                inner.dropped.inc();
                return;
            }
            let mine = held.by_account.entry_ref(account).or_insert(Account {
                held: 0,
                next: early,
            });
            if mine.held >= MAX_HELD_PER_ACCOUNT {
                inner.dropped.inc();
                return;
            }
            let at = early.max(mine.next);
            mine.next = at + Duration::from_secs(1) / REFUSALS_PER_SECOND;
            mine.held += 1;
            held.total += 1;
            at
        };
        let (inner, account) = (self.inner.clone(), account.to_string());
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            send(&inner.client, refusal).await;
            let mut held = inner.held.lock().expect("throttle lock");
            held.total -= 1;
            if let Some(mine) = held.by_account.get_mut(&account) {
                mine.held -= 1;
                if mine.held == 0 {
                    held.by_account.remove(&account);
                }
            }
        });
    }
}

async fn send(client: &async_nats::Client, refusal: Refusal) {
    if let Err(error) = client
        .publish_with_headers(refusal.reply, refusal.headers, refusal.envelope)
        .await
    {
        tracing::warn!(%error, "refusal could not be sent");
    }
}
