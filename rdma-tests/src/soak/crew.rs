//! The worker threads of the bursts. They start before the slots are laid out and live for the
//! whole run, because starting a thread maps a small signal stack wherever the kernel finds
//! room, which could be a slot's range left free for a moment (or a parking range).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::{Scope, ScopedJoinHandle};

use super::wire::Exec;
use super::zone::Zone;

enum Order {
    /// The zone this worker owns from now on.
    Take(Box<Zone>),
    /// `n` operations in the zone.
    Burst(u64),
}

/// The workers, each waiting for its next order.
pub(crate) struct Crew<'scope> {
    orders: Vec<Sender<Order>>,
    /// One message per finished burst: whether it ended without a panic.
    done: Receiver<bool>,
    handles: Vec<ScopedJoinHandle<'scope, Option<Zone>>>,
}

impl<'scope> Crew<'scope> {
    /// Starts `workers` threads in `scope` that run their bursts through `exec`.
    pub(crate) fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        exec: &'env Exec<'env>,
        workers: usize,
    ) -> Self {
        let (done_tx, done) = channel();
        let mut orders = Vec::new();
        let handles = (0..workers)
            .map(|_| {
                let (order_tx, order_rx) = channel();
                orders.push(order_tx);
                let done_tx = done_tx.clone();
                scope.spawn(move || work(exec, &order_rx, &done_tx))
            })
            .collect();
        Self {
            orders,
            done,
            handles,
        }
    }

    /// Gives each worker its zone.
    pub(crate) fn hand_out(&self, zones: Vec<Zone>) {
        assert_eq!(zones.len(), self.orders.len(), "a zone per worker");
        for (orders, zone) in self.orders.iter().zip(zones) {
            orders
                .send(Order::Take(Box::new(zone)))
                .expect("worker alive");
        }
    }

    /// Every worker does `ops` operations in its zone, all at once; returns when all are done.
    ///
    /// # Panics
    ///
    /// When a worker panicked (its own message is printed first).
    pub(crate) fn burst(&self, ops: u64) {
        for orders in &self.orders {
            orders.send(Order::Burst(ops)).expect("worker alive");
        }
        let failed = (0..self.orders.len())
            .filter(|_| !self.done.recv().expect("workers report"))
            .count();
        assert_eq!(failed, 0, "{failed} worker threads failed (see above)");
    }

    /// Stops the workers and returns their zones.
    pub(crate) fn finish(self) -> Vec<Zone> {
        drop(self.orders);
        self.handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| resume_unwind(panic))
                    .expect("every worker got a zone")
            })
            .collect()
    }
}

/// A worker: takes orders until the crew drops its sender.
fn work(exec: &Exec<'_>, orders: &Receiver<Order>, done: &Sender<bool>) -> Option<Zone> {
    let mut zone = None;
    while let Ok(order) = orders.recv() {
        match order {
            Order::Take(mine) => zone = Some(*mine),
            Order::Burst(ops) => {
                let zone = zone.as_mut().expect("a zone before a burst");
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    for _ in 0..ops {
                        zone.step(exec);
                    }
                }));
                // Tell the crew first, so that it never waits for a worker that died.
                let _ = done.send(outcome.is_ok());
                if let Err(panic) = outcome {
                    resume_unwind(panic);
                }
            }
        }
    }
    zone
}
