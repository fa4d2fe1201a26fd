//! The STRONG view of FixMatch-style consistency training (Sohn et al. 2020, "FixMatch"):
//! RandAugment (Cubuk et al. 2020) on raw H×W×C bytes (C = 1 gray or 3 RGB, channels
//! interleaved), followed by Cutout. The caller has already applied the weak view
//! ([`super::weak::augment`]); this adds `ops` operations drawn uniformly with
//! replacement from [`Op::ALL`], each at a strength drawn uniformly in `[0, magnitude]` (the
//! FixMatch variant of RandAugment; magnitudes are torchvision's 31 bins, 0..=30) and, for
//! the signed operations, with a random sign. Every operation application draws exactly
//! three numbers (operation, strength, sign) and Cutout three more (side, centre row,
//! centre column) whatever the settings, so an image depends only on its generator's state.
//! Geometric operations replicate the image's edges, like the weak view.

use feral_common::dataset::ImageShape;
use rand::rngs::SmallRng;
use rand::Rng;

use super::pixels::{jitter, pad_crop, rotate, warp_bilinear};

/// The largest magnitude (torchvision's 31 bins run 0..=30); larger settings count as this.
pub const MAX_MAGNITUDE: u32 = 30;

/// The byte Cutout paints, in every channel.
pub const CUTOUT_FILL: u8 = 127;

/// Settings of the strong view: `ops` random operations of strength `magnitude` (0..=30, as
/// in torchvision's RandAugment with 31 bins), then Cutout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StrongAugmentation {
    /// Operations per image, drawn uniformly with replacement from [`Op::ALL`].
    pub ops: u32,
    /// Upper bound of each operation's strength, in bins 0..=30 (more counts as 30); the
    /// strength actually used is drawn uniformly in `[0, magnitude]` for every application.
    pub magnitude: u32,
    /// Cutout square side as a fraction of the shorter image side (0 disables; above 1
    /// counts as 1): the side is drawn uniformly in `(0, cutout·min(h, w)]` and rounded to
    /// whole pixels, the centre uniformly among the pixels, and the square, clipped by the
    /// border, is filled with [`CUTOUT_FILL`].
    pub cutout: f32,
}

impl Default for StrongAugmentation {
    fn default() -> Self {
        Self { ops: 2, magnitude: 10, cutout: 0.5 }
    }
}

/// One RandAugment operation. With `m` its strength as a signed fraction of the largest
/// (bins / 30, in −1..=1), each does what its variant's documentation says; unsigned
/// operations use `|m|`. Results are rounded and clamped to 0..=255.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The image unchanged.
    Identity,
    /// Rotation about the centre by `30·m` degrees (bilinear, edges replicated).
    Rotate,
    /// Horizontal shear about the centre, source column `x + 0.3·m·(y − cy)` (bilinear,
    /// edges replicated).
    ShearX,
    /// Vertical shear about the centre, source row `y + 0.3·m·(x − cx)` (bilinear, edges
    /// replicated).
    ShearY,
    /// Shift right by `round(0.3·m·width)` whole pixels (left when negative), edges
    /// replicated.
    TranslateX,
    /// Shift down by `round(0.3·m·height)` whole pixels (up when negative), edges
    /// replicated.
    TranslateY,
    /// Each channel stretched linearly so that its minimum becomes 0 and its maximum 255
    /// (a constant channel is left alone). Ignores the strength.
    AutoContrast,
    /// Each channel's histogram equalised: value `v` becomes
    /// `255·(cdf(v) − cdf(min))/(n − cdf(min))`, so the lowest present value maps to 0 and
    /// the highest to 255 (a constant channel is left alone). Ignores the strength.
    Equalize,
    /// Only the top `8 − round(4·|m|)` bits kept (at least 4: multiples of 16 at most).
    Posterize,
    /// Blend with the image smoothed by PIL's 3×3 kernel (1s around a centre of 5, over
    /// 13), by a factor `1 + 0.9·m`: above 1 sharpens, below blurs. The one-pixel border is
    /// kept, as in PIL.
    Sharpness,
    /// Distance from the image's mean (over all bytes) times `1 + 0.9·m`.
    Contrast,
    /// Every byte times `1 + 0.9·m`.
    Brightness,
    /// Bytes at or above `256·(1 − |m|)` inverted (`255 − v`): none at strength 0, all at
    /// the largest.
    Solarize,
}

