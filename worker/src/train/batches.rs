//! Turning the in-memory dataset into training batches: class-uniform (or natural)
//! sampling with a seeded RNG, the weak view ([`super::weak`]) and the strong one
//! ([`super::strong`]) on the raw bytes, each image with a generator of its own, and conversion to
//! normalised `[N, C, H, W]` float tensors (`pixels / 127.5 − 1`). The tensors are laid out
//! channels-last in memory (N×H×W×C, the bytes' own order): libtorch then runs the
//! convolutions, batch norms and pools of the whole network channels-last, which on the
//! CPU trains the compact CNN about a quarter faster than the N×C×H×W layout.

use feral_common::dataset::{ImageShape, ShardData};
use feral_common::spec::Sampling;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tch::{Device, Tensor};

use super::strong::{strong_augment, StrongAugmentation};
use super::weak::{augment, Augmentation};

/// Draws sample indices: a class by the given weights (uniformly when none are given;
/// classes without samples are never drawn), then a sample of that class uniformly, with
/// replacement; or samples uniformly (`Natural`, unless weights are given).
pub struct Sampler {
    by_class: Vec<Vec<usize>>,
    /// Cumulative class weights over `by_class`, ending at 1.
    cumulative: Vec<f64>,
    labelled: Vec<usize>,
    natural: bool,
    rng: SmallRng,
}

impl Sampler {
    pub fn new(labels: &[i64], classes: usize, sampling: Sampling, weights: Option<&[f64]>, seed: u64) -> Self {
        let mut by_class = vec![Vec::new(); classes];
        for (index, &label) in labels.iter().enumerate() {
            if label >= 0 && (label as usize) < classes {
                by_class[label as usize].push(index);
            }
        }
        let weight = |class: usize| weights.and_then(|w| w.get(class)).copied().unwrap_or(1.0).max(0.0);
        let present: Vec<usize> = (0..classes).filter(|&c| !by_class[c].is_empty() && weight(c) > 0.0).collect();
        let total: f64 = present.iter().map(|&c| weight(c)).sum();
        let mut running = 0.0;
        let cumulative = present
            .iter()
            .map(|&c| {
                running += weight(c) / total;
                running
            })
            .collect();
        let labelled = by_class.iter().flatten().copied().collect();
        let by_class = present.iter().map(|&c| std::mem::take(&mut by_class[c])).collect();
        let natural = sampling == Sampling::Natural && weights.is_none();
        Self { by_class, cumulative, labelled, natural, rng: SmallRng::seed_from_u64(seed) }
    }

    /// The next `size` indices from this sampler's own generator (empty: nothing labelled).
    pub fn next_batch(&mut self, size: usize) -> Vec<usize> {
        let mut rng = self.rng.clone();
        let drawn = self.draw_with(size, &mut rng);
        self.rng = rng;
        drawn
    }

    /// `size` indices from a generator seeded by `seed` alone, so that a batch can be drawn
    /// without drawing the ones before it (empty: nothing labelled).
    pub fn draw(&self, size: usize, seed: u64) -> Vec<usize> {
        self.draw_with(size, &mut SmallRng::seed_from_u64(seed))
    }

    fn draw_with(&self, size: usize, rng: &mut SmallRng) -> Vec<usize> {
        if self.labelled.is_empty() {
            return Vec::new();
        }
        (0..size)
            .map(|_| {
                if self.natural {
                    return self.labelled[rng.random_range(0..self.labelled.len())];
                }
                let draw: f64 = rng.random();
                let position = self.cumulative.partition_point(|&edge| edge <= draw).min(self.by_class.len() - 1);
                let class = &self.by_class[position];
                class[rng.random_range(0..class.len())]
            })
            .collect()
    }
}

/// How the images of one batch are perturbed: the weak view, then the strong operations
/// when `strong` is set; the k-th image draws from a generator seeded by `seed` and
/// `offset + k`, its place in the global batch.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub weak: &'a Augmentation,
    pub strong: Option<&'a StrongAugmentation>,
    pub seed: u64,
    pub offset: usize,
}

/// The images `indices` of `data` as normalised floats in N×H×W×C order, perturbed as
/// `view` says (none: as they are).
pub fn normalised_images(data: &ShardData, indices: &[usize], view: Option<View<'_>>) -> Vec<f32> {
    let shape = data.shape;
    let mut floats = vec![0f32; indices.len() * shape.pixels()];
    let (mut weak, mut strong) = (Vec::with_capacity(shape.pixels()), Vec::with_capacity(shape.pixels()));
    for (k, (&index, image_out)) in indices.iter().zip(floats.chunks_exact_mut(shape.pixels())).enumerate() {
        let image = match view {
            Some(view) => {
                let mut rng = SmallRng::seed_from_u64(super::seeds::mix(view.seed, (view.offset + k) as u64));
                weak.clear();
                augment(data.image(index), shape, view.weak, &mut rng, &mut weak);
                match view.strong {
                    Some(settings) => {
                        strong.clear();
                        strong_augment(&weak, shape, settings, &mut rng, &mut strong);
                        strong.as_slice()
                    }
                    None => weak.as_slice(),
                }
            }
            None => data.image(index),
        };
        for (out, &value) in image_out.iter_mut().zip(image) {
            *out = f32::from(value) / 127.5 - 1.0;
        }
    }
    floats
}

