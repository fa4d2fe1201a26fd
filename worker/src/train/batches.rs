//! Turning the in-memory dataset into training batches: class-uniform (or natural)
//! sampling with a seeded RNG, augmentation on the raw bytes (horizontal flip, a random
//! crop of the image padded with its replicated edges, a small bilinear rotation, and
//! brightness/contrast jitter), each image with a generator of its own, and conversion to
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

/// How much each training image is perturbed. Every image draws all six numbers in the
/// same order (flip, crop row, crop column, angle, brightness, contrast) whatever is
/// switched off, so one setting never changes the draws of another.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augmentation {
    /// Mirror left-right with probability ½.
    pub flip: bool,
    /// Pixels of replicated-edge padding on each side before cropping the original size at
    /// a random place: a random shift of up to `pad` pixels each way.
    pub pad: u32,
    /// Rotation by a uniform angle in ±this many degrees (bilinear, edges replicated).
    pub max_rotation_degrees: f32,
    /// Pixels times a uniform factor in 1 ± this.
    pub brightness: f32,
    /// Distance from the image's mean times a uniform factor in 1 ± this.
    pub contrast: f32,
}

impl Default for Augmentation {
    fn default() -> Self {
        Self { flip: true, pad: 4, max_rotation_degrees: 10.0, brightness: 0.2, contrast: 0.2 }
    }
}

/// One H×W×C image augmented as `settings` says, drawing from `rng`; appended to `out`.
pub fn augment(image: &[u8], shape: ImageShape, settings: &Augmentation, rng: &mut SmallRng, out: &mut Vec<u8>) {
    let pad = i64::from(settings.pad);
    let flip = rng.random_bool(0.5) && settings.flip;
    let dy = rng.random_range(-pad..=pad);
    let dx = rng.random_range(-pad..=pad);
    let symmetric = |rng: &mut SmallRng, range: f32| (2.0 * rng.random::<f32>() - 1.0) * range;
    let degrees = symmetric(rng, settings.max_rotation_degrees);
    let brightness = 1.0 + symmetric(rng, settings.brightness);
    let contrast = 1.0 + symmetric(rng, settings.contrast);

    let mut first = vec![0; image.len()];
    let mut second = vec![0; image.len()];
    if flip {
        flip_horizontal(image, shape, &mut first);
        pad_crop(&first, shape, dy, dx, &mut second);
    } else {
        pad_crop(image, shape, dy, dx, &mut second);
    }
    rotate(&second, shape, degrees, &mut first);
    jitter(&mut first, brightness, contrast);
    out.extend_from_slice(&first);
}

/// `image` mirrored left-right, into `out` (the same size).
pub fn flip_horizontal(image: &[u8], shape: ImageShape, out: &mut [u8]) {
    let (w, c) = (shape.width as usize, shape.channels as usize);
    for (row_in, row_out) in image.chunks_exact(w * c).zip(out.chunks_exact_mut(w * c)) {
        for (x, pixel) in row_out.chunks_exact_mut(c).enumerate() {
            let from = (w - 1 - x) * c;
            pixel.copy_from_slice(&row_in[from..from + c]);
        }
    }
}

/// The crop of `image` padded with its replicated edges whose top-left corner is `(dy, dx)`
/// away from the original's, into `out`: pixel (y, x) is the input's (y + dy, x + dx),
/// clamped to the image.
pub fn pad_crop(image: &[u8], shape: ImageShape, dy: i64, dx: i64, out: &mut [u8]) {
    let (h, w, c) = (i64::from(shape.height), i64::from(shape.width), shape.channels as usize);
    let mut at = 0;
    for y in 0..h {
        let sy = (y + dy).clamp(0, h - 1);
        for x in 0..w {
            let from = ((sy * w + (x + dx).clamp(0, w - 1)) as usize) * c;
            out[at..at + c].copy_from_slice(&image[from..from + c]);
            at += c;
        }
    }
}

/// `image` rotated by `degrees` about its centre, bilinear, edges replicated, into `out`.
/// Zero degrees copies the image exactly.
pub fn rotate(image: &[u8], shape: ImageShape, degrees: f32, out: &mut [u8]) {
    if degrees == 0.0 {
        out.copy_from_slice(image);
        return;
    }
    let (sin, cos) = degrees.to_radians().sin_cos();
    let (cy, cx) = ((shape.height as f32 - 1.0) / 2.0, (shape.width as f32 - 1.0) / 2.0);
    warp_bilinear(image, shape, out, |x, y| {
        let (u, v) = (x - cx, y - cy);
        (cos * u + sin * v + cx, cos * v - sin * u + cy)
    });
}

/// Resamples `image` into `out` (the same size): output pixel (x, y) is the input at
/// `source(x, y)`, clamped to the image (edges replicated) and interpolated bilinearly.
pub fn warp_bilinear(image: &[u8], shape: ImageShape, out: &mut [u8], source: impl Fn(f32, f32) -> (f32, f32)) {
    let (h, w, c) = (shape.height as usize, shape.width as usize, shape.channels as usize);
    let (max_y, max_x) = ((h - 1) as f32, (w - 1) as f32);
    let mut at = 0;
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = source(x as f32, y as f32);
            let (sx, sy) = (sx.clamp(0.0, max_x), sy.clamp(0.0, max_y));
            let (x0, y0) = (sx as usize, sy as usize);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            for channel in 0..c {
                let pixel = |yy: usize, xx: usize| f32::from(image[(yy * w + xx) * c + channel]);
                let top = pixel(y0, x0) + fx * (pixel(y0, x1) - pixel(y0, x0));
                let bottom = pixel(y1, x0) + fx * (pixel(y1, x1) - pixel(y1, x0));
                out[at] = (top + fy * (bottom - top)).round().clamp(0.0, 255.0) as u8;
                at += 1;
            }
        }
    }
}

