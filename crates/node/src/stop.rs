//! Stopping client connections: drain (close once idle, answer what is in
//! flight) and cut (after the drain timeout).
//!
//! Each connection has a [`ConnStop`]: a state word and the connection
//! task's waker. Checking it is an atomic load and, when waiting, an
//! [`AtomicWaker`] registration (a no-op when the waker is the same), so a
//! connection task can look at it on every wake-up. (A `CancellationToken`
//! per wake-up, taking its lock each time, was a measurable share of a
//! keep-alive request.) The listener keeps all of them in [`Stops`] and
//! flips them together.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

// 0: running.
const DRAINING: u8 = 1;
const CUT: u8 = 2;

/// One connection's stop signal.
#[derive(Default)]
pub(crate) struct ConnStop {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl ConnStop {
    fn poll_state(&self, cx: &mut Context<'_>, at_least: u8) -> Poll<()> {
        if self.state.load(Ordering::Acquire) >= at_least {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Set between the load and the registration: seen now.
        if self.state.load(Ordering::Acquire) >= at_least {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Ready once the node drains (or cuts).
    pub(crate) fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_state(cx, DRAINING)
    }

    /// Resolves once the node drains.
    pub(crate) fn drained(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_drained(cx))
    }

    fn raise(&self, to: u8) {
        self.state.fetch_max(to, Ordering::AcqRel);
        self.waker.wake();
    }
}

/// The stop signals of a listener's open connections.
#[derive(Default)]
pub(crate) struct Stops {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<ConnStop>>>,
}

impl Stops {
    /// A new connection's signal, dropped from the set with the guard.
    pub(crate) fn register(self: &Arc<Self>) -> (Arc<ConnStop>, StopGuard) {
        let stop = Arc::new(ConnStop::default());
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, stop.clone());
        (
            stop,
            StopGuard {
                stops: self.clone(),
                key,
            },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnStop>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn raise(&self, to: u8) {
        for stop in self.lock().values() {
            stop.raise(to);
        }
    }

    /// Every connection: close once idle.
    pub(crate) fn drain(&self) {
        self.raise(DRAINING);
    }

    /// Every connection: close now.
    pub(crate) fn cut(&self) {
        self.raise(CUT);
    }
}

/// Removes a connection's signal from its [`Stops`] when dropped.
pub(crate) struct StopGuard {
    stops: Arc<Stops>,
    key: u64,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.stops.lock().remove(&self.key);
    }
}

/// Keeps `fut` from being polled once its connection is cut.
pub(crate) async fn until_cut<F: Future>(stop: &ConnStop, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = Pin::new(&mut fut).as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        stop.poll_state(cx, CUT).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_wakes_a_waiting_connection_and_cut_ends_it() {
        let stops = Arc::new(Stops::default());
        let (stop, guard) = stops.register();
        let s2 = stop.clone();
        let waiter = tokio::spawn(async move { s2.drained().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        stops.drain();
        waiter.await.expect("drained");
        let s3 = stop.clone();
        let work = tokio::spawn(async move { until_cut(&s3, std::future::pending::<()>()).await });
        tokio::task::yield_now().await;
        stops.cut();
        assert_eq!(work.await.expect("joined"), None);
        drop(guard);
        assert!(stops.lock().is_empty());
    }
}
