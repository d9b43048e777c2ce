//! Hot paths of one scan: decoding a sock_diag answer, parsing /proc/net/tcp, and the owner
//! walk over the live /proc. Run with `make bench` (or `cargo bench --bench scan`).

use std::hint::black_box;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use portwatch_core::internals;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_inet_dump");
    for n in [10usize, 1000, 10000] {
        let buf = internals::inet_datagram(n);
        assert_eq!(internals::decode_inet(&buf).len(), n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &buf, |b, buf| {
            b.iter(|| internals::decode_inet(black_box(buf)))
        });
    }
    g.finish();
}

fn proc_net(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_proc_net_tcp");
    for n in [10usize, 1000] {
        let mut text = String::from(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
        );
        for i in 0..n {
            text.push_str(&format!(
                "{i:4}: 0100007F:{:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 100 0 0 10 0\n",
                10000 + i,
                100_000 + i
            ));
        }
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), text.as_bytes(), |b, t| {
            b.iter(|| internals::parse_proc_net_tcp(black_box(t)))
        });
    }
    g.finish();
}

fn owner_walk(c: &mut Criterion) {
    // 100 listeners of our own, so the walk has something to find, over whatever this
    // machine runs; the figure is per walk of the whole /proc.
    let listeners: Vec<TcpListener> =
        (0..100).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let inodes = internals::inode_set(
        listeners
            .iter()
            .map(|l| std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap().ino()),
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("owner_walk");
    for t in [1, threads] {
        g.bench_with_input(BenchmarkId::new("threads", t), &t, |b, &t| {
            b.iter(|| internals::owner_walk(Path::new("/proc"), black_box(&inodes), t))
        });
    }
    g.finish();
}

criterion_group!(benches, decode, proc_net, owner_walk);
criterion_main!(benches);
