//! Failure detection for one executor: a crash shows up at once (its
//! connection closes); a hang is a deadline missed while the executor owes
//! an answer to a batch or a ping.

use crate::ids::Micros;

/// Deadlines of a detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// An executor silent this long while it owes an answer is hung.
    pub answer_us: Micros,
    /// Ping an idle executor this often.
    pub heartbeat_us: Micros,
    /// Loading a model may take this long (loading is slow, not hung).
    pub load_us: Micros,
}

/// What the detector wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Nothing; look again after this long.
    Fine {
        /// When to check next.
        after_us: Micros,
    },
    /// Send a ping with this number, then look again.
    Ping {
        /// Ping number (echoed by the pong).
        n: u64,
        /// When to check next.
        after_us: Micros,
    },
    /// The executor is hung or never loaded: kill it (its death follows as an event).
    Kill {
        /// Why.
        reason: String,
    },
}

/// The health of one executor, as its owner sees it.
#[derive(Debug, Clone)]
pub struct Health {
    started: Micros,
    ready_since: Option<Micros>,
    last_seen: Micros,
    ping: Option<(u64, Micros)>,
    next_ping: u64,
}

impl Health {
    /// An executor started at `now`.
    pub fn new(now: Micros) -> Self {
        Health {
            started: now,
            ready_since: None,
            last_seen: now,
            ping: None,
            next_ping: 0,
        }
    }

    /// It said something.
    pub fn seen(&mut self, now: Micros) {
        self.last_seen = now;
    }

    /// Its model is loaded.
    pub fn ready(&mut self, now: Micros) {
        self.ready_since.get_or_insert(now);
        self.last_seen = now;
    }

    /// True once the model is loaded.
    pub fn is_ready(&self) -> bool {
        self.ready_since.is_some()
    }

    /// A pong arrived.
    pub fn pong(&mut self, n: u64, now: Micros) {
        self.last_seen = now;
        if self.ping.is_some_and(|(p, _)| p == n) {
            self.ping = None;
        }
    }

    /// Looks at the executor at `now`; `oldest` is when the oldest batch
    /// still unanswered was sent.
    pub fn check(&mut self, now: Micros, oldest: Option<Micros>, d: Deadlines) -> Check {
        let since = |t: Micros| now.saturating_sub(t);
        let Some(ready) = self.ready_since else {
            if since(self.started) > d.load_us {
                return Check::Kill {
                    reason: format!("did not load its model within {} ms", d.load_us / 1000),
                };
            }
            return Check::Fine {
                after_us: d.heartbeat_us.max(1000),
            };
        };
        // Deadlines run from when the executor had its model loaded.
        let oldest = oldest.map(|o| o.max(ready));
        let waiting_since = match (oldest, self.ping) {
            (Some(o), Some((_, p))) => Some(o.min(p)),
            (o, p) => o.or(p.map(|(_, t)| t)),
        };
        let after_us = d.heartbeat_us.min(d.answer_us / 4).max(1000);
        match waiting_since {
            Some(t) if since(t) > d.answer_us && since(self.last_seen) > d.answer_us => Check::Kill {
                reason: format!("no answer for {} ms", since(t) / 1000),
            },
            Some(_) => Check::Fine { after_us },
            None if since(self.last_seen) >= d.heartbeat_us => {
                let n = self.next_ping;
                self.next_ping += 1;
                self.ping = Some((n, now));
                Check::Ping { n, after_us }
            }
            None => Check::Fine { after_us },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Deadlines = Deadlines {
        answer_us: 500_000,
        heartbeat_us: 100_000,
        load_us: 10_000_000,
    };

    #[test]
    fn a_silent_executor_that_owes_an_answer_is_killed_after_the_deadline() {
        let mut h = Health::new(0);
        h.ready(1_000);
        assert!(matches!(h.check(2_000, Some(1_500), D), Check::Fine { .. }));
        assert!(matches!(h.check(400_000, Some(1_500), D), Check::Fine { .. }));
        assert!(matches!(h.check(600_000, Some(1_500), D), Check::Kill { .. }));
    }

    #[test]
    fn an_idle_executor_is_pinged_and_a_missing_pong_kills_it() {
        let mut h = Health::new(0);
        h.ready(0);
        let Check::Ping { n, .. } = h.check(150_000, None, D) else {
            panic!()
        };
        h.pong(n, 160_000);
        let Check::Ping { .. } = h.check(300_000, None, D) else { panic!() };
        assert!(matches!(h.check(700_000, None, D), Check::Fine { .. }));
        assert!(matches!(h.check(900_000, None, D), Check::Kill { .. }));
    }

    #[test]
    fn loading_is_slow_not_hung_until_the_load_deadline() {
        let mut h = Health::new(0);
        assert!(matches!(h.check(5_000_000, Some(0), D), Check::Fine { .. }));
        assert!(matches!(h.check(11_000_000, Some(0), D), Check::Kill { .. }));
    }
}
