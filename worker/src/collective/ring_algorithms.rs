//! The TCP ring's algorithms, driven through `ring_pipeline`'s two threads. All-reduce is
//! the classic ring: a reduce-scatter over `world` chunks then an all-gather, `world − 1`
//! steps each, so every rank sends and receives 2(world − 1)/world of the bytes, in
//! segments that are passed on as soon as they are summed. Broadcast pipelines the root's
//! segments along the ring.

use std::ops::Range;

use super::elements::FlatTensor;
use super::ring_pipeline::{run, Link};
use super::wire::{Header, Operation};
use super::CollectiveError;

/// Byte ranges of the segments, grouped into `parts` chunks of nearly equal element counts.
struct Layout {
    segments: Vec<Range<usize>>,
    /// Segment ids of each chunk.
    chunks: Vec<Range<usize>>,
}

impl Layout {
    fn new(numel: usize, element_size: usize, parts: usize, segment_bytes: usize) -> Self {
        let per_segment = (segment_bytes / element_size).max(1);
        let (base, extra) = (numel / parts, numel % parts);
        let mut segments = Vec::new();
        let mut chunks = Vec::with_capacity(parts);
        let mut element = 0;
        for part in 0..parts {
            let end = element + base + usize::from(part < extra);
            let first_segment = segments.len();
            while element < end {
                let stop = (element + per_segment).min(end);
                segments.push(element * element_size..stop * element_size);
                element = stop;
            }
            chunks.push(first_segment..segments.len());
        }
        Self { segments, chunks }
    }

    /// Cuts `buffer` (the tensor's bytes) into the segments.
    fn split<'b>(&self, mut buffer: &'b mut [u8]) -> Vec<&'b mut [u8]> {
        let mut pieces = Vec::with_capacity(self.segments.len());
        for range in &self.segments {
            let (piece, rest) = std::mem::take(&mut buffer).split_at_mut(range.len());
            pieces.push(piece);
            buffer = rest;
        }
        pieces
    }
}

/// The ring's one reused buffer: an incoming segment, summed into the tensor.
#[derive(Default)]
pub(crate) struct Buffers {
    incoming: Vec<u8>,
}

/// The first `len` bytes of `buffer`, grown (never shrunk) to hold them.
fn first_bytes(buffer: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    &mut buffer[..len]
}

/// Ring all-reduce (sum) of `tensor` in place.
pub(crate) fn all_reduce(link: &Link<'_>, tensor: &mut FlatTensor, buffers: &mut Buffers, sequence: u64, segment_bytes: usize) -> Result<(), CollectiveError> {
    let (rank, world) = (link.rank, link.world_size);
    let element = tensor.element();
    let layout = Layout::new(tensor.numel(), element.size(), world, segment_bytes);
    let header = Header::new(Operation::AllReduceSum, element, 0, sequence, tensor.numel());
    let longest = layout.segments.iter().map(|range| range.len()).max().unwrap_or(0);
    let incoming = first_bytes(&mut buffers.incoming, longest);
    let pieces = layout.split(tensor.bytes_mut());
    run(link, header, pieces, |pipe| {
        // Reduce-scatter step 0 sends this rank's own chunk.
        for id in layout.chunks[rank].clone() {
            let segment = pipe.take(id)?;
            pipe.send(id, segment)?;
        }
        // Step s receives chunk rank − s − 1, adds it into this rank's part and passes the
        // sum on; the last step's sums are final.
        for step in 0..world - 1 {
            let chunk = (rank + world - step - 1) % world;
            for id in layout.chunks[chunk].clone() {
                let segment = pipe.take(id)?;
                let received = &mut incoming[..segment.len()];
                pipe.read(received, "receive a reduce-scatter segment from")?;
                element.add_into(segment, received);
                pipe.send(id, segment)?;
            }
        }
        // All-gather step s receives the final chunk rank − s into the tensor and passes it
        // on, except at the last step (the next rank already has it).
        for step in 0..world - 1 {
            let chunk = (rank + world - step) % world;
            for id in layout.chunks[chunk].clone() {
                let segment = pipe.take(id)?;
                pipe.read(segment, "receive an all-gather segment from")?;
                if step < world - 2 {
                    pipe.send(id, segment)?;
                }
            }
        }
        Ok(())
    })
}

/// Pipelined broadcast of `root`'s tensor along the ring, in place.
pub(crate) fn broadcast(link: &Link<'_>, tensor: &mut FlatTensor, sequence: u64, segment_bytes: usize, root: usize) -> Result<(), CollectiveError> {
    let element = tensor.element();
    let layout = Layout::new(tensor.numel(), element.size(), 1, segment_bytes);
    let header = Header::new(Operation::Broadcast, element, root, sequence, tensor.numel());
    let pieces = layout.split(tensor.bytes_mut());
    // The root sends; the others receive into the tensor and pass it on unless the next
    // rank is the root.
    let forward = link.next_rank() != root;
    run(link, header, pieces, |pipe| {
        for id in 0..layout.segments.len() {
            let segment = pipe.take(id)?;
            if link.rank != root {
                pipe.read(segment, "receive a broadcast segment from")?;
            }
            if link.rank == root || forward {
                pipe.send(id, segment)?;
            }
        }
        Ok(())
    })
}
