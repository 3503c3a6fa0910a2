//! Helpers shared by the fuzz targets: how a target reads its options from
//! the input, and how it cuts the rest into the pieces a socket would hand
//! over, so every decoder is also fuzzed across read boundaries.
//!
//! Input layout of the streaming targets: `[opts] [data …]`. The seeds in
//! `fuzz/seeds/<target>/` start with a zero byte, then a real fixture.

/// The first byte (options) and the rest; `None` for an empty input.
pub fn opts(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(o, rest)| (*o, rest))
}

/// Cuts `data` into pieces: `mode` 0 is one piece; otherwise piece lengths
/// come from a small PRNG seeded by `mode`, between 1 and `4 * mode` bytes,
/// so short reads, one-byte reads and splits inside every token happen.
pub fn pieces(data: &[u8], mode: u8) -> Vec<&[u8]> {
    if mode == 0 || data.is_empty() {
        return vec![data];
    }
    let max = 4 * usize::from(mode);
    let mut state = u32::from(mode).wrapping_mul(0x9e37_79b9) | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // xorshift32
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % max + 1).min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

/// Quiet the runner's logger: decoders log what they skip, and a fuzzer
/// runs them millions of times.
pub fn quiet() {
    tether::log::set_level(tether::log::Level::Error);
}
