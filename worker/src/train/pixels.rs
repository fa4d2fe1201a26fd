//! Pixel operations on raw H×W×C bytes, each into a buffer of the same size: the leaf
//! that the weak view ([`super::weak`]) and the strong view ([`super::strong`]) are built
//! from. Every result is rounded and clamped to 0..=255.

use feral_common::dataset::ImageShape;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SHAPE: ImageShape = ImageShape { height: 12, width: 10, channels: 1 };

    /// A test image with no two neighbouring pixels alike.
    pub(crate) fn gradient_image(shape: ImageShape) -> Vec<u8> {
        (0..shape.pixels()).map(|i| (i * 37 % 251) as u8).collect()
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
        let column_ramp =
            (0..81).all(|i| (i64::from(turned[i]) - (i / 9 * 20) as i64).abs() <= 1 || (i64::from(turned[i]) - (160 - i / 9 * 20) as i64).abs() <= 1);
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
}
