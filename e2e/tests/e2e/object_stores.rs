//! The three object-store emulators are real: fs-core's backends put, get, list and delete
//! objects through them, and a second client sees what the first wrote.

use bytes::Bytes;
use e2e::{
    azurite::Azurite,
    gcs::FakeGcs,
    minio::{KMS_KEY_NAME, Minio},
};
use fs_core::BackendSpec;
use fs_core::blockstore::{Sse, check_backend, open_backend};
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload, path::Path};

async fn round_trip(spec: BackendSpec) {
    let store = open_backend(&spec).expect("backend builds");
    let payload = Bytes::from((0..=255u8).cycle().take(300_000).collect::<Vec<u8>>());
    store
        .put(&Path::from("blocks/a/1"), PutPayload::from(payload.clone()))
        .await
        .unwrap_or_else(|e| panic!("{} put: {e}", spec.kind()));
    store.put(&Path::from("blocks/a/2"), PutPayload::from_static(b"two")).await.unwrap();
    store.put(&Path::from("other"), PutPayload::from_static(b"x")).await.unwrap();

    // A second client built from the same spec reads what the first wrote.
    let other = open_backend(&spec).unwrap();
    let got = other.get(&Path::from("blocks/a/1")).await.unwrap().bytes().await.unwrap();
    assert_eq!(got, payload, "{}: bytes read back differ", spec.kind());
    let range = other.get_range(&Path::from("blocks/a/1"), 1000..1010).await.unwrap();
    assert_eq!(&range[..], &payload[1000..1010]);

    let mut listed: Vec<String> =
        other.list(Some(&Path::from("blocks"))).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
    listed.sort();
    assert_eq!(listed, ["blocks/a/1", "blocks/a/2"], "{}: list under prefix", spec.kind());

    store.delete(&Path::from("blocks/a/1")).await.unwrap();
    let err = other.get(&Path::from("blocks/a/1")).await.unwrap_err();
    assert!(
        matches!(err, object_store::Error::NotFound { .. }),
        "{}: deleted object should be NotFound, got {err}",
        spec.kind()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minio_put_get_list_delete() {
    e2e::init();
    let minio = Minio::start().await.unwrap();
    round_trip(minio.backend_spec("vol-1")).await;
    // The prefix really is a prefix of the object keys: a client without it sees them under it.
    let unprefixed = open_backend(&minio.backend_spec("")).unwrap();
    let n = unprefixed.list(Some(&Path::from("vol-1"))).try_collect::<Vec<_>>().await.unwrap().len();
    assert_eq!(n, 2, "objects live under the spec's prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minio_rejects_wrong_credentials() {
    e2e::init();
    let minio = Minio::start().await.unwrap();
    let mut spec = minio.backend_spec("");
    if let BackendSpec::S3 { secret_access_key, .. } = &mut spec {
        *secret_access_key = Some("wrong".into());
    }
    let store = open_backend(&spec).unwrap();
    let err = store.put(&Path::from("x"), PutPayload::from_static(b"x")).await.unwrap_err();
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_gcs_put_get_list_delete() {
    e2e::init();
    let gcs = FakeGcs::start().await.unwrap();
    round_trip(gcs.backend_spec("vol-1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_put_get_list_delete() {
    e2e::init();
    let azurite = Azurite::start().await.unwrap();
    round_trip(azurite.backend_spec("vol-1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minio_encrypts_objects_with_the_server_side_encryption_the_spec_asks() {
    e2e::init();
    let minio = Minio::start_with_kms().await.unwrap();
    for (sse, header) in
        [(Sse { kms_key_id: None }, "AES256"), (Sse { kms_key_id: Some(KMS_KEY_NAME.into()) }, "aws:kms")]
    {
        let prefix = format!("sse-{}", header.replace(':', "-"));
        let mut spec = minio.backend_spec(&prefix);
        if let BackendSpec::S3 { server_side_encryption, .. } = &mut spec {
            *server_side_encryption = Some(sse.clone());
        }
        check_backend(&spec).await.unwrap_or_else(|e| panic!("{sse:?}: the check fails: {e}"));
        let store = open_backend(&spec).unwrap();
        store.put(&Path::from("blocks/1"), PutPayload::from_static(b"secret bytes")).await.unwrap();
        let got = store.get(&Path::from("blocks/1")).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"secret bytes", "{sse:?}: read back");
        let headers = minio.head(&format!("{prefix}/blocks/1")).await.unwrap();
        let said = headers.get("x-amz-server-side-encryption").and_then(|v| v.to_str().ok());
        assert_eq!(said, Some(header), "{sse:?}: the store says how the object is encrypted: {headers:?}");
        if let Some(key) = &sse.kms_key_id {
            let id = headers.get("x-amz-server-side-encryption-aws-kms-key-id").and_then(|v| v.to_str().ok());
            assert!(id.is_some_and(|id| id.ends_with(key.as_str())), "SSE-KMS names the key: {headers:?}");
        }
    }

    // A store that cannot encrypt refuses the volume at its check, in one line that says why.
    let plain = Minio::start().await.unwrap();
    let mut spec = plain.backend_spec("sse");
    if let BackendSpec::S3 { server_side_encryption, .. } = &mut spec {
        *server_side_encryption = Some(Sse { kms_key_id: None });
    }
    let err = check_backend(&spec).await.unwrap_err().to_string();
    assert!(!err.contains('\n') && err.contains("block store s3://"), "{err}");
}
