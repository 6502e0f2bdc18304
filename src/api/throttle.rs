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

    /// Takes `account`'s turn for a refusal: when it goes out, after the delay and after the
    /// account's refusals decided before it (at most [`REFUSALS_PER_SECOND`] a second); `None`
    /// (counted as dropped) if the account, or everybody, already has the most refusals held —
    /// taken before the reply is built, so a refusal that is never sent costs nothing more.
    pub fn turn(&self, account: &str) -> Option<Turn> {
        let inner = &self.inner;
        if inner.delay.is_zero() {
            return Some(Turn { at: None });
        }
        let early = tokio::time::Instant::now() + inner.delay.mul_f64(1.0 + rand::random::<f64>());
        let mut held = inner.held.lock().expect("throttle lock");
        if held.total >= MAX_HELD {
            inner.dropped.inc();
            return None;
        }
        let mine = held.by_account.entry_ref(account).or_insert(Account {
            held: 0,
            next: early,
        });
        if mine.held >= MAX_HELD_PER_ACCOUNT {
            inner.dropped.inc();
            return None;
        }
        let at = early.max(mine.next);
        mine.next = at + Duration::from_secs(1) / REFUSALS_PER_SECOND;
        mine.held += 1;
        held.total += 1;
        let release = Release {
            inner: inner.clone(),
            account: account.to_string(),
        };
        Some(Turn {
            at: Some((at, release)),
        })
    }

    /// Sends `refusal` in `turn` (at once for a zero delay). Returns at once otherwise.
    pub async fn send(&self, turn: Turn, refusal: Refusal) {
        let Some((at, release)) = turn.at else {
            send(&self.inner.client, refusal).await;
            return;
        };
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            send(&release.inner.client, refusal).await;
            drop(release);
        });
    }
}

/// A refusal's place in its account's queue (see [`Throttle::turn`]); given back when the
/// refusal is sent, or when the turn is dropped unused.
pub struct Turn {
    at: Option<(tokio::time::Instant, Release)>,
}

/// Gives a held refusal's place back when dropped.
struct Release {
    inner: Arc<Inner>,
    account: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let mut held = self.inner.held.lock().expect("throttle lock");
        held.total -= 1;
        if let Some(mine) = held.by_account.get_mut(&self.account) {
            mine.held -= 1;
            if mine.held == 0 {
                held.by_account.remove(&self.account);
            }
        }
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
