//! Test guest `hog`: `handle` allocates memory until something stops it.
//!
//! The host's integration tests load it to prove that the per-instance
//! memory limit holds: linear memory grows by a mebibyte at a time until the
//! host refuses to grow it, the allocation fails and the guest traps.

use sluice_guest::{Config, Handler, Message, Origin, Verdict};

/// Grow in steps big enough to reach any sane limit quickly.
const CHUNK: usize = 1 << 20;
/// Write one byte per host page so the memory is really committed, not just
/// reserved.
const TOUCH_STRIDE: usize = 4096;

struct Hog;

impl Handler for Hog {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn handle(&self, _origin: &Origin, _msg: Message) -> Verdict {
        let mut kept: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            chunk
                .iter_mut()
                .step_by(TOUCH_STRIDE)
                .for_each(|byte| *byte = 1);
            // `black_box` keeps the optimiser from dropping the unused
            // allocations (and with them the growth this guest exists for).
            kept.push(std::hint::black_box(chunk));
            std::hint::black_box(&kept);
        }
    }
}

sluice_guest::export_handler!(Hog);