impl Op {
    /// Every operation, in the order the random choice indexes them.
    pub const ALL: [Op; 13] = [
        Op::Identity,
        Op::Rotate,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateX,
        Op::TranslateY,
        Op::AutoContrast,
        Op::Equalize,
        Op::Posterize,
        Op::Sharpness,
        Op::Contrast,
        Op::Brightness,
        Op::Solarize,
    ];

    /// Whether the strength's sign matters (it is then drawn ± with equal odds).
    pub fn signed(self) -> bool {
        matches!(self, Op::Rotate | Op::ShearX | Op::ShearY | Op::TranslateX | Op::TranslateY | Op::Sharpness | Op::Contrast | Op::Brightness)
    }
}

/// Applies the strong ops to `image` (already weakly augmented by the caller), drawing from
/// `rng`; the result (the same length) is appended to `out`, like [`super::weak::augment`].
pub fn strong_augment(image: &[u8], shape: ImageShape, settings: &StrongAugmentation, rng: &mut SmallRng, out: &mut Vec<u8>) {
    let magnitude = settings.magnitude.min(MAX_MAGNITUDE);
    let mut current = image.to_vec();
    let mut next = vec![0; image.len()];
    for _ in 0..settings.ops {
        let op = Op::ALL[rng.random_range(0..Op::ALL.len())];
        apply_random(op, magnitude, &current, shape, rng, &mut next);
        std::mem::swap(&mut current, &mut next);
    }
    let (h, w) = (shape.height as usize, shape.width as usize);
    let fraction = if settings.cutout.is_nan() { 0.0 } else { settings.cutout.clamp(0.0, 1.0) };
    let side = (1.0 - rng.random::<f32>()) * fraction * h.min(w) as f32;
    let cy = rng.random_range(0..h.max(1));
    let cx = rng.random_range(0..w.max(1));
    if fraction > 0.0 {
        cutout(&mut current, shape, side.round() as usize, cy, cx);
    }
    out.extend_from_slice(&current);
}

/// `op` at a strength drawn uniformly in `[0, magnitude]` bins, negated with odds ½ when
/// the operation is signed (two draws either way), applied to `image` into `out`.
pub(crate) fn apply_random(op: Op, magnitude: u32, image: &[u8], shape: ImageShape, rng: &mut SmallRng, out: &mut [u8]) {
    let strength = rng.random::<f32>() * magnitude.min(MAX_MAGNITUDE) as f32;
    let negative = rng.random_bool(0.5);
    let signed = if negative && op.signed() { -strength } else { strength };
    apply(op, signed, image, shape, out);
}

/// `op` at the signed strength `magnitude` (bins, clamped to −30..=30) applied to `image`,
/// written to `out` (the same length). Deterministic: no randomness of its own.
pub(crate) fn apply(op: Op, magnitude: f32, image: &[u8], shape: ImageShape, out: &mut [u8]) {
    out.copy_from_slice(image);
    if image.is_empty() {
        return;
    }
    let m = if magnitude.is_nan() { 0.0 } else { magnitude.clamp(-30.0, 30.0) / 30.0 };
    let shift = |side: u32| (0.3 * m * side as f32).round() as i64;
    match op {
        Op::Identity => {}
        Op::Rotate => rotate(image, shape, 30.0 * m, out),
        Op::ShearX => shear(image, shape, 0.3 * m, 0.0, out),
        Op::ShearY => shear(image, shape, 0.0, 0.3 * m, out),
        Op::TranslateX => pad_crop(image, shape, 0, -shift(shape.width), out),
        Op::TranslateY => pad_crop(image, shape, -shift(shape.height), 0, out),
        Op::AutoContrast => per_channel(out, shape, autocontrast),
        Op::Equalize => per_channel(out, shape, equalize),
        Op::Posterize => {
            let bits = (8 - (4.0 * m.abs()).round() as u32).max(4);
            let mask = 0xFFu8 << (8 - bits);
            out.iter_mut().for_each(|p| *p &= mask);
        }
        Op::Sharpness => sharpness(image, shape, 1.0 + 0.9 * m, out),
        Op::Contrast => jitter(out, 1.0, 1.0 + 0.9 * m),
        Op::Brightness => jitter(out, 1.0 + 0.9 * m, 1.0),
        Op::Solarize => {
            let threshold = 256.0 * (1.0 - m.abs());
            out.iter_mut().filter(|p| f32::from(**p) >= threshold).for_each(|p| *p = 255 - *p);
        }
    }
}

