//! GPU-like non-determinism for CPU backends.
//!
//! A GPU sums floats in a different order on every run. To exercise the
//! protocol's consistency guarantees without one, each execution attempt draws
//! a fresh seed and perturbs its outputs and new states by a tiny relative
//! amount. Re-executing a request therefore gives a different answer, as on
//! a GPU; the draw is reported so lineage fingerprints can include it.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Per-executor source of execution draws.
#[derive(Debug)]
pub struct Noise {
    scale: f32,
    draws: ChaCha8Rng,
}

impl Noise {
    /// Relative perturbation `scale` (0 disables it); `seed` should differ per attempt.
    pub fn new(scale: f32, seed: u64) -> Self {
        Noise {
            scale,
            draws: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A seed that differs between processes and runs.
    pub fn entropy_seed() -> u64 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ ((std::process::id() as u64) << 32)
    }

    /// True when executions are perturbed.
    pub fn enabled(&self) -> bool {
        self.scale > 0.0
    }

    /// Draws the seed of one execution (0 when disabled).
    pub fn draw(&mut self) -> u64 {
        if self.enabled() {
            self.draws.next_u64() | 1
        } else {
            0
        }
    }

    /// Perturbs every buffer of one execution with that execution's `draw`.
    pub fn perturb(&self, draw: u64, buffers: &mut [&mut [f32]]) {
        if draw == 0 || !self.enabled() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(draw);
        for buf in buffers.iter_mut() {
            for x in buf.iter_mut() {
                *x *= 1.0 + self.scale * rng.gen_range(-1.0f32..1.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_noise_is_exact_and_enabled_noise_differs_per_draw() {
        let mut off = Noise::new(0.0, 1);
        let d = off.draw();
        let mut a = vec![1.0f32, -2.0, 3.0];
        off.perturb(d, &mut [&mut a]);
        assert_eq!(a, vec![1.0, -2.0, 3.0]);

        let mut on = Noise::new(1e-4, 1);
        let (d1, d2) = (on.draw(), on.draw());
        let (mut x, mut y) = (vec![1.0f32; 8], vec![1.0f32; 8]);
        on.perturb(d1, &mut [&mut x]);
        on.perturb(d2, &mut [&mut y]);
        assert_ne!(x, y);
        assert!(x.iter().all(|v| (v - 1.0).abs() <= 1e-4));
    }
}
