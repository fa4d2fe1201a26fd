//! The weak view of a training image: a horizontal flip, a random crop of the image padded
//! with its replicated edges, a small bilinear rotation and brightness/contrast jitter,
//! each image drawing from a generator of its own.

use feral_common::dataset::ImageShape;
use rand::rngs::SmallRng;
use rand::Rng;

use super::pixels::{flip_horizontal, jitter, pad_crop, rotate};

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

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::train::pixels::tests::{gradient_image, SHAPE};

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
}
