//! Capabilities kept per epoch, exactly as long as a protocol machine says.

use std::collections::BTreeMap;

use hams_protocol::Epoch;
use timely::dataflow::operators::{Capability, InputCapability};

use super::Time;

/// One capability per epoch for each of `N` outputs.
pub struct EpochCaps<const N: usize> {
    caps: BTreeMap<Time, [Option<Capability<Time>>; N]>,
}

impl<const N: usize> Default for EpochCaps<N> {
    fn default() -> Self {
        EpochCaps { caps: BTreeMap::new() }
    }
}

impl<const N: usize> EpochCaps<N> {
    /// Keeps capabilities for every output at the epoch of `cap` (its least
    /// time), if not kept yet; `None` for a message sent under no capability.
    pub fn keep(&mut self, cap: &InputCapability<Time>) -> Option<Epoch> {
        let t = *cap.least()?;
        let held = self.caps.entry(t).or_insert_with(|| std::array::from_fn(|_| None));
        for (i, c) in held.iter_mut().enumerate() {
            if c.is_none() {
                *c = Some(cap.delayed(&t, i));
            }
        }
        Some(Epoch(t))
    }

    /// The capability of output `port` at `epoch`.
    ///
    /// # Panics
    /// If the machine emits at an epoch it does not hold: a protocol bug.
    pub fn get(&self, epoch: Epoch, port: usize) -> &Capability<Time> {
        self.try_get(epoch, port).unwrap_or_else(|| no_capability(epoch, port))
    }

    /// The capability of output `port` at `epoch`, if held.
    pub fn try_get(&self, epoch: Epoch, port: usize) -> Option<&Capability<Time>> {
        self.caps.get(&epoch.0).and_then(|c| c[port].as_ref())
    }

    /// Some capability of output `port` at or before `epoch`, to delay to it.
    pub fn at_or_before(&self, epoch: Epoch, port: usize) -> Option<&Capability<Time>> {
        self.caps.range(..=epoch.0).rev().find_map(|(_, c)| c[port].as_ref())
    }

    /// Keeps the capability of output `port` at `epoch` only while `holds(port, epoch)`.
    pub fn retain(&mut self, mut holds: impl FnMut(usize, Epoch) -> bool) {
        self.caps.retain(|t, cs| {
            for (port, c) in cs.iter_mut().enumerate() {
                if c.is_some() && !holds(port, Epoch(*t)) {
                    *c = None;
                }
            }
            cs.iter().any(Option::is_some)
        });
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.caps.is_empty()
    }
}

#[cold]
fn no_capability(epoch: Epoch, port: usize) -> ! {
    panic!("no capability for output {port} at {epoch}: the protocol emitted at an epoch it does not hold")
}
