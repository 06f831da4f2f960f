//! The calling thread's own CPU time, for measures of what a path costs
//! rather than how fast it runs (`weft-bench`'s per-packet cost).

use crate::error::KernelError;
use nix::time::{clock_gettime, ClockId};
use std::time::Duration;

/// CPU time the calling thread has used, to the nanosecond:
/// `CLOCK_THREAD_CPUTIME_ID`, which brings the running thread's account up
/// to date when read (`/proc/thread-self/schedstat` lags by up to a
/// scheduler tick).
pub fn thread_cpu_time() -> Result<Duration, KernelError> {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_err(|e| KernelError::io("clock_gettime", std::io::Error::from(e)))?;
    Ok(Duration::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_with_work_and_not_with_sleep() {
        let a = thread_cpu_time().unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = thread_cpu_time().unwrap();
        assert!(b > a);
        std::thread::sleep(Duration::from_millis(50));
        let c = thread_cpu_time().unwrap();
        assert!(c - b < Duration::from_millis(25), "{:?}", c - b);
    }
}
