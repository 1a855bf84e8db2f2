//! How a metadata server runs, as one serde value: what `stratusfs meta` takes as flags or as a
//! YAML/JSON file (`--config`), and what an operator renders from a custom resource. The defaults
//! here are the one place they are set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A metadata server's configuration. Durations are whole seconds in serialised form
/// (`leaseSecs: 30`); field names are camelCase there, as Kubernetes resources spell them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the databases, the generated certificate and the volumes live.
    pub data_dir: PathBuf,
    /// gRPC (TLS) address.
    pub listen: SocketAddr,
    /// Plain-HTTP address of /metrics, /healthz and /readyz.
    pub http_listen: SocketAddr,
    /// Certificate and key files (PEM), reloaded when they change; `None` generates a
    /// certificate once and keeps it in `DATA_DIR/tls`.
    pub tls_cert: Option<TlsFiles>,
    /// Names (DNS or IP) for a generated certificate.
    pub tls_names: Vec<String>,
    /// Make every change durable before its reply (otherwise flush/fsync commits always are,
    /// other changes within a second).
    pub sync: bool,
    /// A session that sends nothing for this long expires (its locks and opens go).
    #[serde(rename = "leaseSecs", with = "secs")]
    pub lease: Duration,
    /// A file holding an account token to accept (bootstrap for operators).
    pub admin_token_file: Option<PathBuf>,
    /// How often the collector runs; zero disables the schedule.
    #[serde(rename = "gcIntervalSecs", with = "secs")]
    pub gc_interval: Duration,
    /// How long an uploaded block no commit references is kept.
    #[serde(rename = "gcGraceSecs", with = "secs")]
    pub gc_grace: Duration,
}

/// A certificate and its key (PEM files).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig::new(PathBuf::from("/var/lib/stratusfs"))
    }
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            data_dir,
            listen: "127.0.0.1:7480".parse().expect("a socket address literal"),
            http_listen: "127.0.0.1:7481".parse().expect("a socket address literal"),
            tls_cert: None,
            tls_names: vec!["localhost".into(), "127.0.0.1".into()],
            sync: false,
            lease: Duration::from_secs(30),
            admin_token_file: None,
            gc_interval: Duration::from_secs(3600),
            gc_grace: Duration::from_secs(3600),
        }
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_reads_from_yaml_with_defaults_and_refuses_unknown_fields() {
        let c: ServerConfig = serde_saphyr::from_str(
            "dataDir: /data\nlisten: 0.0.0.0:7480\nleaseSecs: 12\ntlsCert: {cert: /t/c.pem, key: /t/k.pem}\n",
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/data"));
        assert_eq!(c.lease, Duration::from_secs(12));
        assert_eq!(c.gc_interval, Duration::from_secs(3600), "unset fields keep their defaults");
        assert_eq!(c.tls_cert.as_ref().map(|t| t.key.clone()), Some(PathBuf::from("/t/k.pem")));
        let back: ServerConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let e = serde_saphyr::from_str::<ServerConfig>("dataDir: /d\nleese: 3\n").unwrap_err().to_string();
        assert!(e.contains("leese"), "{e}");
    }
}
