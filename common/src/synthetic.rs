//! Procedural synthetic facial-expression dataset for the demo and the tests, so that no
//! real data is ever required. Each sample is a small grayscale "face" (oval, eyes, brows,
//! mouth, optional nose and hair) whose expression class shows in the drawn features, with
//! nuisance variation (pose, scale, lighting, contrast, pixel noise), overlapping class
//! distributions, a FER2013-like class imbalance and optional label noise. Sample `i`
//! depends only on the config and `i`, so datasets can be generated in parallel chunks.

use std::ops::Range;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// FER2013 class order.
pub const CLASS_NAMES: [&str; 7] = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"];

const NUM_CLASSES: usize = CLASS_NAMES.len();

/// Class indices from most to least frequent, as in FER2013
/// (happy, neutral, sad, fear, angry, surprise, disgust).
const FREQUENCY_ORDER: [usize; NUM_CLASSES] = [3, 6, 4, 2, 0, 5, 1];

/// Generator settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// How many images the dataset has.
    pub samples: usize,
    /// Side of the square images in pixels (designed for 32..=128).
    pub image_size: u32,
    /// Count of the most frequent class over the least frequent one (>= 1).
    pub imbalance_ratio: f64,
    /// Probability in [0, 1) that the observed label is replaced by a different class.
    pub label_noise: f64,
    /// Seed of the whole dataset.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self { samples: 5000, image_size: 48, imbalance_ratio: 10.0, label_noise: 0.1, seed: 7 }
    }
}

/// One generated image with its observed and true labels.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSample {
    /// `image_size * image_size` grayscale pixels, row-major.
    pub pixels: Vec<u8>,
    /// Observed (possibly noisy) label in `0..7`.
    pub label: i64,
    /// The class actually drawn.
    pub true_label: i64,
}

/// Class proportions (summing to 1): a geometric profile from the most frequent class
/// (happy) to the least frequent (disgust) with most/least = `imbalance_ratio`.
/// Ratios below 1 (or NaN) are treated as 1, i.e. balanced classes.
pub fn class_proportions(imbalance_ratio: f64) -> [f64; 7] {
    let ratio = imbalance_ratio.max(1.0);
    let last_rank = (NUM_CLASSES - 1) as f64;
    let mut proportions = [0.0_f64; NUM_CLASSES];
    for (rank, &class) in FREQUENCY_ORDER.iter().enumerate() {
        proportions[class] = ratio.powf(-(rank as f64) / last_rank);
    }
    let total: f64 = proportions.iter().sum();
    proportions.map(|p| p / total)
}

/// Samples with indices in `range`, clipped to `0..config.samples`. Sample `i` depends
/// only on `(config, i)`, never on the range it is generated in.
pub fn generate(config: &SyntheticConfig, range: Range<usize>) -> Vec<SyntheticSample> {
    let proportions = class_proportions(config.imbalance_ratio);
    let end = range.end.min(config.samples);
    (range.start..end).map(|index| generate_one(config, &proportions, index)).collect()
}

