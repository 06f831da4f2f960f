//! A single-slot mailbox holding only the newest value: a source that
//! produces states faster than the reconciler applies them just overwrites,
//! so the reconciler always works on the latest cluster state.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

pub struct Latest<T> {
    slot: Mutex<Slot<T>>,
    cv: Condvar,
}

struct Slot<T> {
    value: Option<T>,
    /// Set by `close`: the consumer is to stop (a signal arrived).
    closed: bool,
}

impl<T> Default for Latest<T> {
    fn default() -> Self {
        Latest {
            slot: Mutex::new(Slot {
                value: None,
                closed: false,
            }),
            cv: Condvar::new(),
        }
    }
}

impl<T> Latest<T> {
    pub fn publish(&self, v: T) {
        let mut g = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        g.value = Some(v);
        self.cv.notify_all();
    }

    /// Takes the newest value, waiting up to `timeout` for one. Returns
    /// at once, with nothing, once closed.
    pub fn take(&self, timeout: Duration) -> Option<T> {
        let g = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let (mut g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |s| s.value.is_none() && !s.closed)
            .unwrap_or_else(|e| e.into_inner());
        if g.closed {
            return None;
        }
        g.value.take()
    }

    /// Wakes the consumer for good: `take` returns nothing from now on,
    /// and `is_closed` says why. How a signal reaches a daemon's loop.
    pub fn close(&self) {
        let mut g = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        g.closed = true;
        self.cv.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest() {
        let l = Latest::default();
        l.publish(1);
        l.publish(2);
        assert_eq!(l.take(Duration::from_millis(1)), Some(2));
        assert_eq!(l.take(Duration::from_millis(1)), None);
    }

    #[test]
    fn close_wakes_a_waiting_consumer() {
        let l = std::sync::Arc::new(Latest::<u32>::default());
        let l2 = l.clone();
        let t = std::thread::spawn(move || l2.take(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        l.close();
        assert_eq!(t.join().unwrap(), None);
        assert!(l.is_closed());
        l.publish(1);
        assert_eq!(l.take(Duration::from_secs(60)), None, "closed stays closed");
    }
}
