//! A small, deterministic mutation fuzzer for the stable toolchain: replays the committed seed
//! corpus and every saved regression exactly, then mutates corpus entries (bit flips, byte
//! edits, splices, dictionary tokens) with a seeded PRNG. A crash is saved to a file and the test
//! fails naming it; copy it to `tests/fuzz_corpus/regressions/<target>/` to keep it forever.
//!
//! Bounded by iterations (deterministic, CI) unless `EGRESS_GUARD_SOAK_SECS` asks for a time
//! budget per target (manual soak). `EGRESS_GUARD_FUZZ_SEED` changes the seed.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

pub fn seed_from_env() -> u64 {
    std::env::var("EGRESS_GUARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_e6e5)
}

/// Seconds per target in soak mode, if set.
pub fn soak_secs() -> Option<u64> {
    std::env::var("EGRESS_GUARD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus")
}

fn read_dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| {
                    (
                        e.path().display().to_string(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(9) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below(8.min(v.len() - i));
                v.drain(i..i + n);
            }
            3 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            4 | 5 if !dict.is_empty() => {
                let i = rng.below(v.len() + 1);
                let t = dict[rng.below(dict.len())];
                v.splice(i..i, t.iter().copied());
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            7 if !v.is_empty() => {
                // Repeat a chunk: grows inputs towards the limits.
                let i = rng.below(v.len());
                let n = 1 + rng.below(32.min(v.len() - i));
                let chunk = v[i..i + n].to_vec();
                for _ in 0..1 + rng.below(64) {
                    v.splice(i..i, chunk.iter().copied());
                }
            }
            _ if !v.is_empty() => {
                // Interesting numbers at a digit.
                let nums: [&[u8]; 8] = [
                    b"0",
                    b"65535",
                    b"65536",
                    b"4294967296",
                    b"-1",
                    b"255",
                    b"33",
                    b"129",
                ];
                let i = rng.below(v.len());
                let t = nums[rng.below(nums.len())];
                let end = (i + 1 + rng.below(4)).min(v.len());
                v.splice(i..end, t.iter().copied());
            }
            _ => v.extend_from_slice(b"\x00"),
        }
    }
    v.truncate(2 << 20);
    v
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where crashing inputs are written.
pub fn crash_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hostile-crashes")
}

fn check_one(target: &str, f: fn(&[u8]), input: &[u8], origin: &str) {
    if let Err(panic) = std::panic::catch_unwind(|| f(input)) {
        let dir = crash_dir();
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{target}-{:016x}", fnv(input)));
        let _ = std::fs::write(&path, input);
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let shown: String = String::from_utf8_lossy(input).chars().take(400).collect();
        panic!(
            "fuzz target {target} failed on {origin}: {why}\ninput ({} bytes, saved to {}): {shown:?}\n\
             keep it as a regression: cp {} tests/fuzz_corpus/regressions/{target}/",
            input.len(),
            path.display(),
            path.display()
        );
    }
}

/// Runs `f` on every regression and seed of `target`, then on `iterations` mutants (or for the
/// soak budget). Returns the number of inputs run.
pub fn fuzz(target: &str, f: fn(&[u8]), iterations: usize, dict: &[&[u8]]) -> usize {
    let dir = corpus_dir();
    let regressions = read_dir_files(&dir.join("regressions").join(target));
    let seeds = read_dir_files(&dir.join(target));
    assert!(
        !seeds.is_empty(),
        "no seed corpus in {}",
        dir.join(target).display()
    );
    let mut runs = 0;
    for (name, input) in regressions.iter().chain(&seeds) {
        check_one(target, f, input, name);
        runs += 1;
    }
    let mut corpus: Vec<Vec<u8>> = seeds.into_iter().map(|(_, v)| v).collect();
    let seed = seed_from_env();
    let mut rng = Rng::new(seed ^ fnv(target.as_bytes()));
    let deadline = soak_secs().map(|s| Instant::now() + Duration::from_secs(s));
    let mut i = 0usize;
    loop {
        match deadline {
            Some(d) if Instant::now() >= d => break,
            None if i >= iterations => break,
            _ => {}
        }
        let parent = corpus[rng.below(corpus.len())].clone();
        let child = mutate(&mut rng, &parent, &corpus, dict);
        check_one(
            target,
            f,
            &child,
            &format!("mutant {i} (EGRESS_GUARD_FUZZ_SEED={seed})"),
        );
        // Keep a few mutants as parents so mutations compound.
        if rng.below(16) == 0 && corpus.len() < 512 && child.len() < 64 << 10 {
            corpus.push(child);
        }
        i += 1;
        runs += 1;
    }
    runs
}
