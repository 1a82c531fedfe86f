//! Criterion benchmarks of message-archive paging (XEP-0313 with XEP-0059) in the SQLite
//! store: one page of 50, for an owner with 10,000 and with 100,000 archived messages (as
//! many again belong to 500 other accounts), from the start, after an id in the middle, from
//! the end, from a time near the end and from the middle (`start`), from a time near the end
//! in one conversation (`with` and `start`), and after an id in the middle of one
//! conversation (`with`).
//!
//! ```sh
//! cargo bench -p strait-store --bench archive
//! ```
//!
//! The figure to read is the ratio of the 100,000 row to the 10,000 row of each query, both
//! measured in the same run: about 1 when a page costs the page (schema 7 for pages by id,
//! schema 8 for pages by time), about 10 when it costs the archive (before schema 7 a page
//! without `with` took 13-15 ms at 100,000; before schema 8 a page by time 7 ms, by time and
//! partner 14 ms; before schema 9 a page by partner counted the conversation, 0.47 ms at
//! 5,000 messages). A page with a time filter still counts what matches (`count`): from the
//! middle, half the archive.
//!
//! `archive_write` measures the other side: 4,000 copies, for 400 owners interleaved as
//! live traffic interleaves them (each message archived for its sender and its recipient),
//! written in batches of 32 that nobody waits for (as the server archives delivered
//! messages; they share commits) and then merged from the archive log into the indexed
//! archive (`append_and_merge`; `merge` times the merge alone), on a store that already
//! holds 600,000 copies and grows as it is measured. Compare
//! two builds by running it on each, one after the other on the same machine.

use std::hint::black_box;
use std::sync::mpsc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use strait_store::{
    AccountStore, ArchiveQuery, ArchiveStore, ArchivedMessage, BatchWrite, Credentials,
    ScramSecret, SqliteStore, WriteOp,
};

const OWNER: &str = "alice@bench.example";
const PARTNERS: usize = 20;
const OTHERS: usize = 500;
/// The first message's time (Unix ms); message k is k ms later.
const STAMP0: i64 = 1_700_000_000_000;

/// Credentials for the benchmark's accounts (never used to log in).
fn creds() -> Credentials {
    Credentials {
        scram_sha1: None,
        scram_sha256: ScramSecret {
            salt: vec![1; 16],
            iterations: 4096,
            stored_key: vec![2; 32],
            server_key: vec![3; 32],
        },
    }
}

/// A store in `dir` whose owner has `n` archived messages (ids `m…`, in archive order), and
/// the other accounts `n` between them, interleaved with the owner's.
fn filled(dir: &std::path::Path, n: usize) -> (SqliteStore, Vec<String>) {
    let s = SqliteStore::open(&dir.join("strait.sqlite3")).unwrap();
    let creds = creds();
    s.create_account(OWNER, &creds).unwrap();
    for u in 0..OTHERS {
        s.create_account(&format!("u{u}@bench.example"), &creds)
            .unwrap();
    }
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..(2 * n).div_ceil(1000) {
        let ops = (chunk * 1000..((chunk + 1) * 1000).min(2 * n))
            .map(|k| {
                let owner = if k % 2 == 0 {
                    ids.push(format!("m{k:08}"));
                    OWNER.to_owned()
                } else {
                    format!("u{}@bench.example", k % OTHERS)
                };
                let partner = format!("p{}@bench.example", k % PARTNERS);
                WriteOp::Archive {
                    owner,
                    msg: ArchivedMessage {
                        id: format!("m{k:08}"),
                        with_full: format!("{partner}/phone"),
                        with_bare: partner,
                        stamp_ms: STAMP0 + k as i64,
                        stanza: format!(
                            "<message type='chat' id='c{k}'><body>message number {k}</body></message>"
                        ),
                    },
                }
            })
            .collect();
        let (tx, rx) = mpsc::channel();
        s.write_batch(
            ops,
            Box::new(move |o| {
                assert!(o.iter().all(|o| o.is_ok()));
                tx.send(()).unwrap();
            }),
        );
        rx.recv().unwrap();
    }
    // Merged into the indexed archive before anything is measured.
    s.merge_archive_log().unwrap();
    assert_eq!(s.archive_count(OWNER).unwrap(), n);
    (s, ids)
}

