//! A block store written as a URL (`s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX`,
//! `az://CONTAINER/PREFIX`, `file:///DIR`), completed with the credentials and endpoints each
//! cloud's usual environment variables give. The environment is read once, here, when a volume is
//! made; the spec that results holds everything and travels as data (see [`super::backend`]).

use std::path::PathBuf;

use super::backend::{BackendError, BackendSpec, Sse};

/// The key and account Azurite (the Azure Storage emulator) documents for every installation.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Every environment variable [`BackendSpec::from_url`] reads.
pub const BLOCK_STORE_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
    "AWS_SERVER_SIDE_ENCRYPTION",
    "AWS_SSE_KMS_KEY_ID",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_BASE_URL",
    "STORAGE_EMULATOR_HOST",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ENDPOINT",
    "AZURE_STORAGE_USE_EMULATOR",
];

impl BackendSpec {
    /// The spec a `--block-store` URL names, with credentials and endpoints from `env` (a lookup
    /// of environment variables; the command passes the process environment):
    ///
    /// - `s3://`: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (both required),
    ///   `AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (an S3-compatible store),
    ///   `AWS_REGION` or `AWS_DEFAULT_REGION`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`,
    ///   `AWS_SERVER_SIDE_ENCRYPTION` (`AES256`, or `aws:kms` with `AWS_SSE_KMS_KEY_ID`).
    /// - `gs://`: `GOOGLE_APPLICATION_CREDENTIALS` (a service-account key file) or
    ///   `GOOGLE_SERVICE_ACCOUNT_KEY` (its JSON), required unless an emulator is named by
    ///   `GOOGLE_BASE_URL` or `STORAGE_EMULATOR_HOST`.
    /// - `az://`: `AZURE_STORAGE_ACCOUNT_NAME` and `AZURE_STORAGE_ACCOUNT_KEY` (required),
    ///   `AZURE_STORAGE_ENDPOINT`; `AZURE_STORAGE_USE_EMULATOR=true` means Azurite on
    ///   127.0.0.1:10000 with its documented account and key unless they are given.
    /// - `file:///DIR`: a local folder (absolute path).
    pub fn from_url(url: &str, env: impl Fn(&str) -> Option<String>) -> Result<BackendSpec, BackendError> {
        let bad = |reason: &str| BackendError::Url { url: url.to_string(), reason: reason.to_string() };
        let env = |name: &str| {
            debug_assert!(BLOCK_STORE_ENV.contains(&name), "{name} missing from BLOCK_STORE_ENV");
            env(name).filter(|v| !v.is_empty())
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        if scheme == "file" {
            let path = PathBuf::from(rest);
            if !path.is_absolute() {
                return Err(bad("a file URL needs an absolute path (file:///DIR)"));
            }
            return Ok(BackendSpec::Local { path, prefix: String::new() });
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket or container name"));
        }
        if bucket.contains(['?', '#', '@', ':']) || prefix.contains(['?', '#']) {
            return Err(bad("a bucket URL has no user, port, query or fragment"));
        }
        let (bucket, prefix) = (bucket.to_string(), prefix.trim_matches('/').to_string());
        let missing = |vars: &'static str| BackendError::Credentials { url: url.to_string(), vars };
        match scheme {
            "s3" => {
                let (Some(key), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) else {
                    return Err(missing("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"));
                };
                let kms_key_id = env("AWS_SSE_KMS_KEY_ID");
                let server_side_encryption = match (env("AWS_SERVER_SIDE_ENCRYPTION").as_deref(), kms_key_id) {
                    (None, None) => None,
                    (Some("AES256"), None) => Some(Sse { kms_key_id: None }),
                    (Some("aws:kms"), Some(key)) => Some(Sse { kms_key_id: Some(key) }),
                    (Some("aws:kms"), None) => {
                        return Err(bad("AWS_SERVER_SIDE_ENCRYPTION=aws:kms needs the key in AWS_SSE_KMS_KEY_ID"));
                    }
                    (None | Some("AES256"), Some(_)) => {
                        return Err(bad("AWS_SSE_KMS_KEY_ID is set: set AWS_SERVER_SIDE_ENCRYPTION=aws:kms with it"));
                    }
                    (Some(other), _) => {
                        return Err(bad(&format!(
                            "AWS_SERVER_SIDE_ENCRYPTION={other} is not one of AES256 (SSE-S3) or aws:kms (SSE-KMS)"
                        )));
                    }
                };
                Ok(BackendSpec::S3 {
                    bucket,
                    prefix,
                    endpoint: env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")),
                    region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
                    access_key_id: Some(key),
                    secret_access_key: Some(secret),
                    session_token: env("AWS_SESSION_TOKEN"),
                    virtual_hosted_style: env("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").is_some_and(|v| truthy(&v)),
                    server_side_encryption,
                })
            }
            "gs" => {
                let endpoint = env("GOOGLE_BASE_URL").or_else(|| {
                    env("STORAGE_EMULATOR_HOST").map(|h| if h.contains("://") { h } else { format!("http://{h}") })
                });
                let key = match (env("GOOGLE_SERVICE_ACCOUNT_KEY"), env("GOOGLE_APPLICATION_CREDENTIALS")) {
                    (Some(json), _) => Some(json),
                    (None, Some(path)) => Some(std::fs::read_to_string(&path).map_err(|e| BackendError::Url {
                        url: url.to_string(),
                        reason: format!("GOOGLE_APPLICATION_CREDENTIALS={path}: {e}"),
                    })?),
                    (None, None) if endpoint.is_some() => None,
                    (None, None) => {
                        return Err(missing(
                            "GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT_KEY; none with an emulator in STORAGE_EMULATOR_HOST)",
                        ));
                    }
                };
                Ok(BackendSpec::Gcs { bucket, prefix, endpoint, service_account_key: key })
            }
            "az" | "azure" => {
                let emulator = env("AZURE_STORAGE_USE_EMULATOR").is_some_and(|v| truthy(&v));
                let account = env("AZURE_STORAGE_ACCOUNT_NAME").or(emulator.then(|| AZURITE_ACCOUNT.to_string()));
                let key = env("AZURE_STORAGE_ACCOUNT_KEY").or(emulator.then(|| AZURITE_KEY.to_string()));
                let (Some(account), Some(key)) = (account, key) else {
                    return Err(missing("AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY"));
                };
                let endpoint =
                    env("AZURE_STORAGE_ENDPOINT").or(emulator.then(|| format!("http://127.0.0.1:10000/{account}")));
                Ok(BackendSpec::Azure { account, container: bucket, prefix, endpoint, access_key: Some(key) })
            }
            _ => Err(bad("unknown scheme; give s3://, gs://, az:// or file://")),
        }
    }

    /// The URL a user would write for this spec (no credentials).
    pub fn url(&self) -> String {
        let join = |scheme: &str, bucket: &str, prefix: &str| match prefix.trim_matches('/') {
            "" => format!("{scheme}://{bucket}"),
            p => format!("{scheme}://{bucket}/{p}"),
        };
        match self {
            BackendSpec::Local { path, prefix } => join("file", &path.display().to_string(), prefix),
            BackendSpec::Memory { prefix } => join("memory", "", prefix),
            BackendSpec::S3 { bucket, prefix, .. } => join("s3", bucket, prefix),
            BackendSpec::Gcs { bucket, prefix, .. } => join("gs", bucket, prefix),
            BackendSpec::Azure { container, prefix, .. } => join("az", container, prefix),
        }
    }
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(url: &str, vars: &[(&str, &str)]) -> Result<BackendSpec, BackendError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        BackendSpec::from_url(url, |k| vars.get(k).cloned())
    }

