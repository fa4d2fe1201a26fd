//! Wall-clock time as milliseconds since the Unix epoch, the unit of every timestamp Feral
//! stores or sends. Pure code takes `now_ms` as an argument; only edges call [`now_ms`].

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}
