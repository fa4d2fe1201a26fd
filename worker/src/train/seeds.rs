//! Seeds: one mix of two numbers that every seeded draw of training derives its generator
//! from, and the lock that makes libtorch's global generator give each task its own
//! initial weights.

/// Serialises seeding libtorch's global generator with the initialisation that uses it.
pub(crate) static SEEDED_INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A 64-bit mix of two numbers (splitmix64 of their combination).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut x = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
