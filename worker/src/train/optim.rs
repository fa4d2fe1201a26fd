//! The optimisers, written out so that their state (moments, momentum buffers, step count)
//! goes into every checkpoint: a resumed task continues exactly where it stopped, not with
//! fresh moments. AdamW (Loshchilov & Hutter, decoupled weight decay) and SGD with
//! Nesterov momentum, as the job spec's `train.optimizer` chooses.

use std::path::Path;

use feral_common::spec::{Optimizer as Kind_, TrainSpec};
use tch::{Kind, Tensor};

use crate::artifacts::{read_tensors, ArtifactError};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

pub struct Optimizer {
    kind: Kind_,
    learning_rate: f64,
    weight_decay: f64,
    momentum: f64,
    step: i64,
    parameters: Vec<Tensor>,
    /// AdamW: first and second moments; SGD: the momentum buffer (twice, second unused).
    state: Vec<(Tensor, Tensor)>,
}

impl Optimizer {
    pub fn new(spec: &TrainSpec, parameters: Vec<Tensor>) -> Self {
        let state = parameters.iter().map(|p| (p.zeros_like(), p.zeros_like())).collect();
        Self { kind: spec.optimizer, learning_rate: spec.learning_rate, weight_decay: spec.weight_decay, momentum: spec.momentum, step: 0, parameters, state }
    }

    pub fn set_lr(&mut self, learning_rate: f64) {
        self.learning_rate = learning_rate;
    }

    pub fn zero_grad(&mut self) {
        for parameter in &mut self.parameters {
            let mut grad = parameter.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) {
        let _no_grad = tch::no_grad_guard();
        self.step += 1;
        let (lr, wd, t) = (self.learning_rate, self.weight_decay, self.step as i32);
        for (parameter, (first, second)) in self.parameters.iter_mut().zip(self.state.iter_mut()) {
            let grad = parameter.grad();
            if !grad.defined() {
                continue;
            }
            match self.kind {
                Kind_::Adamw => {
                    let _ = parameter.g_mul_scalar_(1.0 - lr * wd);
                    let _ = first.g_mul_scalar_(BETA1).g_add_(&(&grad * (1.0 - BETA1)));
                    let _ = second.g_mul_scalar_(BETA2).g_add_(&(&grad * &grad * (1.0 - BETA2)));
                    let corrected_first = &*first / (1.0 - BETA1.powi(t));
                    let corrected_second = &*second / (1.0 - BETA2.powi(t));
                    let update = corrected_first / (corrected_second.sqrt() + EPSILON);
                    let _ = parameter.g_sub_(&(update * lr));
                }
                Kind_::Sgd => {
                    let grad = &grad + &*parameter * wd;
                    let _ = first.g_mul_scalar_(self.momentum).g_add_(&grad);
                    let nesterov = &grad + &*first * self.momentum;
                    let _ = parameter.g_sub_(&(nesterov * lr));
                }
            }
        }
    }

    /// Writes the step count and every state tensor to `path`.
    pub fn save(&self, path: &Path) -> Result<(), tch::TchError> {
        let mut named = vec![("step".to_owned(), Tensor::from_slice(&[self.step]))];
        for (index, (first, second)) in self.state.iter().enumerate() {
            named.push((format!("first.{index}"), first.shallow_clone()));
            named.push((format!("second.{index}"), second.shallow_clone()));
        }
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&refs, path)
    }

    /// Restores what [`save`](Self::save) wrote for the same model.
    pub fn load(&mut self, path: &Path) -> Result<(), ArtifactError> {
        let corrupt = |problem: String| ArtifactError::corrupt(path, problem);
        let named = read_tensors(path, feral_common::files::MAX_TENSORS_BYTES, "optimizer state")?;
        let find = |name: &str| named.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let step = find("step").ok_or_else(|| corrupt("it has no `step`".into()))?;
        self.step = step.int64_value(&[0]);
        let _no_grad = tch::no_grad_guard();
        for (index, (first, second)) in self.state.iter_mut().enumerate() {
            let saved = (find(&format!("first.{index}")), find(&format!("second.{index}")));
            let (Some(saved_first), Some(saved_second)) = saved else {
                return Err(corrupt(format!("it has no state for parameter {index}")));
            };
            if saved_first.size() != first.size() || saved_second.size() != second.size() {
                return Err(corrupt(format!("the state of parameter {index} has another shape")));
            }
            first.copy_(&saved_first.to_kind(first.kind()).to_device(first.device()));
            second.copy_(&saved_second.to_kind(Kind::Float).to_kind(second.kind()).to_device(second.device()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feral_common::spec::TrainSpec;

    /// Minimises (p − 3)² from p = 0 and returns p after `steps`.
    fn descend(kind: Kind_, steps: usize) -> f64 {
        let spec = TrainSpec { optimizer: kind, learning_rate: 0.1, weight_decay: 0.0, ..TrainSpec::default() };
        let parameter = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut optimizer = Optimizer::new(&spec, vec![parameter.shallow_clone()]);
        for _ in 0..steps {
            optimizer.zero_grad();
            let loss = (&parameter - 3.0).pow_tensor_scalar(2).sum(Kind::Float);
            loss.backward();
            optimizer.step();
        }
        parameter.double_value(&[0])
    }

    #[test]
    fn both_optimisers_minimise_a_quadratic() {
        assert!((descend(Kind_::Adamw, 300) - 3.0).abs() < 0.05);
        assert!((descend(Kind_::Sgd, 100) - 3.0).abs() < 0.05);
    }

    #[test]
    fn the_first_adamw_step_moves_by_the_learning_rate() {
        // With bias correction the first Adam step is lr · g / (|g| + ε) ≈ lr · sign(g).
        assert!((descend(Kind_::Adamw, 1) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn saved_state_continues_the_same_descent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = TrainSpec { learning_rate: 0.05, ..TrainSpec::default() };
        let run = |resume_at: Option<usize>| {
            let parameter = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
            let mut optimizer = Optimizer::new(&spec, vec![parameter.shallow_clone()]);
            for step in 0..20 {
                if Some(step) == resume_at {
                    optimizer.save(&dir.path().join("o.safetensors")).expect("save");
                    optimizer = Optimizer::new(&spec, vec![parameter.shallow_clone()]);
                    optimizer.load(&dir.path().join("o.safetensors")).expect("load");
                }
                optimizer.zero_grad();
                (&parameter - 1.0).pow_tensor_scalar(2).sum(Kind::Float).backward();
                optimizer.step();
            }
            Vec::<f32>::try_from(&parameter.detach()).unwrap_or_default()
        };
        assert_eq!(run(None), run(Some(7)));
    }
}
