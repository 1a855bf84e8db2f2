//! What a mount is given: its source (`stratusfs://HOST:PORT/VOLUME[/SUBPATH]`, the same for
//! `stratusfs mount`, `mount -t stratusfs`, fstab and CSI) and its options, parsed in one place
//! ([`MountOptions::parse`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fs::FsConfig;
use crate::fuse::mount::KernelOptions;

/// A parsed `stratusfs://HOST:PORT/VOLUME[/SUBPATH]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub server: String,
    pub volume: String,
    pub subpath: String,
}

/// A mount source that does not parse; the message says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSource(String);

impl std::str::FromStr for Source {
    type Err = BadSource;
    fn from_str(s: &str) -> Result<Source, BadSource> {
        let bad = |m: String| BadSource(m);
        let rest = s
            .strip_prefix("stratusfs://")
            .ok_or_else(|| bad(format!("{s:?}: a source looks like stratusfs://HOST:PORT/VOLUME[/SUBPATH]")))?;
        let (server, path) = rest
            .split_once('/')
            .ok_or_else(|| bad(format!("{s:?}: the volume is missing (stratusfs://HOST:PORT/VOLUME)")))?;
        if !server.contains(':') {
            return Err(bad(format!("{s:?}: give the server's port (stratusfs://HOST:PORT/VOLUME)")));
        }
        let (volume, subpath) = path.split_once('/').unwrap_or((path, ""));
        if volume.is_empty() {
            return Err(bad(format!("{s:?}: the volume is missing")));
        }
        Ok(Source { server: server.into(), volume: volume.into(), subpath: subpath.trim_matches('/').into() })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stratusfs://{}/{}", self.server, self.volume)?;
        if !self.subpath.is_empty() {
            write!(f, "/{}", self.subpath)?;
        }
        Ok(())
    }
}

/// A mount option that is unknown or has a bad value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("unknown mount option {0:?} (known: {KNOWN})")]
    Unknown(String),
    #[error("mount option {option}: {why}")]
    Invalid { option: String, why: String },
}

/// Everything `-o` can say: the one value a mount's options travel in (a handover carries it
/// to the successor as it is).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountOptions {
    pub kernel: KernelOptions,
    pub fs: FsConfig,
    /// FUSE reader threads (one channel each).
    pub threads: usize,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub fingerprint: Option<String>,
    /// `remount`: change the flags (ro/rw) of an existing mount instead of mounting.
    pub remount: bool,
    /// Where a daemonised mount writes its log.
    pub log_file: Option<PathBuf>,
    /// How long requests wait for a metadata server that cannot be reached before failing with EIO.
    pub meta_wait: Duration,
}

/// The default of `meta_wait`: longer than a metadata server's restart or a pod's rescheduling.
pub const META_WAIT: Duration = Duration::from_secs(60);

/// The options `-o` knows, for the error message.
const KNOWN: &str = "ro, rw, allow_other, noatime, noexec, nosuid, nodev, umask=OCTAL, attr_ttl=SECS, \
entry_ttl=SECS, negative_ttl=SECS, cache_mib=N, dirty_mib=N, prefetch=N, threads=N, meta_wait=SECS, store_wait=SECS, disk_cache_dir=PATH, disk_cache_mib=N, nodelegations, encryption_secret_file=PATH, token_file=PATH, ca_file=PATH, fingerprint=HEX, \
log_file=PATH";

