//! Leader election through a Lease (`stratusfs-operator` in the operator's namespace): one
//! replica reconciles, the others wait. The leader renews the Lease every 5 s; a Lease not renewed
//! for 15 s may be taken over (with the apiserver's optimistic concurrency: two replicas cannot
//! both win one update). A leader that cannot renew for the Lease's duration exits, so that it
//! never reconciles beside a new leader; one that stops gives the Lease up for the next at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};

/// The Lease's name.
pub const LEASE: &str = "stratusfs-operator";
const DURATION: Duration = Duration::from_secs(15);
const RENEW: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_secs(2);

pub struct Leader {
    api: Api<Lease>,
    identity: String,
}

impl Leader {
    pub fn new(client: kube::Client, namespace: &str, identity: String) -> Leader {
        Leader { api: Api::namespaced(client, namespace), identity }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) -> Result<(), kube::Error> {
        let mut told = None;
        loop {
            match self.try_hold().await? {
                Ok(()) => return Ok(()),
                Err(holder) => {
                    if told.as_ref() != Some(&holder) {
                        tracing::info!(lease = LEASE, holder = %holder, me = %self.identity, "another replica leads; waiting for the lease");
                        told = Some(holder);
                    }
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renews the Lease until that fails for longer than its duration or another replica holds
    /// it; then returns (the caller stops reconciling).
    pub async fn keep(&self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(RENEW).await;
            match self.try_hold().await {
                Ok(Ok(())) => renewed = Instant::now(),
                Ok(Err(holder)) => {
                    tracing::error!(holder = %holder, "another replica took the lease");
                    return;
                }
                Err(e) if renewed.elapsed() + RENEW >= DURATION => {
                    tracing::error!(error = %e, "the lease could not be renewed for its whole duration");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "renewing the lease failed; trying again"),
            }
        }
    }

    /// Gives the Lease up, if this replica holds it, so that another one leads at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE).await else { return };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self.api.replace(LEASE, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = LEASE, "gave the lease up"),
            Err(e) => tracing::warn!(error = %e, "giving the lease up failed; it expires in 15 s"),
        }
    }

    /// Takes or renews the Lease: `Ok(Ok(()))` when this replica holds it, `Ok(Err(holder))`
    /// when another one does.
    async fn try_hold(&self) -> Result<Result<(), String>, kube::Error> {
        let now = Timestamp::now();
        let spec = |old: Option<&LeaseSpec>| {
            let ours = old.is_some_and(|s| s.holder_identity.as_deref() == Some(&self.identity));
            LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(DURATION.as_secs() as i32),
                acquire_time: if ours { old.and_then(|s| s.acquire_time.clone()) } else { Some(MicroTime(now)) },
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(
                    old.and_then(|s| s.lease_transitions).unwrap_or(0) + i32::from(!ours && old.is_some()),
                ),
                ..Default::default()
            }
        };
        let written = match self.api.get_opt(LEASE).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(LEASE.into()), ..Default::default() },
                    spec: Some(spec(None)),
                };
                self.api.create(&PostParams::default(), &lease).await.map(drop)
            }
            Some(mut lease) => {
                let old = lease.spec.clone().unwrap_or_default();
                let holder = old.holder_identity.clone().unwrap_or_default();
                let expires = old.renew_time.as_ref().map(|t| {
                    let secs = old.lease_duration_seconds.unwrap_or(DURATION.as_secs() as i32);
                    t.0.checked_add(SignedDuration::from_secs(secs.into())).unwrap_or(t.0)
                });
                let free = holder.is_empty() || holder == self.identity || expires.is_none_or(|e| e < now);
                if !free {
                    return Ok(Err(holder));
                }
                lease.spec = Some(spec(Some(&old)));
                self.api.replace(LEASE, &PostParams::default(), &lease).await.map(drop)
            }
        };
        match written {
            Ok(()) => Ok(Ok(())),
            // Another replica wrote the Lease first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Err("(another replica, just now)".into())),
            Err(e) => Err(e),
        }
    }
}
