//! Retrieval benchmarks: BM25 search latency on a 100,000-chunk index, and ingest throughput.
//!
//! `cargo bench -p orchestrator-context --bench retrieval`
//!
//! The corpus is generated deterministically (a xorshift generator, a fixed vocabulary with a
//! Zipf-like word frequency, like natural text) into `target/bench-data/retrieval/`, as 100 text
//! files of 1,000 paragraphs each, sized so that each paragraph is exactly one chunk. The corpus
//! and the index are kept there and reused by later runs.
//!
//! Measured:
//! - search latency, top 4 of 3-6 word queries: criterion's statistics for the synchronous
//!   search and for `Retriever::retrieve` (which adds the hop to the blocking pool), then a plain
//!   loop of 2,000 queries printing p50/p90/p99/max, which criterion does not report;
//! - ingest throughput (chunks/s, MB/s) of the whole corpus into an empty index, one timed run.
//!   The run that builds the kept index is that measurement; later runs ingest into a scratch
//!   index (set `RETRIEVAL_BENCH_SKIP_INGEST=1` to skip it).
//!
//! Run by `cargo test --benches` (no `--bench` argument), it does the same on a 2,000-chunk corpus
//! in a temporary directory, as a quick check that it works.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::Criterion;
use orchestrator_context::index::{
    IndexConfig, IndexRetriever, IngestSummary, Progress, RagSettings, ingest,
};
use tokio_prompt_orchestrator::{ChatMessage, InferenceRequest, Retriever, SessionId};

const FILES: usize = 100;
const PARAGRAPHS_PER_FILE: usize = 1000;
const VOCABULARY: usize = 4000;
const QUERIES: usize = 2000;
const WARMUP_QUERIES: usize = 200;
/// Bump when the generator changes, so a corpus or index from an older run is rebuilt.
const DATA_VERSION: &str = "v1";

/// Paragraphs are kept between these sizes. With 800-character chunks and 100 of overlap, a
/// paragraph of at most 800 - 100 - 2 characters fits in a chunk after the overlap, and two
/// paragraphs of at least 550 never share one: one paragraph is exactly one chunk.
const PARAGRAPH_MIN_CHARS: usize = 550;
const PARAGRAPH_MAX_CHARS: usize = 698;

/// Function words mixed into sentences, as in real text; the index drops them as stop words.
const FUNCTION_WORDS: [&str; 8] = ["the", "of", "and", "to", "in", "is", "that", "with"];

/// xorshift64*: small, fast and fully deterministic, which is all a corpus generator needs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Words made of three syllables: 20^3 = 8,000 distinct ones, of which the first `VOCABULARY`.
fn vocabulary() -> Vec<String> {
    const SYLLABLES: [&str; 20] = [
        "ka", "lo", "mi", "ne", "tu", "ra", "si", "po", "de", "gu", "ban", "cor", "fel", "hix", "jun", "mar",
        "quo", "ves", "wil", "zen",
    ];
    (0..VOCABULARY)
        .map(|i| {
            let a = SYLLABLES[i % 20];
            let b = SYLLABLES[(i / 20) % 20];
            let c = SYLLABLES[(i / 400) % 20];
            format!("{a}{b}{c}")
        })
        .collect()
}

/// Draws word ranks with probability proportional to 1/(rank+1): a few words are everywhere,
/// most are rare, as in natural text.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|rank| {
                total += 1.0 / (rank as f64 + 1.0);
                total
            })
            .collect::<Vec<_>>();
        let cumulative = cumulative.into_iter().map(|c| c / total).collect();
        Self { cumulative }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cumulative
            .partition_point(|&c| c < u)
            .min(self.cumulative.len() - 1)
    }
}

fn sentence(rng: &mut Rng, words: &[String], zipf: &Zipf, out: &mut String) {
    let count = 6 + rng.below(9);
    for i in 0..count {
        let word = if rng.below(4) == 0 {
            FUNCTION_WORDS[rng.below(FUNCTION_WORDS.len())]
        } else {
            &words[zipf.sample(rng)]
        };
        if i == 0 {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        } else {
            out.push(' ');
            out.push_str(word);
        }
    }
    out.push('.');
}

fn paragraph(rng: &mut Rng, words: &[String], zipf: &Zipf) -> String {
    loop {
        let mut text = String::new();
        while text.len() < PARAGRAPH_MIN_CHARS {
            if !text.is_empty() {
                text.push(' ');
            }
            sentence(rng, words, zipf, &mut text);
        }
        // Rare overshoot: draw again rather than cut a sentence.
        if text.len() <= PARAGRAPH_MAX_CHARS {
            return text;
        }
    }
}

struct Data {
    root: PathBuf,
    files: usize,
    paragraphs_per_file: usize,
}

impl Data {
    fn corpus(&self) -> PathBuf {
        self.root.join("corpus")
    }

    fn index(&self) -> PathBuf {
        self.root.join("index")
    }

    fn chunks(&self) -> usize {
        self.files * self.paragraphs_per_file
    }

    fn config(&self, index: &Path) -> IndexConfig {
        IndexConfig::new(index)
    }

