//! What the TCP ring puts on the wire besides tensor bytes: the hello each end of a
//! connection sends once (magic, protocol version, rank, world size) and the header that
//! opens every collective (operation, element kind, root, sequence number, element
//! count), so ranks that disagree get a clear error instead of garbage or a hang.

use super::elements::Element;

const HELLO_MAGIC: [u8; 8] = *b"FERALRNG";
const HEADER_MAGIC: [u8; 4] = *b"FRCH";
pub(crate) const PROTOCOL_VERSION: u32 = 1;
pub(crate) const HELLO_LEN: usize = 20;
pub(crate) const HEADER_LEN: usize = 24;

/// The first message on each connection of the ring, sent by both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub version: u32,
    pub rank: u32,
    pub world_size: u32,
}

impl Hello {
    pub(crate) fn encode(&self) -> [u8; HELLO_LEN] {
        let mut bytes = [0u8; HELLO_LEN];
        bytes[..8].copy_from_slice(&HELLO_MAGIC);
        bytes[8..12].copy_from_slice(&self.version.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.rank.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.world_size.to_le_bytes());
        bytes
    }

    /// `None` when the bytes are not a Feral ring hello at all.
    pub(crate) fn decode(bytes: &[u8; HELLO_LEN]) -> Option<Self> {
        if bytes[..8] != HELLO_MAGIC {
            return None;
        }
        Some(Self { version: le_u32(&bytes[8..12]), rank: le_u32(&bytes[12..16]), world_size: le_u32(&bytes[16..20]) })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    AllReduceSum,
    Broadcast,
}

/// Opens every collective; each rank sends its own to the next rank and checks the one
/// from the previous rank against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub operation: u8,
    pub element: u8,
    pub root: u16,
    pub sequence: u64,
    pub numel: u64,
}

impl Header {
    pub(crate) fn new(operation: Operation, element: Element, root: usize, sequence: u64, numel: usize) -> Self {
        let operation = match operation {
            Operation::AllReduceSum => 1,
            Operation::Broadcast => 2,
        };
        Self { operation, element: element.code(), root: root as u16, sequence, numel: numel as u64 }
    }

    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..4].copy_from_slice(&HEADER_MAGIC);
        bytes[4] = self.operation;
        bytes[5] = self.element;
        bytes[6..8].copy_from_slice(&self.root.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.numel.to_le_bytes());
        bytes
    }

    pub(crate) fn decode(bytes: &[u8; HEADER_LEN]) -> Option<Self> {
        if bytes[..4] != HEADER_MAGIC {
            return None;
        }
        Some(Self {
            operation: bytes[4],
            element: bytes[5],
            root: u16::from_le_bytes([bytes[6], bytes[7]]),
            sequence: le_u64(&bytes[8..16]),
            numel: le_u64(&bytes[16..24]),
        })
    }

    /// Reads aloud, e.g. "all-reduce #3 of 1001 f32".
    pub(crate) fn describe(&self) -> String {
        let kind = Element::name_of_code(self.element);
        match self.operation {
            1 => format!("all-reduce #{} of {} {kind}", self.sequence, self.numel),
            2 => format!("broadcast #{} of {} {kind} from root {}", self.sequence, self.numel, self.root),
            other => format!("unknown operation {other} #{}", self.sequence),
        }
    }
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(bytes);
    u32::from_le_bytes(array)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    u64::from_le_bytes(array)
}
