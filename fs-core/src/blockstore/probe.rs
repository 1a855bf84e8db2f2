//! The check a volume's block store passes before anything is made on it: a small object written,
//! read back and deleted, with few retries, so that a missing bucket, wrong keys or an endpoint
//! nobody answers on fail at once with an error that names which.

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::backend::{BackendError, BackendSpec, Tuning, open_backend, open_backend_with};

/// Where the probe object goes (under the spec's prefix); deleted again at once.
const PROBE_DIR: &str = ".stratusfs-probe";

/// Writes, reads back and deletes a small object through `spec`. Local folders are created if
/// missing (as [`super::open_backend`] does).
pub async fn check_backend(spec: &BackendSpec) -> Result<(), BackendError> {
    let store = open_backend_with(spec, &Tuning::impatient())?;
    let path = Path::from(format!("{PROBE_DIR}/{}", uuid::Uuid::new_v4()));
    let body = format!("stratusfs probe {path}");
    let err = |e| classify(spec, e);
    store.put(&path, PutPayload::from(body.clone().into_bytes())).await.map_err(err)?;
    let got = store.get(&path).await.map_err(err)?.bytes().await.map_err(err)?;
    if got != body.as_bytes() {
        let detail = format!("{path} read back {} bytes that differ", got.len());
        return Err(BackendError::Probe { url: spec.url(), detail });
    }
    store.delete(&path).await.map_err(err)?;
    Ok(())
}

/// Deletes every object of the volume whose uuid is `uuid` (all under `UUID/` below the spec's
/// prefix: what a Kubernetes Volume's `Delete` policy removes) and returns how many there were.
/// Refuses anything but a uuid, so a wrong call can never empty a whole prefix.
pub async fn delete_volume_objects(spec: &BackendSpec, uuid: &str) -> Result<u64, BackendError> {
    use futures::{StreamExt, TryStreamExt};
    let parsed = uuid::Uuid::parse_str(uuid).map_err(|_| BackendError::Probe {
        url: spec.url(),
        detail: format!("{uuid:?} is not a volume uuid: nothing was deleted"),
    })?;
    let store = open_backend(spec)?;
    let err = |e| classify(spec, e);
    let prefix = Path::from(parsed.hyphenated().to_string());
    let keys = store.list(Some(&prefix)).map_ok(|m| m.location).boxed();
    let mut deleted = 0u64;
    let mut results = store.delete_stream(keys);
    while let Some(r) = results.next().await {
        match r {
            Ok(_) => deleted += 1,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(deleted)
}

/// Which of the user's mistakes an error of the store shows.
fn classify(spec: &BackendSpec, e: object_store::Error) -> BackendError {
    let url = spec.url();
    let full = one_line(&e);
    let detail = summary(&full);
    match &e {
        object_store::Error::NotFound { .. } => BackendError::NoBucket { url, detail },
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            BackendError::Denied { url, detail }
        }
        _ if is_unreachable(&e) => BackendError::Unreachable { url, endpoint: spec.endpoint_url(), detail },
        _ if mentions_missing_bucket(&full) => BackendError::NoBucket { url, detail },
        _ => BackendError::Probe { url, detail },
    }
}

/// What a user needs of a store's error: its code and message (S3 and Azure answer in XML, GCS
/// in JSON), else the HTTP status, else the innermost cause.
fn summary(full: &str) -> String {
    let between = |open: &str, close: &str| {
        let start = full.find(open)? + open.len();
        let len = full[start..].find(close)?;
        Some(full[start..start + len].trim().to_string())
    };
    if let Some(code) = between("<Code>", "</Code>") {
        let message = between("<Message>", "</Message>").unwrap_or_default();
        // Azure appends request ids and times to its message.
        let message = message.split(" RequestId:").next().unwrap_or_default().trim().to_string();
        return if message.is_empty() { code } else { format!("{code}: {message}") };
    }
    if let Some(status) = between("status code: ", ": ") {
        return format!("HTTP {status}");
    }
    let inner = full.rsplit(" - ").next().unwrap_or(full);
    let inner = inner.split_once("HTTP error: ").map(|(_, r)| r).unwrap_or(inner).trim();
    inner.chars().take(300).collect()
}

/// Whether the error's causes include a failure to connect (refused, unknown host, timeout).
fn is_unreachable(e: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind::{Connect, Timeout};
            if matches!(h.kind(), Connect | Timeout) {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// Stores answer a missing bucket with a 404 whose code names it; some map it to a generic error.
fn mentions_missing_bucket(detail: &str) -> bool {
    ["NoSuchBucket", "ContainerNotFound", "The specified bucket does not exist"].iter().any(|m| detail.contains(m))
}

#[cfg(test)]
#[test]
fn summaries_keep_the_stores_code_and_message() {
    let s3 = "Error performing PUT http://h/b/k in 3ms - Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?> <Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><Key>k</Key></Error>";
    assert_eq!(summary(s3), "NoSuchBucket: The specified bucket does not exist");
    let az = "... <Error>   <Code>ContainerNotFound</Code>   <Message>The specified container does not exist. RequestId:a3b9 Time:2026</Message> </Error>";
    assert_eq!(summary(az), "ContainerNotFound: The specified container does not exist.");
    let gcs =
        "Error performing PUT http://h/b in 1ms - Server returned non-2xx status code: 404 Not Found: {\"error\":{}}";
    assert_eq!(summary(gcs), "HTTP 404 Not Found");
}

/// The error and its causes on one line, without repeats.
fn one_line(e: &object_store::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let s = c.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cause = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_folder_passes_and_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spec = BackendSpec::Local { path: dir.path().join("blocks"), prefix: String::new() };
        check_backend(&spec).await.unwrap();
        let left = std::fs::read_dir(dir.path().join("blocks").join(PROBE_DIR)).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "the probe object is deleted");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let spec = BackendSpec::from_url("s3://bucket/p", |k| match k {
            "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" => Some("x".into()),
            "AWS_ENDPOINT_URL" => Some(format!("http://127.0.0.1:{port}")),
            _ => None,
        })
        .unwrap();
        let started = std::time::Instant::now();
        let e = check_backend(&spec).await.unwrap_err();
        assert!(matches!(e, BackendError::Unreachable { .. }), "{e}");
        let (said, endpoint) = (e.to_string(), format!("http://127.0.0.1:{port}"));
        assert!(said.contains("s3://bucket/p") && said.contains(&endpoint), "{said}");
        assert!(said.contains("Connection refused") && !said.contains('\n'), "{said}");
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn deleting_a_volumes_objects_takes_only_that_volumes() {
        use object_store::ObjectStoreExt;
        let dir = tempfile::tempdir().unwrap();
        let spec = BackendSpec::Local { path: dir.path().join("blocks"), prefix: String::new() };
        let store = open_backend(&spec).unwrap();
        let (gone, kept) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
        for (v, id) in [(&gone, 1), (&gone, 2), (&gone, 300), (&kept, 1)] {
            store.put(&crate::blockstore::layout::block_key(v, id), PutPayload::from_static(b"x")).await.unwrap();
        }
        assert_eq!(delete_volume_objects(&spec, &gone).await.unwrap(), 3);
        assert_eq!(delete_volume_objects(&spec, &gone).await.unwrap(), 0, "a second call finds nothing");
        assert!(store.head(&crate::blockstore::layout::block_key(&kept, 1)).await.is_ok(), "another volume's block");
        let e = delete_volume_objects(&spec, "").await.unwrap_err();
        assert!(e.to_string().contains("not a volume uuid"), "{e}");
    }
}
