//! The element kinds the TCP ring moves, their element-wise sum over raw bytes, and a CPU
//! tensor's own memory seen as those bytes (one small `unsafe` view, [`FlatTensor::bytes_mut`]):
//! the ring sends from it, sums into it and receives into it, with no copy in or out.

use tch::{Device, Kind, Tensor};

use super::CollectiveError;

/// An element kind the TCP ring can sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Element {
    F32,
    F64,
    I64,
    I32,
}

impl Element {
    pub(crate) fn of(kind: Kind) -> Result<Self, CollectiveError> {
        match kind {
            Kind::Float => Ok(Self::F32),
            Kind::Double => Ok(Self::F64),
            Kind::Int64 => Ok(Self::I64),
            Kind::Int => Ok(Self::I32),
            other => Err(CollectiveError::Unsupported(format!("tensors of kind {other:?} are not supported by the tcp ring (f32, f64, i64 and i32 are)"))),
        }
    }

    pub(crate) fn size(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }

    /// The code that names this kind in a collective's header.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::F32 => 1,
            Self::F64 => 2,
            Self::I64 => 3,
            Self::I32 => 4,
        }
    }

    pub(crate) fn name_of_code(code: u8) -> &'static str {
        match code {
            1 => "f32",
            2 => "f64",
            3 => "i64",
            4 => "i32",
            _ => "an unknown kind",
        }
    }

    /// `accumulator[i] += addend[i]` over elements stored as native-endian bytes (integers
    /// wrap, so integer sums are exact whatever the order).
    pub(crate) fn add_into(self, accumulator: &mut [u8], addend: &[u8]) {
        debug_assert_eq!(accumulator.len(), addend.len());
        match self {
            Self::F32 => add_elements::<4>(accumulator, addend, |a, b| (f32::from_ne_bytes(a) + f32::from_ne_bytes(b)).to_ne_bytes()),
            Self::F64 => add_elements::<8>(accumulator, addend, |a, b| (f64::from_ne_bytes(a) + f64::from_ne_bytes(b)).to_ne_bytes()),
            Self::I64 => add_elements::<8>(accumulator, addend, |a, b| i64::from_ne_bytes(a).wrapping_add(i64::from_ne_bytes(b)).to_ne_bytes()),
            Self::I32 => add_elements::<4>(accumulator, addend, |a, b| i32::from_ne_bytes(a).wrapping_add(i32::from_ne_bytes(b)).to_ne_bytes()),
        }
    }
}

#[inline(always)]
fn add_elements<const N: usize>(accumulator: &mut [u8], addend: &[u8], add: impl Fn([u8; N], [u8; N]) -> [u8; N]) {
    for (a, b) in accumulator.chunks_exact_mut(N).zip(addend.chunks_exact(N)) {
        let mut left = [0u8; N];
        left.copy_from_slice(a);
        let mut right = [0u8; N];
        right.copy_from_slice(b);
        a.copy_from_slice(&add(left, right));
    }
}

/// A CPU tensor seen as a flat, contiguous run of elements.
pub(crate) struct FlatTensor {
    flat: Tensor,
    element: Element,
    /// The caller's tensor is not contiguous: `flat` is a contiguous copy that is written
    /// back into it by [`FlatTensor::finish`].
    copy_back: bool,
}

impl FlatTensor {
    pub(crate) fn new(tensor: &Tensor) -> Result<Self, CollectiveError> {
        let device = tensor.device();
        if device != Device::Cpu {
            return Err(CollectiveError::Unsupported(format!("the tcp ring works on cpu tensors, this one is on {device:?}")));
        }
        let element = Element::of(tensor.kind())?;
        let copy_back = !tensor.is_contiguous();
        let contiguous = if copy_back { tensor.f_contiguous()? } else { tensor.shallow_clone() };
        Ok(Self { flat: contiguous.f_reshape([-1])?, element, copy_back })
    }

    pub(crate) fn element(&self) -> Element {
        self.element
    }

    pub(crate) fn numel(&self) -> usize {
        self.flat.numel()
    }

    /// The tensor's elements as native-endian bytes, in place.
    #[allow(unsafe_code)]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.flat.numel() * self.element.size();
        if len == 0 {
            return &mut [];
        }
        // SAFETY: `flat` is a contiguous CPU tensor of `numel` elements of `element` (made so
        // in `new`), so its data pointer addresses `len` initialised bytes, which stay valid
        // while `flat` holds its storage: for the borrow of `self`. Every bit pattern is a
        // valid `u8`, which needs no alignment. Nothing else touches those bytes meanwhile:
        // the collective runs on the thread that holds the caller's tensor mutably, and the
        // ring's worker thread only ever gets disjoint pieces of this slice.
        unsafe { std::slice::from_raw_parts_mut(self.flat.data_ptr().cast::<u8>(), len) }
    }

    /// Writes the result into the caller's tensor when it was not contiguous.
    pub(crate) fn finish(self, tensor: &mut Tensor) -> Result<(), CollectiveError> {
        if self.copy_back {
            let shaped = self.flat.f_view_as(tensor)?;
            tensor.f_copy_(&shaped)?;
        }
        Ok(())
    }
}