/// `floats` (N×H×W×C, from [`normalised_images`]) as a `[N, C, H, W]` tensor laid out
/// channels-last.
pub fn channels_last_images(floats: &[f32], count: usize, shape: ImageShape) -> Result<Tensor, tch::TchError> {
    let dims = [count as i64, i64::from(shape.height), i64::from(shape.width), i64::from(shape.channels)];
    Tensor::f_from_slice(floats)?.f_view(dims)?.f_permute([0, 3, 1, 2])
}

/// Images `indices` of `data` as a normalised float tensor `[N, C, H, W]` (channels-last
/// in memory) on `device`, with their labels (`labels` chooses visible or other labels).
/// With `augmentation = Some((seed, offset))`, images get the default [`Augmentation`],
/// the k-th seeded by `seed` and `offset + k`, its place in the global batch.
pub fn to_tensors(data: &ShardData, indices: &[usize], labels: &[i64], device: Device, augmentation: Option<(u64, usize)>) -> (Tensor, Tensor) {
    let weak = Augmentation::default();
    let floats = normalised_images(data, indices, augmentation.map(|(seed, offset)| View { weak: &weak, strong: None, seed, offset }));
    let dims = [indices.len() as i64, i64::from(data.shape.height), i64::from(data.shape.width), i64::from(data.shape.channels)];
    let images = Tensor::from_slice(&floats).view(dims).permute([0, 3, 1, 2]).to_device(device);
    let targets: Vec<i64> = indices.iter().map(|&i| labels[i]).collect();
    (images, Tensor::from_slice(&targets).to_device(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_uniform_sampling_evens_out_imbalance() {
        // 90 samples of class 0, 10 of class 1.
        let labels: Vec<i64> = (0..100).map(|i| i64::from(i >= 90)).collect();
        let mut sampler = Sampler::new(&labels, 2, Sampling::ClassUniform, None, 1);
        let drawn = sampler.next_batch(20_000);
        let rare = drawn.iter().filter(|&&i| labels[i] == 1).count() as f64 / drawn.len() as f64;
        assert!((rare - 0.5).abs() < 0.02, "rare class share {rare}");

        let natural = Sampler::new(&labels, 2, Sampling::Natural, None, 1);
        let drawn = natural.draw(20_000, 1);
        let rare = drawn.iter().filter(|&&i| labels[i] == 1).count() as f64 / drawn.len() as f64;
        assert!((rare - 0.1).abs() < 0.02, "rare class share {rare}");
    }

    #[test]
    fn class_weights_set_class_frequencies() {
        // Classes 0, 1, 2 with 50, 30, 20 samples; weights 0.2, 0.3, 0.5.
        let labels: Vec<i64> = (0..100)
            .map(|i| {
                if i < 50 {
                    0
                } else if i < 80 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let weights = [0.2, 0.3, 0.5];
        let drawn = Sampler::new(&labels, 3, Sampling::ClassUniform, Some(&weights), 9).next_batch(30_000);
        for (class, want) in weights.iter().enumerate() {
            let share = drawn.iter().filter(|&&i| labels[i] == class as i64).count() as f64 / drawn.len() as f64;
            assert!((share - want).abs() < 0.015, "class {class}: {share} vs {want}");
        }
        let no_samples = [-1i64, 0, 0];
        let drawn = Sampler::new(&no_samples, 2, Sampling::ClassUniform, Some(&[0.5, 0.5]), 1).next_batch(100);
        assert!(drawn.iter().all(|&i| i == 1 || i == 2), "unlabelled samples and empty classes are never drawn");
    }

    #[test]
    fn sampling_is_seeded() {
        let labels: Vec<i64> = (0..50).map(|i| i % 3).collect();
        let sampler = Sampler::new(&labels, 3, Sampling::ClassUniform, None, 5);
        let draw = |seed| Sampler::new(&labels, 3, Sampling::ClassUniform, None, seed).next_batch(32);
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        assert_eq!(sampler.draw(32, 5), draw(5), "a seeded draw is the first batch of a sampler with that seed");
        assert_eq!(sampler.draw(32, 8), sampler.draw(32, 8));
    }

    #[test]
    fn tensors_are_normalised_nchw() {
        let shape = ImageShape { height: 1, width: 2, channels: 3 };
        let mut data = ShardData::empty(shape);
        data.images.extend_from_slice(&[0, 255, 51, 102, 153, 204]);
        data.labels = vec![4];
        data.sample_ids = vec![0];
        let (images, labels) = to_tensors(&data, &[0], &data.labels, Device::Cpu, None);
        assert_eq!(images.size(), [1, 3, 1, 2]);
        assert_eq!(images.stride(), [6, 1, 6, 3], "channels-last in memory");
        let values: Vec<f32> = Vec::try_from(images.flatten(0, -1)).unwrap_or_default();
        let want: Vec<f32> = [0u8, 102, 255, 153, 51, 204].iter().map(|&v| f32::from(v) / 127.5 - 1.0).collect();
        assert_eq!(values, want);
        assert_eq!(labels.int64_value(&[0]), 4);
    }
}