impl MountOptions {
    /// Parses comma-separated mount options (several `-o` allowed). Options mount(8) and fstab
    /// add for their own use (defaults, auto, _netdev, ...) are accepted and ignored.
    pub fn parse(opts: &[String]) -> Result<MountOptions, OptionError> {
        let mut o = MountOptions {
            kernel: KernelOptions { nodev: true, ..Default::default() },
            threads: 4,
            meta_wait: META_WAIT,
            ..Default::default()
        };
        for opt in opts.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
            let invalid = |why: String| OptionError::Invalid { option: opt.to_string(), why };
            let secs = |v: &str| -> Result<Duration, OptionError> {
                v.parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| invalid(format!("give seconds, e.g. {k}=1.5")))
            };
            let num = |v: &str| -> Result<usize, OptionError> {
                v.parse::<usize>().map_err(|_| invalid("give a whole number".into()))
            };
            let path = |v: &str| -> Result<Option<PathBuf>, OptionError> {
                if v.is_empty() { Err(invalid("give a path".into())) } else { Ok(Some(PathBuf::from(v))) }
            };
            match k {
                "ro" => o.kernel.read_only = true,
                "rw" => o.kernel.read_only = false,
                "remount" => o.remount = true,
                "defaults"
                | "_netdev"
                | "auto"
                | "noauto"
                | "nofail"
                | "user"
                | "nouser"
                | "users"
                | "owner"
                | "relatime"
                | "atime"
                | "exec"
                | "suid"
                | "x-systemd.automount" => {}
                // What /proc/mounts shows for a FUSE mount; mount(8) passes it back on a remount.
                "user_id"
                | "group_id"
                | "default_permissions"
                | "max_read"
                | "rootmode"
                | "blksize"
                | "nodiratime"
                | "diratime"
                | "lazytime"
                | "nolazytime"
                | "strictatime" => {}
                _ if k.starts_with("x-") || k.starts_with("comment") => {}
                "allow_other" => o.kernel.allow_other = true,
                "nodelegations" => o.fs.delegations = false,
                "delegations" => o.fs.delegations = true,
                "noatime" => o.kernel.noatime = true,
                "noexec" => o.kernel.noexec = true,
                "nosuid" => o.kernel.nosuid = true,
                "nodev" => o.kernel.nodev = true,
                "dev" => o.kernel.nodev = false,
                "umask" => {
                    o.fs.umask = u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| invalid("give octal permission bits, e.g. umask=022".into()))?
                }
                "attr_ttl" => o.fs.attr_ttl = secs(v)?,
                "entry_ttl" => o.fs.entry_ttl = secs(v)?,
                "negative_ttl" => o.fs.negative_ttl = secs(v)?,
                "cache_mib" => o.fs.cache_bytes = num(v)? << 20,
                "prefetch" => o.fs.prefetch_blocks = num(v)?,
                "dirty_mib" => o.fs.dirty_limit = (num(v)? << 20).max(1 << 20),
                "threads" => o.threads = num(v)?.clamp(1, 64),
                "meta_wait" => o.meta_wait = secs(v)?,
                "store_wait" => o.fs.store_wait = secs(v)?,
                "disk_cache_dir" => o.fs.disk_cache_dir = path(v)?,
                "disk_cache_mib" => o.fs.disk_cache_bytes = (num(v)? as u64) << 20,
                "encryption_secret_file" => o.fs.encryption_secret_file = path(v)?,
                "token_file" => o.token_file = path(v)?,
                "ca_file" => o.ca_file = path(v)?,
                "fingerprint" => o.fingerprint = Some(v.to_string()),
                "log_file" => o.log_file = path(v)?,
                // A CSI volume's `atTime` travels as this option; point-in-time mounts are a
                // later part, and until they exist a mount refuses it rather than mount the present.
                "at_time" => {
                    return Err(invalid(
                        "point-in-time mounts are not available yet; mount without at_time (a PV's atTime)".into(),
                    ));
                }
                other => return Err(OptionError::Unknown(other.to_string())),
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn sources_parse_and_bad_ones_say_why() {
        let s: Source = "stratusfs://meta:7480/vol/team/a".parse().unwrap();
        assert_eq!(s, Source { server: "meta:7480".into(), volume: "vol".into(), subpath: "team/a".into() });
        assert_eq!(s.to_string(), "stratusfs://meta:7480/vol/team/a");
        let s: Source = "stratusfs://127.0.0.1:7480/vol".parse().unwrap();
        assert_eq!((s.volume.as_str(), s.subpath.as_str()), ("vol", ""));
        assert!("s3://x".parse::<Source>().unwrap_err().to_string().contains("stratusfs://HOST:PORT/VOLUME"));
        assert!("stratusfs://host/vol".parse::<Source>().unwrap_err().to_string().contains("port"));
        assert!("stratusfs://host:1".parse::<Source>().unwrap_err().to_string().contains("volume is missing"));
    }

    #[test]
    fn mount_options_parse_and_unknown_ones_are_named() {
        let o = MountOptions::parse(&[
            "ro,allow_other,noatime,umask=027".into(),
            "attr_ttl=60,entry_ttl=0.5,negative_ttl=2,cache_mib=64,dirty_mib=16,threads=8,token_file=/t,fingerprint=ab,defaults,_netdev".into(),
            "meta_wait=300,store_wait=2.5,disk_cache_dir=/var/cache/l2,disk_cache_mib=512,encryption_secret_file=/s".into(),
        ])
        .unwrap();
        assert!(o.kernel.read_only && o.kernel.allow_other && o.kernel.noatime && o.kernel.nodev);
        assert_eq!(o.fs.umask, 0o027);
        assert_eq!(o.fs.attr_ttl, Duration::from_secs(60));
        assert_eq!(o.fs.entry_ttl, Duration::from_millis(500));
        assert_eq!(o.fs.negative_ttl, Duration::from_secs(2));
        assert_eq!(o.fs.cache_bytes, 64 << 20);
        assert_eq!(o.fs.dirty_limit, 16 << 20);
        assert_eq!(o.threads, 8);
        assert_eq!(o.meta_wait, Duration::from_secs(300));
        assert_eq!(o.fs.store_wait, Duration::from_millis(2500));
        assert_eq!(o.fs.disk_cache_dir.as_deref(), Some(Path::new("/var/cache/l2")));
        assert_eq!(o.fs.disk_cache_bytes, 512 << 20);
        assert_eq!(o.fs.encryption_secret_file.as_deref(), Some(Path::new("/s")));
        assert_eq!(MountOptions::parse(&[]).unwrap().meta_wait, META_WAIT);
        assert_eq!(o.token_file.as_deref(), Some(Path::new("/t")));
        assert_eq!(o.fingerprint.as_deref(), Some("ab"));
        let e = MountOptions::parse(&["colour=blue".into()]).unwrap_err();
        assert_eq!(e, OptionError::Unknown("colour".into()));
        assert!(e.to_string().contains("\"colour\"") && e.to_string().contains("allow_other"), "{e}");
        assert!(MountOptions::parse(&["attr_ttl=soon".into()]).unwrap_err().to_string().contains("seconds"));
        assert!(MountOptions::parse(&["umask=999".into()]).unwrap_err().to_string().contains("octal"));
    }
}
