//! The daemon-wide limit on snapshots running at once (`snapshot.max_concurrent`). Workers
//! queue for a slot in the order they asked, except that pre-repair snapshots go ahead of every
//! other waiter: a repair holding its locks must not wait behind a hundred nightly dumps. A
//! waiter that gives up (its snapshot was aborted) leaves the queue; a slot is returned when
//! its permit is dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
struct State {
    limit: usize,
    running: usize,
    /// Tickets waiting, in the order they will be served; `bool` is priority.
    queue: VecDeque<(u64, bool)>,
    next_ticket: u64,
}

pub struct Gate {
    state: Mutex<State>,
    changed: Notify,
}

/// A slot; returned to the gate when dropped.
pub struct Permit {
    gate: Arc<Gate>,
}

/// Removes a ticket that stopped waiting (its future was dropped) from the queue.
struct Ticket<'a> {
    gate: &'a Gate,
    id: u64,
    served: bool,
}

impl Gate {
    pub fn new(limit: usize) -> Arc<Gate> {
        let state = State { limit: limit.max(1), ..State::default() };
        Arc::new(Gate { state: Mutex::new(state), changed: Notify::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new limit (on reload); waiters are served at once if it grew.
    pub fn set_limit(&self, limit: usize) {
        self.lock().limit = limit.max(1);
        self.changed.notify_waiters();
    }

    /// (running, waiting, limit), for status and metrics.
    pub fn counts(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.running, s.queue.len(), s.limit)
    }

    /// Waits for a slot; `priority` goes ahead of every non-priority waiter.
    pub async fn acquire(self: &Arc<Gate>, priority: bool) -> Permit {
        let id = {
            let mut s = self.lock();
            let id = s.next_ticket;
            s.next_ticket += 1;
            let at = if priority { s.queue.iter().take_while(|(_, p)| *p).count() } else { s.queue.len() };
            s.queue.insert(at, (id, priority));
            id
        };
        let mut ticket = Ticket { gate: self, id, served: false };
        loop {
            // Registered before the check, so a release between the check and the wait is seen.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if s.running < s.limit && s.queue.front().map(|(t, _)| *t) == Some(id) {
                    s.queue.pop_front();
                    s.running += 1;
                    ticket.served = true;
                    drop(s);
                    // The next in line may fit too (the limit is above one).
                    self.changed.notify_waiters();
                    return Permit { gate: self.clone() };
                }
            }
            notified.await;
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.served {
            self.gate.lock().queue.retain(|(t, _)| *t != self.id);
            self.gate.changed.notify_waiters();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.lock().running -= 1;
        self.gate.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::Gate;

    #[tokio::test]
    async fn fair_with_pre_repair_first_and_never_over_the_limit() {
        let gate = Gate::new(1);
        let first = gate.acquire(false).await;
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, prio) in [("a", false), ("b", false), ("repair", true), ("c", false)] {
            let (g, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = g.acquire(prio).await;
                assert_eq!(g.counts().0, 1, "never more than the limit");
                order.lock().unwrap().push(name);
            }));
            // Each waiter is queued before the next one asks.
            while gate.counts().1 < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["repair", "a", "b", "c"]);
        assert_eq!(gate.counts(), (0, 0, 1));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let gate = Gate::new(1);
        let held = gate.acquire(false).await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), gate.acquire(false)).await;
        assert!(waiting.is_err());
        assert_eq!(gate.counts(), (1, 0, 1));
        drop(held);
        let _again = gate.acquire(false).await;
    }
}
