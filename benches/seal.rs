//! What sealing a message between nodes costs (SPEC §7, `--cluster-key`): sealing and
//! opening one message of the sizes the nodes send, beside a plain copy of the same
//! bytes (what an unsealed message cost the sender before).
//!
//! - 64 B: an announcement (`idv.events.<session>`, the seq) or an empty chunk reply;
//! - 1 KiB: a forwarded command or its answer (a session as the HTTP answer shows it);
//! - 512 KiB: one chunk of an upload (the largest message).
//!
//! Run: `cargo bench --bench seal` (add `-- --quick` for a fast pass). The figures are
//! in docs/cluster.md, "The network between nodes".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use idv_actors::seal::{ClusterKey, Sealer};

fn seal_and_open(c: &mut Criterion) {
    let key = ClusterKey::from_bytes([7; 32]);
    let sender = Sealer::new("node-a", std::slice::from_ref(&key)).unwrap();
    // Every message is opened once (a second open is a replay): each iteration seals
    // a fresh one, so the receiver's nonce window grows over the run, as it does under
    // traffic (bounded by its 65 s window).
    let receiver = Sealer::new("node-b", &[key]).unwrap();
    let mut group = c.benchmark_group("cluster message");
    for size in [64usize, 1024, 512 * 1024] {
        let body = vec![0x5a_u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("copy (unsealed)", size),
            &body,
            |b, body| b.iter(|| std::hint::black_box(body.clone())),
        );
        group.bench_with_input(BenchmarkId::new("seal", size), &body, |b, body| {
            b.iter(|| std::hint::black_box(sender.seal("idv.node.b.cmd", body)))
        });
        group.bench_with_input(BenchmarkId::new("seal + open", size), &body, |b, body| {
            b.iter(|| {
                let sealed = sender.seal("idv.node.b.cmd", body);
                std::hint::black_box(receiver.open("idv.node.b.cmd", &sealed).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, seal_and_open);
criterion_main!(benches);
