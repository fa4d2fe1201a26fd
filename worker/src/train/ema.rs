//! An exponential moving average of the weights (and batch-norm statistics), the model a
//! round evaluates, saves and hands to the next round as its teacher.

use tch::nn::VarStore;

/// Decay at `step`: warms up as (1 + step) / (10 + step), capped at 0.999, so that short
/// runs are not dominated by the random initialisation.
pub fn decay(step: usize) -> f64 {
    ((1 + step) as f64 / (10 + step) as f64).min(0.999)
}

/// ema ← d·ema + (1 − d)·current, for every variable of the two stores (same model).
pub fn update(ema: &VarStore, current: &VarStore, step: usize) {
    let d = decay(step);
    let _guard = tch::no_grad_guard();
    let current = current.variables();
    for (name, mut average) in ema.variables() {
        if let Some(value) = current.get(&name) {
            if average.is_floating_point() {
                let _ = average.g_mul_scalar_(d);
                let _ = average.g_add_(&(value * (1.0 - d)));
            } else {
                average.copy_(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_warms_up_and_is_capped() {
        assert!((decay(0) - 0.1).abs() < 1e-12);
        assert!(decay(10) < decay(100));
        assert_eq!(decay(1_000_000), 0.999);
    }
}