/// SplitMix64 finalizer: a bijective, well-mixing 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Standard normal draw (Box-Muller), clipped to ±2.5 so jitter never produces absurd shapes.
fn gaussian(rng: &mut SmallRng) -> f32 {
    let u1 = rng.random::<f32>().max(1e-7);
    let u2 = rng.random::<f32>();
    ((-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()).clamp(-2.5, 2.5)
}

fn uniform(rng: &mut SmallRng, low: f32, high: f32) -> f32 {
    low + (high - low) * rng.random::<f32>()
}

/// Expression parameters in face-local units (face half-height ≈ 0.44, y pointing down).
#[derive(Debug, Clone, Copy)]
struct Expression {
    /// Eye height multiplier (1 = neutral).
    eye_open: f32,
    /// Vertical brow offset; negative raises the brows.
    brow_raise: f32,
    /// Inner brow end minus outer brow end; positive = inner ends down (frowning).
    brow_tilt: f32,
    /// Mouth half-width.
    mouth_width: f32,
    /// Mouth corner lift; positive smiles, negative frowns.
    mouth_curve: f32,
    /// Half-opening of the mouth at its centre.
    mouth_open: f32,
    /// One-sided corner lift and upper-lip raise (disgust).
    mouth_asym: f32,
}

/// Per-class means of [eye_open, brow_raise, brow_tilt, mouth_width, mouth_curve,
/// mouth_open, mouth_asym], in `CLASS_NAMES` order. Neighbouring classes (fear/surprise,
/// sad/neutral, angry/disgust) differ by only a few jitter deviations in a few features.
const CLASS_MEANS: [[f32; 7]; NUM_CLASSES] = [
    [0.55, 0.015, 0.045, 0.100, -0.025, 0.004, 0.000],   // angry
    [0.50, 0.010, 0.025, 0.110, -0.015, 0.016, 0.045],   // disgust
    [1.35, -0.030, -0.030, 0.130, -0.010, 0.035, 0.000], // fear
    [0.50, -0.005, 0.000, 0.150, 0.055, 0.012, 0.000],   // happy
    [0.80, -0.005, -0.040, 0.120, -0.045, 0.000, 0.000], // sad
    [1.55, -0.050, 0.000, 0.080, 0.000, 0.070, 0.000],   // surprise
    [1.00, 0.000, 0.000, 0.120, 0.000, 0.000, 0.000],    // neutral
];

/// Per-sample Gaussian jitter (standard deviation) of each expression parameter.
const JITTER_SD: [f32; 7] = [0.15, 0.012, 0.012, 0.012, 0.015, 0.010, 0.010];

impl Expression {
    fn sample(class: usize, rng: &mut SmallRng) -> Self {
        let mut p = CLASS_MEANS[class];
        for (value, sd) in p.iter_mut().zip(JITTER_SD) {
            *value += sd * gaussian(rng);
        }
        Self::from_params(p)
    }

    /// The expression of parameters in `CLASS_MEANS` order, kept in their drawable ranges.
    fn from_params(p: [f32; 7]) -> Self {
        Self {
            eye_open: p[0].max(0.2),
            brow_raise: p[1],
            brow_tilt: p[2],
            mouth_width: p[3].max(0.05),
            mouth_curve: p[4],
            mouth_open: p[5].max(0.0),
            mouth_asym: p[6],
        }
    }

    /// The parameters in `CLASS_MEANS` order.
    fn params(&self) -> [f32; 7] {
        [self.eye_open, self.brow_raise, self.brow_tilt, self.mouth_width, self.mouth_curve, self.mouth_open, self.mouth_asym]
    }
}

/// Anti-aliased coverage of a shape at signed distance `distance` (negative inside),
/// with `pixel` the pixel size in the same units.
fn coverage(distance: f32, pixel: f32) -> f32 {
    (0.5 - distance / pixel).clamp(0.0, 1.0)
}

/// First-order signed distance to an axis-aligned ellipse centred at the origin.
fn ellipse_distance(x: f32, y: f32, rx: f32, ry: f32) -> f32 {
    let f = (x / rx).powi(2) + (y / ry).powi(2) - 1.0;
    let gradient = 2.0 * ((x / (rx * rx)).powi(2) + (y / (ry * ry)).powi(2)).sqrt();
    f / gradient.max(1e-6)
}

/// Distance from point `(px, py)` to the segment `a`–`b`.
fn segment_distance(px: f32, py: f32, a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let along = ((px - a.0) * dx + (py - a.1) * dy) / (dx * dx + dy * dy).max(1e-9);
    let t = along.clamp(0.0, 1.0);
    ((px - a.0 - t * dx).powi(2) + (py - a.1 - t * dy).powi(2)).sqrt()
}

fn lerp(from: f32, to: f32, amount: f32) -> f32 {
    from + (to - from) * amount
}

// Fixed face geometry in face-local units.
const FACE_RX: f32 = 0.36;
const FACE_RY: f32 = 0.44;
const EYE_X: f32 = 0.135;
const EYE_Y: f32 = -0.06;
const EYE_RX: f32 = 0.065;
const EYE_RY: f32 = 0.042;
const IRIS_R: f32 = 0.028;
const BROW_INNER_X: f32 = 0.06;
const BROW_OUTER_X: f32 = 0.22;
const BROW_Y: f32 = -0.165;
const BROW_HALF_THICKNESS: f32 = 0.011;
const MOUTH_Y: f32 = 0.22;
const LIP_HALF_THICKNESS: f32 = 0.013;
const NOSE_HALF_THICKNESS: f32 = 0.007;

/// Everything random about one image besides the per-pixel noise.
#[derive(Clone, Copy)]
struct Scene {
    expression: Expression,
    center: (f32, f32),
    scale: f32,
    /// (cos, sin) of the in-plane rotation.
    rotation: (f32, f32),
    face_aspect: f32,
    skin: f32,
    light: (f32, f32),
    feature_tone: f32,
    background: f32,
    background_gradient: (f32, f32),
    gaze: f32,
    asym_side: f32,
    nose: Option<f32>,
    hairline: Option<(f32, f32)>,
    contrast: f32,
    brightness: f32,
    noise_amplitude: f32,
}

impl Scene {
    fn sample(class: usize, rng: &mut SmallRng) -> Self {
        let expression = Expression::sample(class, rng);
        let angle = uniform(rng, -10.0, 10.0).to_radians();
        let jitter = (uniform(rng, -0.08, 0.08), uniform(rng, -0.08, 0.08));
        Self {
            expression,
            center: (0.5 + jitter.0, 0.5 + jitter.1),
            scale: uniform(rng, 0.8, 1.05),
            rotation: (angle.cos(), angle.sin()),
            face_aspect: uniform(rng, 0.9, 1.1),
            skin: uniform(rng, 0.5, 0.85),
            light: (uniform(rng, -0.4, 0.4), uniform(rng, -0.4, 0.4)),
            feature_tone: uniform(rng, 0.05, 0.25),
            background: uniform(rng, 0.1, 0.9),
            background_gradient: (uniform(rng, -0.3, 0.3), uniform(rng, -0.3, 0.3)),
            gaze: uniform(rng, -0.015, 0.015),
            asym_side: if rng.random_bool(0.5) { 1.0 } else { -1.0 },
            nose: rng.random_bool(0.6).then(|| uniform(rng, -0.02, 0.02)),
            hairline: rng.random_bool(0.5).then(|| (uniform(rng, -0.34, -0.27), uniform(rng, 0.05, 0.35))),
            contrast: uniform(rng, 0.75, 1.25),
            brightness: uniform(rng, -0.1, 0.1),
            noise_amplitude: uniform(rng, 0.04, 0.14),
        }
    }

    /// Intensity in roughly [0, 1] of the face at face-local point `(x, y)`, before the
    /// face's own outline coverage is applied; `pixel` is the pixel size in local units.
    fn face_tone(&self, x: f32, y: f32, pixel: f32) -> f32 {
        let e = &self.expression;
        let dark = self.feature_tone;
        let mut tone = self.skin * (1.0 + self.light.0 * x + self.light.1 * y);
        if let Some((line, darkness)) = self.hairline.filter(|(line, _)| y < line + 0.03 + pixel) {
            let hair = coverage(y - line - 0.03 * (x * 9.0).sin(), pixel);
            tone = lerp(tone, tone * darkness, hair);
        }
        // Eyes and brows are mirror-symmetric: evaluate on the |x| side.
        let side = if x < 0.0 { -1.0 } else { 1.0 };
        let ax = x.abs();
        let eye_ry = EYE_RY * e.eye_open;
        let (ex, ey) = (ax - EYE_X, y - EYE_Y);
        if ex.abs() < EYE_RX + pixel && ey.abs() < eye_ry + pixel {
            let eye = coverage(ellipse_distance(ex, ey, EYE_RX, eye_ry), pixel);
            let iris_distance = ((ex - side * self.gaze).powi(2) + ey * ey).sqrt() - IRIS_R;
            let iris = coverage(iris_distance, pixel).min(eye);
            tone = lerp(tone, 0.92, eye);
            tone = lerp(tone, dark, iris);
        }
        let inner = (BROW_INNER_X, BROW_Y + e.brow_raise + 0.5 * e.brow_tilt);
        let outer = (BROW_OUTER_X, BROW_Y + e.brow_raise - 0.5 * e.brow_tilt);
        let brow_top = inner.1.min(outer.1) - BROW_HALF_THICKNESS - pixel;
        let brow_bottom = inner.1.max(outer.1) + BROW_HALF_THICKNESS + pixel;
        if y > brow_top && y < brow_bottom && ax < BROW_OUTER_X + 0.03 {
            let d = segment_distance(ax, y, inner, outer) - BROW_HALF_THICKNESS;
            tone = lerp(tone, dark, coverage(d, pixel));
        }
        if let Some(shift) = self.nose.filter(|_| y > -0.05 && y < 0.14 && ax < 0.06) {
            let bridge = segment_distance(x, y, (0.0, -0.02), (shift, 0.10));
            let base = segment_distance(x, y, (shift - 0.03, 0.11), (shift + 0.03, 0.11));
            let d = bridge.min(base) - NOSE_HALF_THICKNESS;
            tone = lerp(tone, dark, 0.45 * coverage(d, pixel));
        }
        let (mx, my) = (x, y - MOUTH_Y);
        let reach = e.mouth_width + LIP_HALF_THICKNESS + pixel;
        if mx.abs() < reach && my.abs() < 0.15 {
            tone = lerp(tone, dark, self.mouth_coverage(mx, my, pixel));
        }
        tone
    }

    /// Coverage of the mouth (lip line plus open interior) at mouth-relative `(x, y)`.
    fn mouth_coverage(&self, x: f32, y: f32, pixel: f32) -> f32 {
        let e = &self.expression;
        let w = e.mouth_width;
        let t = (x / w).clamp(-1.0, 1.0);
        let lifted = (self.asym_side * t).max(0.0);
        let centre = -e.mouth_curve * t * t - e.mouth_asym * lifted * lifted;
        let shape = (1.0 - t * t).max(0.0).sqrt();
        let upper = centre - e.mouth_open * shape - 0.6 * e.mouth_asym.max(0.0) * lifted * shape;
        let lower = centre + e.mouth_open * shape;
        let slope = 2.0 * e.mouth_curve * t / w;
        let vertical = (upper - y).max(y - lower).max(0.0) / (1.0 + slope * slope).sqrt();
        let horizontal = (x.abs() - w).max(0.0);
        let d = (vertical * vertical + horizontal * horizontal).sqrt() - LIP_HALF_THICKNESS;
        coverage(d, pixel)
    }
}

fn generate_one(config: &SyntheticConfig, proportions: &[f64; 7], index: usize) -> SyntheticSample {
    let mut rng = SmallRng::seed_from_u64(splitmix64(splitmix64(config.seed) ^ index as u64));
    let (true_class, label) = draw_class(config, proportions, &mut rng);
    let scene = Scene::sample(true_class, &mut rng);
    SyntheticSample { pixels: render(&scene, config.image_size, &mut rng), label: label as i64, true_label: true_class as i64 }
}

/// The true class by `proportions`, then the observed label after label noise (both draws
/// always made, so images do not depend on `label_noise`).
fn draw_class(config: &SyntheticConfig, proportions: &[f64; 7], rng: &mut SmallRng) -> (usize, usize) {
    let (draw, mut cumulative) = (rng.random::<f64>(), 0.0);
    let true_class = (0..NUM_CLASSES)
        .find(|&class| {
            cumulative += proportions[class];
            draw < cumulative
        })
        .unwrap_or(FREQUENCY_ORDER[NUM_CLASSES - 1]);
    let flip = rng.random::<f64>() < config.label_noise.clamp(0.0, 1.0);
    let offset = rng.random_range(1..NUM_CLASSES); // uniform over the other classes
    let label = if flip { (true_class + offset) % NUM_CLASSES } else { true_class };
    (true_class, label)
}

/// One clip of `frames` frames of one face showing one expression (video `video` of the
/// dataset; every frame carries the clip's class and label). The expression comes and
/// goes: frame `t` shows it at intensity a_t = 0.5 + 0.5·sin(2πt/P + φ) plus noise, with
/// a period P of 6 to 10 frames, so about a third of the frames are near-neutral and hard
/// to tell apart alone, while a window of neighbouring frames always holds a clear one.
/// The face drifts a little in position and pose from frame to frame.
pub fn generate_video(config: &SyntheticConfig, video: usize, frames: usize) -> Vec<SyntheticSample> {
    let proportions = class_proportions(config.imbalance_ratio);
    let mut rng = SmallRng::seed_from_u64(splitmix64(splitmix64(config.seed ^ 0x5649_4445_4f00) ^ video as u64));
    let (true_class, label) = draw_class(config, &proportions, &mut rng);
    let scene = Scene::sample(true_class, &mut rng);
    let neutral = CLASS_MEANS[6];
    let period = uniform(&mut rng, 6.0, 10.0);
    let phase = uniform(&mut rng, 0.0, std::f32::consts::TAU);
    let peak = scene.expression.params();
    (0..frames)
        .map(|t| {
            let wave = 0.5 + 0.5 * (std::f32::consts::TAU * t as f32 / period + phase).sin();
            let intensity = (wave + 0.1 * gaussian(&mut rng)).clamp(0.0, 1.0);
            let mut frame = scene;
            frame.expression = Expression::from_params(std::array::from_fn(|i| lerp(neutral[i], peak[i], intensity)));
            frame.center = (scene.center.0 + 0.01 * gaussian(&mut rng), scene.center.1 + 0.01 * gaussian(&mut rng));
            frame.scale = scene.scale * (1.0 + 0.02 * gaussian(&mut rng));
            SyntheticSample { pixels: render(&frame, config.image_size, &mut rng), label: label as i64, true_label: true_class as i64 }
        })
        .collect()
}

/// The scene as `image_size`² grayscale pixels, with per-pixel noise from `rng`.
fn render(scene: &Scene, image_size: u32, rng: &mut SmallRng) -> Vec<u8> {
    let n = image_size.max(1) as usize;
    let inv_n = 1.0 / n as f32;
    let inv_scale = 1.0 / scene.scale;
    let pixel = inv_n * inv_scale;
    let (face_rx, face_ry) = (FACE_RX * scene.face_aspect, FACE_RY);
    // Beyond this |implicit value| the face outline is more than ~1.5 pixels away.
    let edge_band = 3.0 * pixel / face_rx.min(face_ry);
    let mut pixels = Vec::with_capacity(n * n);
    for row in 0..n {
        let v = (row as f32 + 0.5) * inv_n;
        for col in 0..n {
            let u = (col as f32 + 0.5) * inv_n;
            let (gx, gy) = scene.background_gradient;
            let mut value = scene.background + gx * (u - 0.5) + gy * (v - 0.5);
            // Image point to face-local coordinates: undo translation, rotation, scale.
            let (du, dv) = (u - scene.center.0, v - scene.center.1);
            let (cos, sin) = scene.rotation;
            let x = (cos * du + sin * dv) * inv_scale;
            let y = (cos * dv - sin * du) * inv_scale;
            // Cheap implicit-function test first: far inside or far outside needs no distance.
            let implicit = (x / face_rx).powi(2) + (y / face_ry).powi(2) - 1.0;
            let face = if implicit > edge_band {
                0.0
            } else if implicit < -edge_band {
                1.0
            } else {
                coverage(ellipse_distance(x, y, face_rx, face_ry), pixel)
            };
            if face > 0.0 {
                value = lerp(value, scene.face_tone(x, y, pixel), face);
            }
            let bits: u32 = rng.random();
            let noise = ((bits & 0xFFFF) + (bits >> 16)) as f32 * (1.0 / 65535.0) - 1.0;
            value = (value - 0.5) * scene.contrast + 0.5 + scene.brightness;
            value += noise * scene.noise_amplitude;
            // Non-negative, so adding 0.5 and truncating rounds (and avoids a libm call).
            pixels.push((value.clamp(0.0, 1.0) * 255.0 + 0.5) as u8);
        }
    }
    pixels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(samples: usize, image_size: u32) -> SyntheticConfig {
        SyntheticConfig { samples, image_size, ..SyntheticConfig::default() }
    }

    #[test]
    fn samples_are_independent_of_range_split_and_seeded() {
        let mut cfg = config(40, 48);
        let whole = generate(&cfg, 0..40);
        let mut pieces = generate(&cfg, 0..13);
        pieces.extend(generate(&cfg, 13..29));
        pieces.extend(generate(&cfg, 29..40));
        assert_eq!(whole, pieces);
        assert_eq!(generate(&cfg, 25..26)[0], whole[25]);
        assert_eq!(generate(&cfg, 35..100).len(), 5, "range is clipped to samples");
        assert_ne!(whole[0].pixels, whole[1].pixels);
        cfg.seed = 8;
        let other = generate(&cfg, 0..40);
        assert!(whole.iter().zip(&other).all(|(a, b)| a.pixels != b.pixels));
    }

    #[test]
    fn a_video_keeps_its_face_and_class_while_the_expression_comes_and_goes() {
        let cfg = config(0, 48);
        let clip = generate_video(&cfg, 3, 24);
        assert_eq!(clip.len(), 24);
        assert_eq!(clip, generate_video(&cfg, 3, 24), "seeded");
        assert!(clip.iter().all(|f| f.label == clip[0].label && f.true_label == clip[0].true_label));
        let distance = |a: &SyntheticSample, b: &SyntheticSample| {
            a.pixels.iter().zip(&b.pixels).map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs()).sum::<f64>() / a.pixels.len() as f64
        };
        let other = generate_video(&cfg, 4, 2);
        let within: f64 = clip.windows(2).map(|w| distance(&w[0], &w[1])).sum::<f64>() / 23.0;
        assert!(within < distance(&clip[0], &other[0]), "neighbouring frames look alike: {within}");
        assert!(clip.windows(2).all(|w| w[0].pixels != w[1].pixels), "every frame differs");
    }

    #[test]
    fn proportions_follow_the_imbalance_profile() {
        for ratio in [1.0, 2.5, 10.0, 50.0] {
            let p = class_proportions(ratio);
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            let max = p.iter().copied().fold(f64::MIN, f64::max);
            let min = p.iter().copied().fold(f64::MAX, f64::min);
            assert!((max / min - ratio).abs() < 1e-9 * ratio, "{ratio}: {p:?}");
            assert_eq!((p[3], p[1]), (max, min), "happy most, disgust least");
            if ratio > 1.0 {
                let others = [0, 2, 4, 5, 6].map(|class| p[class]);
                assert!(others.iter().all(|&v| v > min && v < max), "{p:?}");
            }
        }
    }

    #[test]
    fn observed_label_noise_matches_the_configured_rate() {
        let mut cfg = config(3000, 32);
        cfg.label_noise = 0.2;
        let noisy = generate(&cfg, 0..3000);
        let flipped = noisy.iter().filter(|s| s.label != s.true_label).count();
        let rate = flipped as f64 / 3000.0;
        assert!((rate - 0.2).abs() < 0.03, "noise rate {rate}");
        let valid = |s: &SyntheticSample| (0..7).contains(&s.label) && (0..7).contains(&s.true_label);
        assert!(noisy.iter().all(valid));
        cfg.label_noise = 0.0;
        let clean = generate(&cfg, 0..3000);
        assert!(clean.iter().all(|s| s.label == s.true_label));
        // Label noise changes labels only, never what is drawn.
        assert!(clean.iter().zip(&noisy).all(|(a, b)| a.pixels == b.pixels));
    }

    #[test]
    fn class_histogram_follows_proportions() {
        let cfg = config(5000, 32);
        let mut counts = [0usize; 7];
        for sample in generate(&cfg, 0..5000) {
            counts[sample.true_label as usize] += 1;
        }
        for (class, p) in class_proportions(cfg.imbalance_ratio).iter().enumerate() {
            let observed = counts[class] as f64 / 5000.0;
            let name = CLASS_NAMES[class];
            assert!((observed - p).abs() < 0.025, "{name}: {observed} vs {p}");
        }
    }

    /// Mean over `samples` of the 32x32 images' mouth-region patch (rows 19..28, cols 9..23:
    /// the face centre is at 0.5 ± 0.08 of the side and the mouth about 0.2 below it), each
    /// patch taken relative to its own mean so that brightness jitter cancels.
    fn mean_mouth_patch(samples: &[&SyntheticSample]) -> Vec<f64> {
        let mut mean = vec![0.0; 9 * 14];
        for s in samples {
            let cells = (19..28).flat_map(|r| (9..23).map(move |c| f64::from(s.pixels[r * 32 + c])));
            let patch: Vec<f64> = cells.collect();
            let own_mean = patch.iter().sum::<f64>() / patch.len() as f64;
            for (acc, v) in mean.iter_mut().zip(patch) {
                *acc += (v - own_mean) / samples.len() as f64;
            }
        }
        mean
    }

    fn difference(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x - y).collect()
    }

    fn correlation(a: &[f64], b: &[f64]) -> f64 {
        let dot = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(x, y)| x * y).sum::<f64>();
        dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
    }

    /// Happy and surprise differ from sad around the mouth, consistently: the difference of
    /// mean patches on even-indexed samples correlates with the one on odd-indexed samples
    /// (about 0 if the classes looked alike) and exceeds the difference between the halves.
    #[test]
    fn classes_differ_in_the_mouth_region() {
        let mut cfg = config(8000, 32);
        cfg.imbalance_ratio = 1.0;
        let samples = generate(&cfg, 0..8000);
        let mean_of = |class: i64, parity: usize| {
            let chosen = samples.iter().enumerate().filter(|(i, s)| s.true_label == class && i % 2 == parity);
            mean_mouth_patch(&chosen.map(|(_, s)| s).collect::<Vec<_>>())
        };
        let size = |v: &[f64]| v.iter().map(|x| x.abs()).sum::<f64>() / v.len() as f64;
        let sad = 4;
        for (name, class) in [("happy", 3), ("surprise", 5)] {
            let even = difference(&mean_of(class, 0), &mean_of(sad, 0));
            let odd = difference(&mean_of(class, 1), &mean_of(sad, 1));
            let within = size(&difference(&mean_of(class, 0), &mean_of(class, 1)));
            let (r, between) = (correlation(&even, &odd), size(&even).min(size(&odd)));
            assert!(r > 0.7, "{name}/sad split-half correlation {r}");
            assert!(between > 2.0 * within, "{name}/sad {between}, within {within}");
        }
    }

    #[test]
    fn pixels_use_most_of_the_range_at_every_size() {
        for size in [32u32, 48, 128] {
            let samples = generate(&config(100, size), 0..100);
            let (mut low, mut high, mut mean_span) = (255u8, 0u8, 0.0);
            for s in &samples {
                assert_eq!(s.pixels.len(), (size * size) as usize);
                let min = s.pixels.iter().copied().fold(255, u8::min);
                let max = s.pixels.iter().copied().fold(0, u8::max);
                (low, high) = (low.min(min), high.max(max));
                mean_span += f64::from(max.saturating_sub(min)) / samples.len() as f64;
            }
            assert!(low < 30 && high > 225, "size {size}: {low}..{high}");
            assert!(mean_span > 120.0, "size {size}: mean span {mean_span}");
        }
    }
}
