//! Arithmetic and fitting on [`Slots`], and the integer keys used to order floats.

use std::ops::{Add, AddAssign, Sub};

use crate::Slots;

/// The tolerance on CPU and GPU when checking `used + request <= capacity`, so that
/// fractions that add up to a whole (e.g. ten sessions of 0.1 GPU) still fit.
pub const EPSILON: f64 = 1e-9;

impl Slots {
    /// No resources at all.
    pub const ZERO: Self = Self { cpu: 0.0, mem: 0, gpu: 0.0 };

    /// Slots of `cpu` cores, `mem` MiB and `gpu` GPUs.
    pub const fn new(cpu: f64, mem: i64, gpu: f64) -> Self {
        Self { cpu, mem, gpu }
    }

    /// Whether a request of `self` fits on an agent of `capacity` whose sessions
    /// already hold `used`: `used + self <= capacity` in every resource, CPU and GPU
    /// within [`EPSILON`], memory exactly (without overflow).
    pub fn fits(self, used: Slots, capacity: Slots) -> bool {
        used.cpu + self.cpu <= capacity.cpu + EPSILON
            && used.gpu + self.gpu <= capacity.gpu + EPSILON
            && i128::from(used.mem) + i128::from(self.mem) <= i128::from(capacity.mem)
    }

    /// Whether an empty agent of `capacity` could hold a request of `self`.
    pub fn fits_in(self, capacity: Slots) -> bool {
        self.fits(Slots::ZERO, capacity)
    }

    /// Whether `self` is at least `other` in every resource (exactly, no epsilon).
    pub(crate) fn covers(self, other: Slots) -> bool {
        self.cpu >= other.cpu && self.mem >= other.mem && self.gpu >= other.gpu
    }
}

impl Add for Slots {
    type Output = Slots;

    /// The sum of each resource (memory saturates instead of overflowing).
    fn add(self, other: Slots) -> Slots {
        Slots { cpu: self.cpu + other.cpu, mem: self.mem.saturating_add(other.mem), gpu: self.gpu + other.gpu }
    }
}

impl AddAssign for Slots {
    fn add_assign(&mut self, other: Slots) {
        *self = *self + other;
    }
}

impl Sub for Slots {
    type Output = Slots;

    /// The difference of each resource (memory saturates instead of overflowing).
    fn sub(self, other: Slots) -> Slots {
        Slots { cpu: self.cpu - other.cpu, mem: self.mem.saturating_sub(other.mem), gpu: self.gpu - other.gpu }
    }
}

/// An integer whose order is [`f64::total_cmp`]'s order of `x` (no NaN panics, and
/// integer comparisons in the index's keys).
pub(crate) fn ord_key(x: f64) -> i64 {
    let bits = x.to_bits() as i64;
    bits ^ ((((bits >> 63) as u64) >> 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_uses_epsilon_on_cpu_and_gpu_only() {
        let cap = Slots::new(1.0, 100, 1.0);
        let used = Slots::new(0.7, 40, 0.7);
        assert!(Slots::new(0.3, 60, 0.3).fits(used, cap));
        assert!(Slots::new(0.3 + 1e-10, 60, 0.3 + 1e-10).fits(used, cap));
        assert!(!Slots::new(0.3 + 1e-6, 60, 0.3).fits(used, cap));
        assert!(!Slots::new(0.3, 61, 0.3).fits(used, cap));
        assert!(!Slots::new(f64::NAN, 1, 0.0).fits(used, cap));
        assert!(!Slots::new(0.0, i64::MAX, 0.0).fits(Slots::new(0.0, i64::MAX, 0.0), cap));
    }

    #[test]
    fn ord_key_follows_total_cmp() {
        let xs = [-3.5, -0.0, 0.0, 1e-12, 0.5, 1.0, 7.25, f64::INFINITY];
        for a in xs {
            for b in xs {
                assert_eq!(ord_key(a).cmp(&ord_key(b)), a.total_cmp(&b), "{a} vs {b}");
            }
        }
    }
}
