//! `stratusfs bench store`: the object store written and read directly with the client code a
//! mount uses (object_store, the same retry settings), objects the size of a block and the same
//! number of requests in flight as a mount allows: the ceiling a mount's sequential figures are
//! compared with (`e2e/bench/peers`).

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::blockstore::io::{GET_PART, get_parts};
use crate::blockstore::{BackendSpec, open_backend};

/// What to measure.
#[derive(Clone, Debug)]
pub struct StoreBenchArgs {
    pub spec: BackendSpec,
    /// Bytes written (and read) per concurrency level.
    pub total_mib: u64,
    /// Size of each object (a mount's block size).
    pub object_mib: u64,
    /// Requests in flight to measure with (a mount allows 16: the `io_concurrency` of its config).
    pub in_flight: Vec<usize>,
}

/// Writes `total_mib` in objects of `object_mib` with each number of requests in flight, reads
/// them back as ranged GETs of at most 1 MiB (how a mount reads a whole block), then deletes them.
/// Prints one line per figure: `store put|get in_flight=N mib_s=X`.
pub async fn bench_store(args: StoreBenchArgs) -> anyhow::Result<()> {
    let store = open_backend(&args.spec).context("opening the block store")?;
    let object = args.object_mib.max(1) << 20;
    let count = (args.total_mib << 20).div_ceil(object);
    // Incompressible bytes (the store might compress); one buffer shared by every PUT.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let body: Vec<u8> = (0..object)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let body = Bytes::from(body);
    let dir = format!("stratusfs-bench/{}", uuid::Uuid::new_v4());
    println!(
        "store {}: {count} objects of {} MiB per level, GETs of at most {} MiB",
        args.spec.url(),
        args.object_mib,
        GET_PART >> 20
    );
    for &n in &args.in_flight {
        let n = n.max(1);
        let keys: Vec<Path> = (0..count).map(|i| Path::from(format!("{dir}/{n}/{i}"))).collect();
        let start = Instant::now();
        futures::stream::iter(keys.iter().map(|k| {
            let (store, body) = (store.clone(), body.clone());
            async move { store.put(k, PutPayload::from(body)).await.with_context(|| format!("PUT {k}")) }
        }))
        .buffer_unordered(n)
        .try_collect::<Vec<_>>()
        .await?;
        report("put", n, count * object, start);

        let parts: Vec<(Path, std::ops::Range<u64>)> =
            keys.iter().flat_map(|k| get_parts(object).into_iter().map(move |r| (k.clone(), r))).collect();
        let start = Instant::now();
        let got: u64 = futures::stream::iter(parts.into_iter().map(|(k, r)| {
            let store = store.clone();
            async move {
                let bytes = store.get_range(&k, r.clone()).await.with_context(|| format!("GET {k} {r:?}"))?;
                anyhow::Ok(bytes.len() as u64)
            }
        }))
        .buffer_unordered(n)
        .try_fold(0, |sum, len| async move { Ok(sum + len) })
        .await?;
        anyhow::ensure!(got == count * object, "read {got} bytes back of {}", count * object);
        report("get", n, got, start);
        delete_all(&*store, &keys).await?;
    }
    Ok(())
}

fn report(what: &str, in_flight: usize, bytes: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "store {what} in_flight={in_flight} mib_s={:.1} ({} MiB in {secs:.2} s)",
        bytes as f64 / secs / 1048576.0,
        bytes >> 20
    );
}

async fn delete_all(store: &dyn ObjectStore, keys: &[Path]) -> anyhow::Result<()> {
    for k in keys {
        store.delete(k).await.with_context(|| format!("deleting {k}"))?;
    }
    Ok(())
}