    /// Writes the corpus unless a complete one of this version is there.
    fn ensure_corpus(&self) {
        let done = self.corpus().join(format!(".complete-{DATA_VERSION}"));
        if done.exists() {
            return;
        }
        let _ = fs::remove_dir_all(self.corpus());
        fs::create_dir_all(self.corpus()).expect("create the corpus directory");
        let words = vocabulary();
        let zipf = Zipf::new(words.len());
        let mut rng = Rng::new(0x0005_EED0_FC0A_29A5);
        for file in 0..self.files {
            let mut text = String::new();
            for _ in 0..self.paragraphs_per_file {
                text.push_str(&paragraph(&mut rng, &words, &zipf));
                text.push_str("\n\n");
            }
            fs::write(self.corpus().join(format!("doc-{file:04}.txt")), text).expect("write a corpus file");
        }
        fs::write(done, "").expect("mark the corpus complete");
    }

    /// Ingests the whole corpus into an empty index at `index`, checking it became one chunk
    /// per paragraph.
    fn ingest_into(&self, index: &Path) -> IngestSummary {
        let _ = fs::remove_dir_all(index);
        let summary =
            ingest(&self.config(index), &[self.corpus()], Progress::Quiet).expect("ingest the corpus");
        assert_eq!(summary.chunks_added, self.chunks(), "one chunk per paragraph");
        summary
    }
}

fn print_ingest(summary: &IngestSummary) {
    let seconds = summary.seconds;
    println!(
        "ingest: {} chunks, {:.1} MB in {:.2} s = {:.0} chunks/s, {:.2} MB/s  ({summary})",
        summary.chunks_added,
        summary.bytes_indexed as f64 / 1e6,
        seconds,
        summary.chunks_added as f64 / seconds,
        summary.bytes_indexed as f64 / 1e6 / seconds,
    );
}

/// Typical questions: 3 to 6 vocabulary words, sometimes with a function word among them.
fn queries(count: usize) -> Vec<String> {
    let words = vocabulary();
    let zipf = Zipf::new(words.len());
    let mut rng = Rng::new(0xC0FFEE);
    (0..count)
        .map(|_| {
            let n = 3 + rng.below(4);
            let mut query: Vec<&str> = (0..n).map(|_| words[zipf.sample(&mut rng)].as_str()).collect();
            if rng.below(3) == 0 {
                query.insert(1, FUNCTION_WORDS[rng.below(FUNCTION_WORDS.len())]);
            }
            query.join(" ")
        })
        .collect()
}

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |p: f64| {
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1e3
    };
    println!(
        "{label}: {} queries, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        samples.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(1.0),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and gets the small run.
    let full = std::env::args().any(|arg| arg == "--bench");
    let scratch;
    let data = if full {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        Data {
            root: target.join("bench-data").join("retrieval"),
            files: FILES,
            paragraphs_per_file: PARAGRAPHS_PER_FILE,
        }
    } else {
        scratch = tempfile::tempdir().expect("a temporary directory");
        Data {
            root: scratch.path().to_owned(),
            files: 4,
            paragraphs_per_file: 500,
        }
    };

    data.ensure_corpus();
    let index_done = data.root.join(format!(".index-complete-{DATA_VERSION}"));
    if !index_done.exists() {
        print_ingest(&data.ingest_into(&data.index()));
        fs::write(&index_done, "").expect("mark the index complete");
    } else if std::env::var_os("RETRIEVAL_BENCH_SKIP_INGEST").is_none() {
        let scratch_index = data.root.join("ingest-scratch");
        print_ingest(&data.ingest_into(&scratch_index));
        let _ = fs::remove_dir_all(&scratch_index);
    }

    let settings = RagSettings::default();
    let retriever =
        IndexRetriever::open(&data.config(&data.index()), settings, HashMap::new()).expect("open the index");
    let queries = queries(QUERIES);
    let requests: Vec<InferenceRequest> = queries
        .iter()
        .map(|q| InferenceRequest::chat(SessionId::new("bench"), vec![ChatMessage::user(q)]))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group(format!("retrieval_{}k_chunks", data.chunks() / 1000));
    let mut next = 0;
    group.bench_function("search_top4", |b| {
        b.iter(|| {
            next = (next + 1) % queries.len();
            retriever.search(&queries[next], &settings).expect("search")
        })
    });
    group.bench_function("retrieve_top4_spawn_blocking", |b| {
        b.to_async(&runtime).iter(|| {
            next = (next + 1) % requests.len();
            let request = &requests[next];
            let retriever = &retriever;
            async move { retriever.retrieve(request).await.expect("retrieve") }
        })
    });
    group.finish();
    criterion.final_summary();

    // Tail latency, which criterion does not report: every query timed on its own.
    for query in queries.iter().take(WARMUP_QUERIES) {
        retriever.search(query, &settings).expect("search");
    }
    let mut found = 0;
    let samples = queries
        .iter()
        .map(|query| {
            let started = Instant::now();
            found += retriever.search(query, &settings).expect("search").len();
            started.elapsed()
        })
        .collect();
    percentiles("search (sync, top 4)", samples);
    println!(
        "  ({:.2} chunks found per query)",
        found as f64 / queries.len() as f64
    );
    let samples = runtime.block_on(async {
        let mut samples = Vec::with_capacity(requests.len());
        for request in &requests {
            let started = Instant::now();
            retriever.retrieve(request).await.expect("retrieve");
            samples.push(started.elapsed());
        }
        samples
    });
    percentiles("retrieve (spawn_blocking, top 4)", samples);
}