/// Fills the `side`×`side` square centred on pixel (`cy`, `cx`) (its top-left corner
/// `side/2` up and left of the centre), clipped by the border, with [`CUTOUT_FILL`].
pub(crate) fn cutout(image: &mut [u8], shape: ImageShape, side: usize, cy: usize, cx: usize) {
    let (h, w, c) = (shape.height as usize, shape.width as usize, shape.channels as usize);
    let (top, left) = (cy.saturating_sub(side / 2), cx.saturating_sub(side / 2));
    let (bottom, right) = ((cy + side - side / 2).min(h), (cx + side - side / 2).min(w));
    for y in top..bottom {
        if right > left {
            image[(y * w + left) * c..(y * w + right) * c].fill(CUTOUT_FILL);
        }
    }
}

/// `image` sheared about its centre into `out`: pixel (y, x) samples the input at column
/// `x + sx·(y − cy)` and row `y + sy·(x − cx)`, bilinear, edges replicated. No shear
/// copies the image exactly.
fn shear(image: &[u8], shape: ImageShape, sx: f32, sy: f32, out: &mut [u8]) {
    if sx == 0.0 && sy == 0.0 {
        out.copy_from_slice(image);
        return;
    }
    let (cy, cx) = ((shape.height as f32 - 1.0) / 2.0, (shape.width as f32 - 1.0) / 2.0);
    warp_bilinear(image, shape, out, |x, y| (x + sx * (y - cy), y + sy * (x - cx)));
}

/// Runs `remap` on every channel of `image`: it gets the channel's histogram and returns
/// a lookup table, or `None` to leave the channel alone.
fn per_channel(image: &mut [u8], shape: ImageShape, remap: fn(&[usize; 256]) -> Option<[u8; 256]>) {
    let c = (shape.channels as usize).max(1);
    for channel in 0..c {
        let mut histogram = [0usize; 256];
        image.iter().skip(channel).step_by(c).for_each(|&p| histogram[usize::from(p)] += 1);
        if let Some(table) = remap(&histogram) {
            image.iter_mut().skip(channel).step_by(c).for_each(|p| *p = table[usize::from(*p)]);
        }
    }
}

/// The lowest and highest values present in `histogram`, when there are two different ones.
fn value_range(histogram: &[usize; 256]) -> Option<(usize, usize)> {
    let low = histogram.iter().position(|&n| n > 0)?;
    let high = histogram.iter().rposition(|&n| n > 0)?;
    (high > low).then_some((low, high))
}

/// The lookup table stretching the present values' range to 0..=255.
fn autocontrast(histogram: &[usize; 256]) -> Option<[u8; 256]> {
    let (low, high) = value_range(histogram)?;
    let span = (high - low) as f32;
    let mut table = [0u8; 256];
    for (value, entry) in table.iter_mut().enumerate() {
        *entry = ((value as f32 - low as f32) * 255.0 / span).round().clamp(0.0, 255.0) as u8;
    }
    Some(table)
}