/// Brightness then contrast, in place: `v ← m + contrast·(brightness·v − m)` with `m` the
/// mean of `brightness·v` over the image, rounded and clamped to 0..=255.
pub fn jitter(image: &mut [u8], brightness: f32, contrast: f32) {
    if image.is_empty() || (brightness == 1.0 && contrast == 1.0) {
        return;
    }
    let sum: u64 = image.iter().map(|&p| u64::from(p)).sum();
    let mean = brightness * sum as f32 / image.len() as f32;
    for pixel in image.iter_mut() {
        let value = mean + contrast * (brightness * f32::from(*pixel) - mean);
        *pixel = value.round().clamp(0.0, 255.0) as u8;
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
                let mut rng = SmallRng::seed_from_u64(super::mix(view.seed, (view.offset + k) as u64));
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

    const SHAPE: ImageShape = ImageShape { height: 12, width: 10, channels: 1 };

    fn gradient_image(shape: ImageShape) -> Vec<u8> {
        (0..shape.pixels()).map(|i| (i * 37 % 251) as u8).collect()
    }

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
        let labels: Vec<i64> = (0..100).map(|i| if i < 50 { 0 } else if i < 80 { 1 } else { 2 }).collect();
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
    fn augmentation_is_deterministic_per_seed_and_keeps_the_size() {
        let image = gradient_image(SHAPE);
        let run = |seed| {
            let mut out = Vec::new();
            augment(&image, SHAPE, &Augmentation::default(), &mut SmallRng::seed_from_u64(seed), &mut out);
            out
        };
        assert_eq!(run(3), run(3));
        assert!((0..20).any(|seed| run(seed) != run(3)), "other seeds give other images");
        assert!((0..20).all(|seed| run(seed).len() == image.len()));
        let rgb = ImageShape { height: 6, width: 7, channels: 3 };
        let mut out = Vec::new();
        augment(&gradient_image(rgb), rgb, &Augmentation::default(), &mut SmallRng::seed_from_u64(1), &mut out);
        assert_eq!(out.len(), rgb.pixels());
    }

    #[test]
    fn flip_twice_is_the_identity() {
        for shape in [SHAPE, ImageShape { height: 5, width: 4, channels: 3 }] {
            let image = gradient_image(shape);
            let (mut once, mut twice) = (vec![0; image.len()], vec![0; image.len()]);
            flip_horizontal(&image, shape, &mut once);
            flip_horizontal(&once, shape, &mut twice);
            assert_ne!(once, image);
            assert_eq!(twice, image);
        }
        let mut once = vec![0; 3];
        flip_horizontal(&[1, 2, 3], ImageShape { height: 1, width: 3, channels: 1 }, &mut once);
        assert_eq!(once, [3, 2, 1]);
    }

    #[test]
    fn rotation_by_zero_is_the_identity_and_small_rotations_stay_close() {
        let image = gradient_image(SHAPE);
        let mut out = vec![0; image.len()];
        rotate(&image, SHAPE, 0.0, &mut out);
        assert_eq!(out, image);
        // A smooth ramp rotated by 90° about the centre becomes the transposed ramp.
        let square = ImageShape { height: 9, width: 9, channels: 1 };
        let ramp: Vec<u8> = (0..81).map(|i| (i % 9 * 20) as u8).collect();
        let mut turned = vec![0; 81];
        rotate(&ramp, square, 90.0, &mut turned);
        let column_ramp = (0..81).all(|i| (i64::from(turned[i]) - (i / 9 * 20) as i64).abs() <= 1 || (i64::from(turned[i]) - (160 - i / 9 * 20) as i64).abs() <= 1);
        assert!(column_ramp, "{turned:?}");
        // A constant image stays constant under any rotation (edges are replicated).
        let flat = vec![77u8; SHAPE.pixels()];
        rotate(&flat, SHAPE, 7.5, &mut out);
        assert!(out.iter().all(|&p| p == 77));
    }

    #[test]
    fn pad_crop_shifts_with_replicated_edges() {
        let shape = ImageShape { height: 1, width: 4, channels: 1 };
        let mut out = vec![0; 4];
        pad_crop(&[10, 20, 30, 40], shape, 0, 2, &mut out);
        assert_eq!(out, [30, 40, 40, 40]);
        pad_crop(&[10, 20, 30, 40], shape, 0, -1, &mut out);
        assert_eq!(out, [10, 10, 20, 30]);
        pad_crop(&[10, 20, 30, 40], shape, 3, 0, &mut out);
        assert_eq!(out, [10, 20, 30, 40], "rows clamp to the only row");
    }

    #[test]
    fn jitter_scales_brightness_and_contrast() {
        let mut image = vec![100u8, 200];
        jitter(&mut image, 1.0, 1.0);
        assert_eq!(image, [100, 200]);
        jitter(&mut image, 1.1, 1.0);
        assert_eq!(image, [110, 220]);
        let mut image = vec![100u8, 200];
        jitter(&mut image, 1.0, 0.8);
        assert_eq!(image, [110, 190], "contrast pulls pixels toward the mean 150");
        let mut image = vec![250u8, 10];
        jitter(&mut image, 1.2, 1.2);
        assert_eq!(image[0], 255, "clamped");
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