    #[test]
    fn s3_takes_keys_endpoint_and_region_from_the_environment() {
        let spec = from(
            "s3://bucket/team/vol/",
            &[
                ("AWS_ACCESS_KEY_ID", "id"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
                ("AWS_REGION", "eu-west-1"),
            ],
        )
        .unwrap();
        assert_eq!(
            spec,
            BackendSpec::S3 {
                bucket: "bucket".into(),
                prefix: "team/vol".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-west-1".into()),
                access_key_id: Some("id".into()),
                secret_access_key: Some("secret".into()),
                session_token: None,
                virtual_hosted_style: false,
                server_side_encryption: None,
            }
        );
        assert_eq!(spec.url(), "s3://bucket/team/vol");
    }

    #[test]
    fn server_side_encryption_is_sse_s3_or_sse_kms_with_its_key() {
        let keys = [("AWS_ACCESS_KEY_ID", "id"), ("AWS_SECRET_ACCESS_KEY", "secret")];
        let sse = |extra: &[(&str, &str)]| {
            let vars: Vec<_> = keys.iter().chain(extra).copied().collect();
            from("s3://b", &vars).map(|spec| match spec {
                BackendSpec::S3 { server_side_encryption, .. } => server_side_encryption,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(sse(&[]).unwrap(), None);
        assert_eq!(sse(&[("AWS_SERVER_SIDE_ENCRYPTION", "AES256")]).unwrap(), Some(Sse { kms_key_id: None }));
        assert_eq!(
            sse(&[("AWS_SERVER_SIDE_ENCRYPTION", "aws:kms"), ("AWS_SSE_KMS_KEY_ID", "k1")]).unwrap(),
            Some(Sse { kms_key_id: Some("k1".into()) })
        );
        for (extra, says) in [
            (&[("AWS_SERVER_SIDE_ENCRYPTION", "aws:kms")][..], "needs the key in AWS_SSE_KMS_KEY_ID"),
            (&[("AWS_SSE_KMS_KEY_ID", "k1")][..], "set AWS_SERVER_SIDE_ENCRYPTION=aws:kms"),
            (&[("AWS_SERVER_SIDE_ENCRYPTION", "sse-c")][..], "sse-c is not one of AES256"),
        ] {
            let e = sse(extra).unwrap_err().to_string();
            assert!(e.contains(says), "{extra:?}: {e}");
        }
        let spec = BackendSpec::S3 {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            virtual_hosted_style: false,
            server_side_encryption: Some(Sse { kms_key_id: None }),
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains(r#""server_side_encryption":{}"#), "{json}");
        assert_eq!(serde_json::from_str::<BackendSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn azure_emulator_and_gcs_emulator_need_no_keys() {
        let az = from("az://blocks", &[("AZURE_STORAGE_USE_EMULATOR", "true")]).unwrap();
        let BackendSpec::Azure { account, endpoint, access_key, .. } = az else { panic!("{az:?}") };
        assert_eq!((account.as_str(), access_key.as_deref()), (AZURITE_ACCOUNT, Some(AZURITE_KEY)));
        assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:10000/devstoreaccount1"));
        let gs = from("gs://b/p", &[("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")]).unwrap();
        assert!(
            matches!(&gs, BackendSpec::Gcs { endpoint: Some(e), service_account_key: None, .. } if e == "http://127.0.0.1:4443")
        );
        assert_eq!(from("file:///srv/blocks", &[]).unwrap().url(), "file:///srv/blocks");
    }

    #[test]
    fn malformed_urls_and_missing_credentials_say_what_to_give() {
        for (url, says) in [
            ("bucket/prefix", "no scheme"),
            ("s4://bucket", "unknown scheme"),
            ("s3://", "no bucket"),
            ("s3:///prefix", "no bucket"),
            ("s3://user@bucket", "no user, port"),
            ("gs://bucket:443/p", "no user, port"),
            ("file://relative/dir", "absolute path"),
        ] {
            let e = from(url, &[]).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(url), "{url}: {e}");
        }
        for (url, var) in [
            ("s3://b", "AWS_SECRET_ACCESS_KEY"),
            ("gs://b", "GOOGLE_APPLICATION_CREDENTIALS"),
            ("az://c", "AZURE_STORAGE_ACCOUNT_KEY"),
        ] {
            let e = from(url, &[("AWS_ACCESS_KEY_ID", "only-the-id")]).unwrap_err().to_string();
            assert!(e.contains(var) && e.contains(url), "{url}: {e}");
        }
    }
}
