//! A single-slot mailbox holding only the newest value: a source that
//! produces states faster than the reconciler applies them just overwrites,
//! so the reconciler always works on the latest cluster state.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

pub struct Latest<T> {
    slot: Mutex<(Option<T>, u64)>,
    cv: Condvar,
}

impl<T> Default for Latest<T> {
    fn default() -> Self {
        Latest {
            slot: Mutex::new((None, 0)),
            cv: Condvar::new(),
        }
    }
}

impl<T> Latest<T> {
    pub fn publish(&self, v: T) {
        let mut g = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = Some(v);
        g.1 += 1;
        self.cv.notify_all();
    }

    /// Takes the newest value, waiting up to `timeout` for one.
    pub fn take(&self, timeout: Duration) -> Option<T> {
        let g = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let (mut g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |s| s.0.is_none())
            .unwrap_or_else(|e| e.into_inner());
        g.0.take()
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
}