fn paging(c: &mut Criterion) {
    let mut g = c.benchmark_group("archive_page");
    g.sample_size(30);
    for n in [10_000usize, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let (s, ids) = filled(dir.path(), n);
        let middle = ids[n / 2].clone();
        // The middle of one conversation: an id of partner p2 (k = 2 mod 20, k even).
        let middle_p2 = ids[n / 2..]
            .iter()
            .find(|id| id[1..].parse::<usize>().unwrap() % PARTNERS == 2)
            .unwrap()
            .clone();
        let queries = [
            ("first", ArchiveQuery::default()),
            (
                "after_middle",
                ArchiveQuery {
                    after_id: Some(middle),
                    ..ArchiveQuery::default()
                },
            ),
            (
                "last",
                ArchiveQuery {
                    from_end: true,
                    ..ArchiveQuery::default()
                },
            ),
            (
                "start_near_end",
                ArchiveQuery {
                    start: Some(STAMP0 + 2 * n as i64 - 2_000),
                    ..ArchiveQuery::default()
                },
            ),
            (
                "start_middle",
                ArchiveQuery {
                    start: Some(STAMP0 + n as i64),
                    ..ArchiveQuery::default()
                },
            ),
            (
                "with_start_near_end",
                ArchiveQuery {
                    with: Some("p2@bench.example".into()),
                    start: Some(STAMP0 + 2 * n as i64 - 2_000),
                    ..ArchiveQuery::default()
                },
            ),
            (
                "with_after_middle",
                ArchiveQuery {
                    with: Some("p2@bench.example".into()),
                    after_id: Some(middle_p2),
                    ..ArchiveQuery::default()
                },
            ),
        ];
        for (name, mut q) in queries {
            q.max = 50;
            g.bench_with_input(BenchmarkId::new(name, n), &q, |b, q| {
                b.iter(|| {
                    let page = s.archive_query(OWNER, black_box(q)).unwrap().unwrap();
                    assert_eq!(page.messages.len(), 50);
                    page
                })
            });
        }
    }
    g.finish();
}

/// Accounts in `archive_write`; copies written per iteration.
const WRITERS: usize = 400;
/// (Fewer than the 4,096 at which the writer merges on its own, so that the bench does.)
const COPIES: usize = 4_000;

/// The two copies of message `k` between writer accounts: the sender's and the recipient's.
fn copies(k: usize) -> [WriteOp; 2] {
    let from = format!("w{}@bench.example", k % WRITERS);
    let to = format!("w{}@bench.example", (k + WRITERS / 2) % WRITERS);
    // Both copies store the same text, as the server archives them (`mam::stored_form`:
    // without either account's stanza-id), so the store keeps it once for both.
    let stanza = format!(
        "<message xmlns='jabber:client' id='c{k}' type='chat' from='{from}/res' \
         to='{to}'><body xmlns='jabber:client'>message number {k}: the quick brown fox \
         jumps over the lazy dog the quick brown fox</body></message>"
    );
    let copy = |owner: &str, with: &str, side: &str| WriteOp::Archive {
        owner: owner.to_owned(),
        msg: ArchivedMessage {
            // Shaped like the server's ids (UUIDv7: time first, 36 characters).
            id: format!(
                "{:08x}-{:04x}-7{side}00-8000-{k:012x}",
                k / 65_536,
                k % 65_536
            ),
            with_full: format!("{with}/phone"),
            with_bare: with.to_owned(),
            stamp_ms: STAMP0 + k as i64,
            // About the size of the load generator's messages as archived (270 bytes).
            stanza: stanza.clone(),
        },
    };
    [copy(&from, &to, "0"), copy(&to, &from, "1")]
}

/// Writes messages `from..to` (two copies each) as the server archives delivered messages:
/// batches of 32 copies nobody waits for (they share commits), then waits for them all.
fn write_messages(s: &SqliteStore, from: usize, to: usize) {
    let all: Vec<WriteOp> = (from..to).flat_map(copies).collect();
    let mut all = all.into_iter().peekable();
    let (tx, rx) = mpsc::channel();
    let mut batches = 0;
    while all.peek().is_some() {
        let ops: Vec<WriteOp> = all.by_ref().take(32).collect();
        let tx = tx.clone();
        s.write_batch_lazy(
            ops,
            Box::new(move |o| {
                assert!(o.iter().all(|o| o.is_ok()));
                tx.send(()).unwrap();
            }),
        );
        batches += 1;
    }
    for _ in 0..batches {
        rx.recv().unwrap();
    }
}

fn writing(c: &mut Criterion) {
    let mut g = c.benchmark_group("archive_write");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Elements(COPIES as u64));
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("strait.sqlite3")).unwrap();
    let creds = creds();
    for w in 0..WRITERS {
        s.create_account(&format!("w{w}@bench.example"), &creds)
            .unwrap();
    }
    // 600,000 copies there before anything is measured, merged (about what a saturated
    // pingpong run leaves behind: the indexes outgrow the writer's page cache).
    let mut next = 300_000;
    write_messages(&s, 0, next);
    s.merge_archive_log().unwrap();
    g.bench_function(BenchmarkId::new("append_and_merge", COPIES), |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let start = std::time::Instant::now();
                write_messages(&s, next, next + COPIES / 2);
                s.merge_archive_log().unwrap();
                total += start.elapsed();
                next += COPIES / 2;
            }
            total
        })
    });
    // The merge alone: the copies are appended untimed, then merged.
    g.bench_function(BenchmarkId::new("merge", COPIES), |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                write_messages(&s, next, next + COPIES / 2);
                next += COPIES / 2;
                let start = std::time::Instant::now();
                s.merge_archive_log().unwrap();
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, paging, writing);
criterion_main!(benches);
