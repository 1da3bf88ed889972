//! The mutation engine all fuzz targets share: seeds from `fuzz/corpus/<target>/` (frames
//! captured from real clients, see `capture.rs`), mutated by bit flips, byte sets,
//! interesting integers at random offsets, truncation, insertion, deletion, duplication and
//! splicing of two seeds, plus random frames (a seed's first bytes, then noise, or noise
//! alone). Each input is decoded inside `catch_unwind` and under the counting allocator.
//!
//! - `PORTASK_FUZZ_SECS`: how long each target runs (default 5; `.ci/run` sets 60).
//! - `PORTASK_FUZZ_SEED`: the run's seed (default: from the clock, printed). Input `n` of a
//!   run is made by an RNG seeded from (seed, n) alone, so `PORTASK_FUZZ_SEED=s
//!   PORTASK_FUZZ_CASE=n` replays exactly the input a failure names.
//!
//! A panic, or an allocation over the target's bound, fails the test with the seed, the
//! case number and the input in hex.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::alloc::{self, Usage};

/// xorshift64*: small, fast, and reproducible from one `u64`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so nearby seeds give unrelated streams (and never 0).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Values that sit on the edges decoders get wrong: zero, -1, the signed extremes of each
/// width, and the largest varints (Kafka's flexible versions count with unsigned varints,
/// record fields with zig-zag ones).
const INTERESTING: &[&[u8]] = &[
    &[0],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0, 0],
    &[0xff, 0xff],
    &[0x7f, 0xff],
    &[0x80, 0x00],
    &[0, 0, 0, 0],
    &[0xff, 0xff, 0xff, 0xff],
    &[0x7f, 0xff, 0xff, 0xff],
    &[0x80, 0x00, 0x00, 0x00],
    &[0x00, 0x10, 0x00, 0x00],
    &[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    // Unsigned varint of u32::MAX, and of i32::MAX.
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xfe, 0xff, 0xff, 0xff, 0x07],
    // Ten-byte varint of u64::MAX, and one that never ends within five bytes.
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0x80, 0x80, 0x80, 0x80, 0x80],
];

/// One mutation of `input`, in place; `other` is a second seed for splicing.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8], max_len: usize) {
    let len = input.len();
    match rng.below(9) {
        0 if len > 0 => {
            let at = rng.below(len);
            input[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            input[at] = rng.next() as u8;
        }
        2 if len > 0 => {
            let value = INTERESTING[rng.below(INTERESTING.len())];
            let at = rng.below(len);
            for (i, b) in value.iter().enumerate() {
                if let Some(slot) = input.get_mut(at + i) {
                    *slot = *b;
                }
            }
        }
        3 => input.truncate(rng.below(len + 1)),
        4 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let noise = rng.bytes(n);
            input.splice(at..at, noise);
        }
        5 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(32));
            input.drain(at..at + n);
        }
        6 if len > 0 => {
            // Repeat a range, up to 64 times: more array elements, more fields, more
            // frames, and inputs large enough to show what a decode holds per byte.
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            let times = 1 + rng.below(64);
            let piece = input[at..at + n].repeat(times);
            let to = rng.below(len + 1);
            input.splice(to..to, piece);
        }
        7 if !other.is_empty() => {
            // Splice: our head, the other seed's tail.
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        _ => {
            let value = INTERESTING[rng.below(INTERESTING.len())];
            let at = rng.below(len + 1);
            input.splice(at..at, value.iter().copied());
        }
    }
    input.truncate(max_len);
}

/// Input `case` of a run seeded `seed`.
fn make_input(seeds: &[Vec<u8>], seed: u64, case: u64, max_len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let pick = |rng: &mut Rng| -> &[u8] {
        if seeds.is_empty() {
            &[]
        } else {
            &seeds[rng.below(seeds.len())]
        }
    };
    match rng.below(20) {
        // A random frame: a seed's first bytes (its header), then noise.
        0 => {
            let base = pick(&mut rng);
            let keep = rng.below(base.len().min(24) + 1);
            let mut input = base[..keep].to_vec();
            let n = rng.below(256);
            input.extend(rng.bytes(n));
            input
        }
        // Noise alone.
        1 => {
            let n = rng.below(512);
            rng.bytes(n)
        }
        // An unchanged seed, now and then: each must decode as it always did.
        2 => pick(&mut rng).to_vec(),
        _ => {
            let mut input = pick(&mut rng).to_vec();
            let other = pick(&mut rng).to_vec();
            for _ in 0..1 + rng.below(4) {
                mutate(&mut rng, &mut input, &other, max_len);
            }
            input
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v} is not a number"),
    }
}

/// The seed files of `target`, in name order.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())))
        .collect()
}

pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .join("fuzz/corpus")
        .join(target)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a target allows one input to allocate, from its length.
pub type Bound = fn(usize) -> usize;

/// Runs `target` on mutated seeds of `fuzz/corpus/<name>/` for `PORTASK_FUZZ_SECS`,
/// failing on the first panic or allocation over `bound`. Inputs are cut to `max_len`.
pub fn run(name: &str, max_len: usize, bound: Bound, target: impl Fn(&[u8])) {
    let seeds = corpus(name);
    assert!(!seeds.is_empty(), "fuzz/corpus/{name}/ holds no seeds");
    let secs = env_u64("PORTASK_FUZZ_SECS").unwrap_or(5);
    let seed = env_u64("PORTASK_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let only = env_u64("PORTASK_FUZZ_CASE");
    eprintln!(
        "fuzz {name}: {} seeds, {secs} s, PORTASK_FUZZ_SEED={seed}",
        seeds.len()
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut worst = (0usize, 0usize);
    // The most held per input byte, over inputs of 1 KiB or more (below, fixed buffers
    // dominate): what the per-byte part of a target's bound must cover.
    let mut per_byte = (0f64, 0usize);
    let mut cases = 0u64;
    let (first, last) = match only {
        Some(n) => (n, n + 1),
        None => (0, u64::MAX),
    };
    for case in first..last {
        // The seeds themselves first, as they are; then mutations.
        let input = match seeds.get(case as usize) {
            Some(s) => s.clone(),
            None => make_input(&seeds, seed, case, max_len),
        };
        let outcome = alloc::measure(&input, (seed, case), || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)))
        });
        let (result, Usage { largest, peak }) = outcome;
        let limit = bound(input.len());
        let repro = || {
            format!(
                "PORTASK_FUZZ_SEED={seed} PORTASK_FUZZ_CASE={case} cargo test --test fuzz {name}\n\
                 input ({} bytes): {}",
                input.len(),
                hex(&input)
            )
        };
        if result.is_err() {
            panic!(
                "fuzz {name}: the target panicked on case {case}\n{}",
                repro()
            );
        }
        assert!(
            largest <= limit && peak <= limit,
            "fuzz {name}: case {case} allocated {largest} bytes at once and {peak} in all, \
             over the bound of {limit} for {} input bytes\n{}",
            input.len(),
            repro()
        );
        if peak > worst.1 {
            worst = (input.len(), peak);
        }
        if input.len() >= 1024 && peak as f64 / input.len() as f64 > per_byte.0 {
            per_byte = (peak as f64 / input.len() as f64, input.len());
        }
        cases += 1;
        if only.is_none() && case as usize >= seeds.len() && Instant::now() >= deadline {
            break;
        }
    }
    eprintln!(
        "fuzz {name}: {cases} inputs, no panic; the most any held at once: {} bytes \
         (a {}-byte input); per input byte, at most {:.1} (a {}-byte input)",
        worst.1, worst.0, per_byte.0, per_byte.1
    );
}