/// The histogram-equalising lookup table (see [`Op::Equalize`]).
fn equalize(histogram: &[usize; 256]) -> Option<[u8; 256]> {
    let (low, _) = value_range(histogram)?;
    let total: usize = histogram.iter().sum();
    let below_low = histogram[low];
    let span = (total - below_low) as f32;
    let mut table = [0u8; 256];
    let mut cumulative = 0;
    for (value, entry) in table.iter_mut().enumerate() {
        cumulative += histogram[value];
        *entry = (cumulative.saturating_sub(below_low) as f32 * 255.0 / span).round().clamp(0.0, 255.0) as u8;
    }
    Some(table)
}

/// `image` blended with its 3×3-smoothed self by `factor` into `out` (see [`Op::Sharpness`]).
fn sharpness(image: &[u8], shape: ImageShape, factor: f32, out: &mut [u8]) {
    out.copy_from_slice(image);
    let (h, w, c) = (shape.height as usize, shape.width as usize, shape.channels as usize);
    if factor == 1.0 || h < 3 || w < 3 {
        return;
    }
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for channel in 0..c {
                let pixel = |yy: usize, xx: usize| f32::from(image[(yy * w + xx) * c + channel]);
                let mut sum = 4.0 * pixel(y, x);
                for yy in y - 1..=y + 1 {
                    for xx in x - 1..=x + 1 {
                        sum += pixel(yy, xx);
                    }
                }
                let smooth = sum / 13.0;
                let value = smooth + factor * (pixel(y, x) - smooth);
                out[(y * w + x) * c + channel] = value.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const GRAY: ImageShape = ImageShape { height: 12, width: 10, channels: 1 };
    const RGB: ImageShape = ImageShape { height: 6, width: 7, channels: 3 };

    fn gradient_image(shape: ImageShape) -> Vec<u8> {
        (0..shape.pixels()).map(|i| (i * 37 % 251) as u8).collect()
    }

    fn applied(op: Op, magnitude: f32, image: &[u8], shape: ImageShape) -> Vec<u8> {
        let mut out = vec![0; image.len()];
        apply(op, magnitude, image, shape, &mut out);
        out
    }

    fn random_applied(op: Op, seed: u64, shape: ImageShape) -> Vec<u8> {
        let image = gradient_image(shape);
        let mut out = vec![0; image.len()];
        apply_random(op, 30, &image, shape, &mut SmallRng::seed_from_u64(seed), &mut out);
        out
    }

    fn strong(image: &[u8], shape: ImageShape, settings: &StrongAugmentation, seed: u64) -> Vec<u8> {
        let mut out = vec![9];
        strong_augment(image, shape, settings, &mut SmallRng::seed_from_u64(seed), &mut out);
        assert_eq!(out[0], 9, "appended, not overwritten");
        out.split_off(1)
    }

    #[test]
    fn every_op_keeps_the_length_and_is_deterministic_per_seed() {
        let strength_free = [Op::Identity, Op::AutoContrast, Op::Equalize];
        for op in Op::ALL {
            for shape in [GRAY, RGB] {
                for magnitude in [-30.0, -7.5, 0.0, 13.0, 30.0] {
                    assert_eq!(applied(op, magnitude, &gradient_image(shape), shape).len(), shape.pixels(), "{op:?}");
                }
                assert_eq!(random_applied(op, 4, shape), random_applied(op, 4, shape), "{op:?}");
                let varies = (0..20).any(|seed| random_applied(op, seed, shape) != random_applied(op, 4, shape));
                assert_eq!(varies, !strength_free.contains(&op), "{op:?} on {shape:?}");
            }
        }
    }

    #[test]
    fn zero_strength_geometric_and_tonal_ops_are_the_identity() {
        for shape in [GRAY, RGB] {
            let image = gradient_image(shape);
            for op in Op::ALL.into_iter().filter(|&op| !matches!(op, Op::AutoContrast | Op::Equalize)) {
                assert_eq!(applied(op, 0.0, &image, shape), image, "{op:?}");
            }
            for op in [Op::Rotate, Op::ShearX, Op::ShearY, Op::Sharpness, Op::Contrast] {
                assert_ne!(applied(op, 30.0, &image, shape), image, "{op:?} at full strength changes the image");
            }
        }
    }

    #[test]
    fn autocontrast_stretches_each_channel_to_the_full_range() {
        let image: Vec<u8> = (0..GRAY.pixels()).map(|i| 100 + (i % 51) as u8).collect();
        let out = applied(Op::AutoContrast, 0.0, &image, GRAY);
        assert_eq!((out.iter().min(), out.iter().max()), (Some(&0), Some(&255)));
        assert_eq!(applied(Op::AutoContrast, 0.0, &[100, 125, 150], ImageShape { height: 1, width: 3, channels: 1 }), [0, 128, 255]);
        // Channels separately: R spans 10..=20, G 0..=255 already, B is constant.
        let pixels = [10, 0, 50, 20, 255, 50];
        let out = applied(Op::AutoContrast, 0.0, &pixels, ImageShape { height: 1, width: 2, channels: 3 });
        assert_eq!(out, [0, 0, 50, 255, 255, 50]);
    }

    #[test]
    fn equalize_sends_a_two_valued_image_to_the_extremes() {
        let image: Vec<u8> = (0..GRAY.pixels()).map(|i| if i % 3 == 0 { 100 } else { 150 }).collect();
        let out = applied(Op::Equalize, 0.0, &image, GRAY);
        assert!(out.iter().zip(&image).all(|(&o, &i)| o == if i == 100 { 0 } else { 255 }), "{out:?}");
        let flat = vec![77u8; GRAY.pixels()];
        assert_eq!(applied(Op::Equalize, 0.0, &flat, GRAY), flat, "a constant image is left alone");
        let out = applied(Op::Equalize, 0.0, &gradient_image(RGB), RGB);
        for channel in 0..3 {
            let values: Vec<u8> = out.iter().skip(channel).step_by(3).copied().collect();
            assert_eq!((values.iter().min(), values.iter().max()), (Some(&0), Some(&255)), "channel {channel}");
        }
    }

    #[test]
    fn posterize_at_full_strength_keeps_four_bits() {
        let image: Vec<u8> = (0..=255).collect();
        let shape = ImageShape { height: 16, width: 16, channels: 1 };
        for magnitude in [30.0, -30.0] {
            let out = applied(Op::Posterize, magnitude, &image, shape);
            assert!(out.iter().all(|&p| p % 16 == 0));
            assert_eq!(out[255], 240);
        }
        let out = applied(Op::Posterize, 15.0, &image, shape);
        assert!(out.iter().all(|&p| p % 4 == 0) && out.iter().any(|&p| p % 16 != 0), "six bits at half strength");
    }

    #[test]
    fn translation_by_whole_pixels_shifts_content() {
        let image = gradient_image(GRAY);
        let (h, w) = (12, 10);
        // 0.3 · 10 = 3 columns right; 0.3 · 12 = 3.6 → 4 rows up when negative.
        let right = applied(Op::TranslateX, 30.0, &image, GRAY);
        let up = applied(Op::TranslateY, -30.0, &image, GRAY);
        for y in 0..h {
            for x in 0..w {
                assert_eq!(right[y * w + x], image[y * w + x.saturating_sub(3)]);
                assert_eq!(up[y * w + x], image[(y + 4).min(h - 1) * w + x]);
            }
        }
        let rgb = gradient_image(RGB);
        let left = applied(Op::TranslateX, -10.0, &rgb, RGB);
        // 0.1 · 7 = 0.7 → 1 pixel left: pixel (y, x) is the input's (y, x + 1).
        assert_eq!(left[..3], rgb[3..6]);
    }

    #[test]
    fn shear_is_bilinear_with_replicated_edges() {
        let flat = vec![201u8; RGB.pixels()];
        for op in [Op::ShearX, Op::ShearY, Op::Rotate] {
            assert_eq!(applied(op, 23.0, &flat, RGB), flat, "{op:?} keeps a constant image");
        }
        // Rows 0..=8 of a horizontal ramp 0, 10, ..; shear-x moves the top and bottom rows
        // in opposite directions and leaves the middle one.
        let shape = ImageShape { height: 9, width: 9, channels: 1 };
        let ramp: Vec<u8> = (0..81).map(|i| (i % 9 * 10) as u8).collect();
        let out = applied(Op::ShearX, 25.0, &ramp, shape); // shear 0.25: ±1 column at rows 0 and 8
        assert_eq!(out[4 * 9..5 * 9], ramp[4 * 9..5 * 9]);
        assert_eq!(out[9 + 4], 33, "row 1 samples column 3.25: 32.5, rounded");
        assert_eq!(out[4], 30);
        assert_eq!(out[8 * 9 + 4], 50);
    }

    #[test]
    fn tonal_ops_do_what_they_say() {
        let shape = ImageShape { height: 1, width: 2, channels: 1 };
        assert_eq!(applied(Op::Brightness, 30.0, &[100, 50], shape), [190, 95]);
        assert_eq!(applied(Op::Brightness, -30.0, &[100, 50], shape), [10, 5]);
        assert_eq!(applied(Op::Contrast, -30.0, &[100, 200], shape), [145, 155]);
        assert_eq!(applied(Op::Solarize, 30.0, &[0, 255], shape), [255, 0]);
        assert_eq!(applied(Op::Solarize, 15.0, &[100, 200], shape), [100, 55]);
        let mut spike = vec![100u8; 25];
        spike[12] = 160;
        let square = ImageShape { height: 5, width: 5, channels: 1 };
        let sharper = applied(Op::Sharpness, 30.0, &spike, square);
        let softer = applied(Op::Sharpness, -30.0, &spike, square);
        assert!(sharper[12] > 160 && softer[12] < 160 && softer[12] > 100, "{} {}", sharper[12], softer[12]);
        assert!(sharper[6] < 100 && softer[6] > 100, "neighbours move the other way");
        assert_eq!((sharper[0], softer[0]), (100, 100), "the border is kept");
    }

    #[test]
    fn cutout_paints_a_gray_square_only_when_enabled() {
        let bright = vec![230u8; RGB.pixels()];
        let none = StrongAugmentation { ops: 0, magnitude: 10, cutout: 0.0 };
        assert!((0..10).all(|seed| strong(&bright, RGB, &none, seed) == bright));
        let full = StrongAugmentation { ops: 0, magnitude: 10, cutout: 1.0 };
        let mut painted = 0;
        for seed in 0..20 {
            let out = strong(&bright, RGB, &full, seed);
            assert!(out.iter().all(|&p| p == 230 || p == CUTOUT_FILL));
            painted += usize::from(out.contains(&CUTOUT_FILL));
        }
        assert!(painted >= 15, "{painted} of 20 seeds painted");
        let mut image = vec![0u8; 4 * 5];
        cutout(&mut image, ImageShape { height: 4, width: 5, channels: 1 }, 3, 0, 4);
        let want: Vec<u8> = (0..20).map(|i| if i / 5 <= 1 && i % 5 >= 3 { 127 } else { 0 }).collect();
        assert_eq!(image, want, "a 3×3 square centred on the top-right pixel, clipped");
    }

    #[test]
    fn strong_view_is_deterministic_and_usually_changes_the_image() {
        for shape in [GRAY, RGB] {
            let image = gradient_image(shape);
            let settings = StrongAugmentation::default();
            assert_eq!(strong(&image, shape, &settings, 7), strong(&image, shape, &settings, 7));
            let changed = (0..20).filter(|&seed| strong(&image, shape, &settings, seed) != image).count();
            assert!(changed >= 17, "{changed} of 20 seeds changed the image");
            assert!((0..20).all(|seed| strong(&image, shape, &settings, seed).len() == image.len()));
            let distinct = (0..20).any(|seed| strong(&image, shape, &settings, seed) != strong(&image, shape, &settings, 7));
            assert!(distinct, "other seeds give other images");
        }
        let empty = ImageShape { height: 0, width: 0, channels: 1 };
        assert!(strong(&[], empty, &StrongAugmentation::default(), 1).is_empty());
    }
}
