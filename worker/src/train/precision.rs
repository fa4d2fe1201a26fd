//! `[train] precision = "bf16"`: the forward pass (and loss) of each training step runs
//! under libtorch's autocast with bfloat16 on the task's device: matrix products and
//! convolutions compute in bf16, while weights, optimiser state and gradients stay fp32
//! (the usual mixed precision; bf16 has fp32's exponent range, so no loss scaling). tch
//! 0.24 only exposes the legacy CUDA switch, whose type is float16, so a small C++ file
//! (`cpp/autocast.cpp`) sets the type and the switch per device type.
#![allow(unsafe_code)]

use feral_common::spec::Precision;
use tch::Device;

extern "C" {
    fn feral_autocast_bf16_enter(cuda: i32) -> i32;
    fn feral_autocast_exit(cuda: i32, state: i32) -> i32;
    fn feral_autocast_dtype(cuda: i32) -> i32;
}

/// libtorch's number for bfloat16 (`c10::ScalarType::BFloat16`).
const BFLOAT16: i32 = 15;

/// An autocast region on one thread; dropping it restores what was there before.
#[derive(Debug)]
pub struct Autocast {
    cuda: i32,
    /// What to restore on exit (see `cpp/autocast.cpp`).
    state: i32,
    /// Autocast state is thread-local: the region must end on the thread that began it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Autocast {
    /// Enters a bf16 region on `device` when `precision` asks for it; `None` for fp32, and
    /// (with a warning, once per thread) when libtorch refuses, which leaves fp32.
    pub fn enter(precision: Precision, device: Device) -> Option<Self> {
        if precision != Precision::Bf16 {
            return None;
        }
        let cuda = i32::from(device.is_cuda());
        // SAFETY: a plain C function of our own without pointers; it catches every C++
        // exception and reports it as -1.
        let state = unsafe { feral_autocast_bf16_enter(cuda) };
        if state < 0 {
            thread_local!(static WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
            if !WARNED.replace(true) {
                tracing::warn!(?device, "libtorch refused bf16 autocast on this device: training in fp32");
            }
            return None;
        }
        Some(Self { cuda, state, _not_send: std::marker::PhantomData })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: as in `enter`; called once per successful enter, on the same thread.
        let _ = unsafe { feral_autocast_exit(self.cuda, self.state) };
    }
}

/// Whether this thread computes matrix products on `device` in bf16 right now.
pub fn bf16_active(device: Device) -> bool {
    // SAFETY: as in `Autocast::enter`.
    unsafe { feral_autocast_dtype(i32::from(device.is_cuda())) == BFLOAT16 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn a_bf16_region_computes_products_in_bf16_and_ends_cleanly() {
        let (a, b) = (Tensor::ones([4, 8], (Kind::Float, Device::Cpu)), Tensor::ones([8, 2], (Kind::Float, Device::Cpu)));
        assert!(Autocast::enter(Precision::Fp32, Device::Cpu).is_none());
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        {
            let _region = Autocast::enter(Precision::Bf16, Device::Cpu).expect("autocast on the CPU");
            assert!(bf16_active(Device::Cpu));
            let product = a.matmul(&b);
            assert_eq!(product.kind(), Kind::BFloat16);
            assert_eq!(Vec::<f32>::try_from(product.to_kind(Kind::Float).flatten(0, -1)).expect("values"), vec![8.0; 8]);
        }
        assert!(!bf16_active(Device::Cpu));
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
    }
}
