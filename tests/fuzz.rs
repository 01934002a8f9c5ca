//! The fuzz targets (`livegate::fuzz`) on every `make test`: each replays its seed corpus (`fuzz/corpus/`,
//! real captures) and its regressions (`fuzz/regressions/`, inputs that once crashed it), then runs a seeded
//! mutation loop with a fixed budget — byte flips, inserts, deletes, truncations, splices of two seeds, and
//! "interesting" values — so a run is the same on every machine and its length does not depend on the clock.
//! `make fuzz` runs the same targets coverage-guided for longer (`FUZZ_ITERATIONS` raises this budget too).

use std::path::{Path, PathBuf};

/// Mutations per target per `make test`.
const DEFAULT_ITERATIONS: usize = 20_000;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// xorshift64*: small, seeded, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(8) {
        let len = d.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below(64.min(len - i));
                d.drain(i..i + n);
            }
            4 => d.truncate(rng.below(len + 1)),
            5 => {
                // Splice in a piece of another seed: valid structure in an unexpected place.
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = a + rng.below(other.len() - a + 1).min(256);
                    let i = rng.below(len + 1);
                    d.splice(i..i, other[a..b].iter().copied());
                }
            }
            _ if len >= 4 => {
                // Lengths and sizes are where parsers break: write an extreme 8-, 16- or 32-bit value.
                let i = rng.below(len - 3);
                let v: u32 = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF][rng.below(8)];
                match rng.below(3) {
                    0 => d[i] = v as u8,
                    1 => d[i..i + 2].copy_from_slice(&(v as u16).to_be_bytes()),
                    _ => d[i..i + 4].copy_from_slice(&v.to_be_bytes()),
                }
            }
            _ => {}
        }
    }
    d
}

#[test]
fn every_target_survives_its_corpus_regressions_and_mutations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let iterations: usize =
        std::env::var("FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_ITERATIONS);
    for t in livegate::fuzz::TARGETS {
        let corpus = files(&root.join("corpus").join(t.name));
        assert!(!corpus.is_empty(), "no seed corpus for {}: run fuzz/make_corpus.py", t.name);
        let mut seeds: Vec<Vec<u8>> = corpus.iter().map(|p| std::fs::read(p).unwrap()).collect();
        for p in files(&root.join("regressions").join(t.name)) {
            let d = std::fs::read(&p).unwrap();
            (t.run)(&d);
            seeds.push(d);
        }
        for s in &seeds {
            (t.run)(s);
        }
        // Seeded by the target's name: each target explores its own sequence, the same on every run.
        let mut rng =
            Rng(t.name.bytes().fold(0x9E37_79B9_7F4A_7C15, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3)));
        for _ in 0..iterations {
            let input = mutate(&mut rng, &seeds);
            let run = t.run;
            // A panic names the target and keeps the input for fuzz/regressions/.
            if std::panic::catch_unwind(|| run(&input)).is_err() {
                let dir = std::env::temp_dir().join("livegate-fuzz-crash").join(t.name);
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join(format!("crash-{:016x}", rng.next()));
                std::fs::write(&path, &input).unwrap();
                panic!("fuzz target {} panicked; input saved to {}", t.name, path.display());
            }
        }
    }
}

#[test]
fn the_mutator_changes_its_inputs() {
    let mut rng = Rng(1);
    let seeds = vec![b"0123456789abcdef".to_vec()];
    let changed = (0..100).filter(|_| mutate(&mut rng, &seeds) != seeds[0]).count();
    assert!(changed > 80, "{changed}");
}
