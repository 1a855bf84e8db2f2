//! End-to-end tests: one test binary, so the heavy dependencies link once.
//!
//! Each test starts the real services it needs (see the `e2e` library) and drops them at the end.

/// The same test function on every kind of block store: for each `async fn f(backend: Backend)`
/// named, a module `f` with the tests `f::local`, `f::minio`, `f::gcs` and `f::azure` (`cloud:`
/// leaves out the local folder; `soak:` makes them `#[ignore]`d tests that `e2e/soak` runs).
macro_rules! on_each_backend {
    (@one $test:ident $name:ident $backend:ident $($attr:meta)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])?
        async fn $name() {
            e2e::init();
            super::$test(e2e::stores::Backend::$backend).await
        }
    };
    (cloud: $($test:ident),+ $(,)?) => {$(
        mod $test {
            on_each_backend!(@one $test minio Minio);
            on_each_backend!(@one $test gcs Gcs);
            on_each_backend!(@one $test azure Azure);
        }
    )+};
    (soak: $($test:ident),+ $(,)?) => {$(
        mod $test {
            on_each_backend!(@one $test minio Minio ignore = "soak: every cloud backend at length");
            on_each_backend!(@one $test gcs Gcs ignore = "soak: every cloud backend at length");
            on_each_backend!(@one $test azure Azure ignore = "soak: every cloud backend at length");
        }
    )+};
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            on_each_backend!(@one $test local Local);
            on_each_backend!(@one $test minio Minio);
            on_each_backend!(@one $test gcs Gcs);
            on_each_backend!(@one $test azure Azure);
        }
    )+};
}

mod block_store_url;
mod chart;
mod crds;
mod csi;
mod csi_handover;
mod csi_node;
mod encryption;
mod fuse_delegations;
mod fuse_failures;
mod fuse_handover;
mod fuse_model;
mod fuse_posix;
mod fuse_suites;
mod fuse_two_mounts;
mod fuse_up;
mod harness;
mod kubernetes;
mod meta_failures;
mod object_stores;
mod operator;
mod store_failures;
mod store_reads;
mod suites;
mod volumes;
