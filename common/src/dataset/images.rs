//! The pixels of a [`ShardData`](super::ShardData): fixed-size images stored as a list of
//! segments, each either bytes built in memory or a range of a memory-mapped shard, so
//! that reading a split maps its shards instead of copying them, and appending two sets
//! of samples never copies mapped bytes.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;

#[derive(Clone)]
enum Segment {
    Owned(Vec<u8>),
    Mapped { map: Arc<Mmap>, range: Range<usize> },
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Owned(bytes) => bytes,
            Segment::Mapped { map, range } => &map[range.clone()],
        }
    }
}

/// A sequence of images of `image_bytes` bytes each (H×W×C).
#[derive(Clone)]
pub struct Images {
    image_bytes: usize,
    segments: Vec<Segment>,
    /// How many images the segments up to and including each one hold, for a binary search
    /// from image index to segment.
    ends: Vec<usize>,
}

impl Images {
    /// No images yet, each of `image_bytes` bytes.
    pub fn new(image_bytes: usize) -> Self {
        Self { image_bytes, segments: Vec::new(), ends: Vec::new() }
    }

    /// The images in bytes `range` of `map`.
    pub(super) fn mapped(image_bytes: usize, map: Arc<Mmap>, range: Range<usize>) -> Self {
        let mut images = Self::new(image_bytes);
        images.add(Segment::Mapped { map, range });
        images
    }

    /// How many images.
    pub fn len(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of image `index`; panics when out of range, like slice indexing.
    pub fn image(&self, index: usize) -> &[u8] {
        assert!(index < self.len(), "image {index} of {}", self.len());
        let segment = self.ends.partition_point(|&end| end <= index);
        let first = if segment == 0 { 0 } else { self.ends[segment - 1] };
        let offset = (index - first) * self.image_bytes;
        &self.segments[segment].bytes()[offset..offset + self.image_bytes]
    }

    /// Appends whole images, copied.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        assert!(bytes.len().checked_rem(self.image_bytes) == Some(0), "{} bytes are not whole images of {} bytes", bytes.len(), self.image_bytes);
        match (self.segments.last_mut(), self.ends.last_mut()) {
            (Some(Segment::Owned(last)), Some(end)) => {
                last.extend_from_slice(bytes);
                *end += bytes.len() / self.image_bytes;
            }
            _ => self.add(Segment::Owned(bytes.to_vec())),
        }
    }

    /// Moves `other`'s images after these; mapped bytes are shared, not copied.
    pub fn append(&mut self, other: Images) {
        assert_eq!(self.image_bytes, other.image_bytes, "appending images of another size");
        for segment in other.segments {
            self.add(segment);
        }
    }

    /// All images as one contiguous buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        self.segments.iter().flat_map(Segment::bytes).copied().collect()
    }

    fn add(&mut self, segment: Segment) {
        let count = segment.bytes().len().checked_div(self.image_bytes).unwrap_or(0);
        if count > 0 {
            self.segments.push(segment);
            self.ends.push(self.len() + count);
        }
    }
}

impl PartialEq for Images {
    /// Equal when they hold the same images, however they are stored.
    fn eq(&self, other: &Self) -> bool {
        self.image_bytes == other.image_bytes && self.len() == other.len() && (0..self.len()).all(|i| self.image(i) == other.image(i))
    }
}

impl fmt::Debug for Images {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mapped = self.segments.iter().filter(|s| matches!(s, Segment::Mapped { .. })).count();
        f.debug_struct("Images")
            .field("images", &self.len())
            .field("image_bytes", &self.image_bytes)
            .field("segments", &self.segments.len())
            .field("mapped_segments", &mapped)
            .finish()
    }
}
