//! The learning-rate schedule that spans a whole job (see the module documentation of
//! [`super`]).

/// Linear warm-up over the first 5% of steps, then cosine decay to zero.
pub(crate) fn learning_rate(base: f64, step: usize, total: usize) -> f64 {
    let warmup = (total / 20).max(1);
    if step < warmup {
        base * (step + 1) as f64 / warmup as f64
    } else {
        let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
        base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_warms_up_then_decays() {
        let lr: Vec<f64> = (0..100).map(|s| learning_rate(1.0, s, 100)).collect();
        assert!(lr[0] < lr[4], "warm-up rises");
        assert!((lr[5] - 1.0).abs() < 1e-9, "peak after warm-up");
        assert!(lr.windows(2).skip(5).all(|w| w[1] <= w[0]), "decays after warm-up");
        assert!(lr[99] < 0.01);
    }
}
