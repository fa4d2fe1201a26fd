//! The element kinds the TCP ring moves, their element-wise sum over raw bytes, and the
//! copies between a CPU tensor and those bytes (one `memcpy` out, and back in through a
//! small cache-sized tensor per segment so the result lands in the tensor's own storage).

use tch::{Device, Kind, Tensor};

use super::CollectiveError;

/// Bytes written back per piece: fewer elements than `at::internal::GRAIN_SIZE` (32768), so
/// libtorch copies them serially, and small enough that the temporary tensor comes from the
/// heap rather than a fresh (page-faulting) mmap.
const SERIAL_COPY_BYTES: usize = 64 * 1024;

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
            other => Err(CollectiveError::Unsupported(format!(
                "tensors of kind {other:?} are not supported by the tcp ring (f32, f64, i64 and i32 are)"
            ))),
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

    fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::F64 => Kind::Double,
            Self::I64 => Kind::Int64,
            Self::I32 => Kind::Int,
        }
    }

    /// `accumulator[i] += addend[i]` over elements stored as native-endian bytes (integers
    /// wrap, so integer sums are exact whatever the order).
    pub(crate) fn add_into(self, accumulator: &mut [u8], addend: &[u8]) {
        debug_assert_eq!(accumulator.len(), addend.len());
        match self {
            Self::F32 => add_elements::<4>(accumulator, addend, |a, b| {
                (f32::from_ne_bytes(a) + f32::from_ne_bytes(b)).to_ne_bytes()
            }),
            Self::F64 => add_elements::<8>(accumulator, addend, |a, b| {
                (f64::from_ne_bytes(a) + f64::from_ne_bytes(b)).to_ne_bytes()
            }),
            Self::I64 => add_elements::<8>(accumulator, addend, |a, b| {
                i64::from_ne_bytes(a).wrapping_add(i64::from_ne_bytes(b)).to_ne_bytes()
            }),
            Self::I32 => add_elements::<4>(accumulator, addend, |a, b| {
                i32::from_ne_bytes(a).wrapping_add(i32::from_ne_bytes(b)).to_ne_bytes()
            }),
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

/// A CPU tensor seen as a flat run of elements that segments are copied out of and into.
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
            return Err(CollectiveError::Unsupported(format!(
                "the tcp ring works on cpu tensors, this one is on {device:?}"
            )));
        }
        let element = Element::of(tensor.kind())?;
        let copy_back = !tensor.is_contiguous();
        let contiguous = if copy_back { tensor.f_contiguous()? } else { tensor.shallow_clone() };
        Ok(Self { flat: contiguous.f_reshape([-1])?, element, copy_back })
    }

    /// Another handle on the same storage, for the ring's worker thread (`Tensor` is `Send`
    /// but not `Sync`). The two threads only ever touch different segments at once.
    pub(crate) fn share(&self) -> Self {
        Self { flat: self.flat.shallow_clone(), element: self.element, copy_back: false }
    }

    pub(crate) fn element(&self) -> Element {
        self.element
    }

    pub(crate) fn numel(&self) -> usize {
        self.flat.numel()
    }

    /// Copies the elements at byte range `first_byte..first_byte + out.len()` into `out`.
    pub(crate) fn load(&self, first_byte: usize, out: &mut [u8]) -> Result<(), CollectiveError> {
        let size = self.element.size();
        let count = out.len() / size;
        let part = self.flat.f_narrow(0, (first_byte / size) as i64, count as i64)?;
        part.f_copy_data_u8(out, count)?;
        Ok(())
    }

    /// Writes `bytes` into the elements starting at byte `first_byte`, in pieces below
    /// libtorch's parallel grain size: a copy that size stays on this thread, where a larger
    /// one wakes the OpenMP pool, whose spinning threads then steal the cores the sockets need.
    pub(crate) fn store(&mut self, first_byte: usize, bytes: &[u8]) -> Result<(), CollectiveError> {
        let size = self.element.size();
        let mut first_element = (first_byte / size) as i64;
        for piece in bytes.chunks(SERIAL_COPY_BYTES) {
            let count = (piece.len() / size) as i64;
            let source = Tensor::f_from_data_size(piece, &[count], self.element.kind())?;
            let mut part = self.flat.f_narrow(0, first_element, count)?;
            part.f_copy_(&source)?;
            first_element += count;
        }
        Ok(())
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
