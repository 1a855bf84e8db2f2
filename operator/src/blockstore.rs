//! The BlockStore reconciler: reads the credentials Secret, turns the spec into fs-core's
//! [`BackendSpec`] and checks the store by writing, reading and deleting a probe object
//! ([`fs_core::check_backend`]). The Ready condition's reason and message say what failed (no
//! Secret, access denied, no such bucket, endpoint unreachable). Checked again every 5 minutes, 30
//! seconds while it fails, and at once when the spec or the Secret changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fs_core::{BackendError, BackendSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};
use stratusfs_api::Volume;
use stratusfs_api::blockstore::{BlockStore, BlockStoreSpec, BlockStoreStatus};

use crate::{Ctx, Error, condition, transitions};

/// What a BlockStore's check found: the Ready condition's reason and message.
#[derive(Clone)]
pub struct Checked {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The finalizer that holds a BlockStore's deletion while Volumes use it.
pub const FINALIZER: &str = "stratusfs.io/blockstore";

pub async fn reconcile(bs: Arc<BlockStore>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let api: Api<BlockStore> = Api::namespaced(ctx.client.clone(), &bs.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, bs, |event| async {
        match event {
            FinalizerEvent::Apply(bs) => check(bs, &ctx).await,
            FinalizerEvent::Cleanup(bs) => release(bs, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(e.to_string()))
}

/// A BlockStore being deleted goes only once no Volume names it; until then its `InUse`
/// condition names them.
async fn release(bs: Arc<BlockStore>, ctx: &Ctx) -> Result<Action, Error> {
    let ns = bs.namespace().unwrap_or_default();
    let volumes: Api<Volume> = Api::namespaced(ctx.client.clone(), &ns);
    let users: Vec<String> = volumes
        .list(&Default::default())
        .await?
        .into_iter()
        .filter(|v| v.spec.block_store == bs.name_any())
        .map(|v| v.name_any())
        .collect();
    if users.is_empty() {
        return Ok(Action::await_change());
    }
    let message = format!("deletion waits until no Volume uses this BlockStore; used by Volume {}", users.join(", "));
    let old = bs.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.conditions.retain(|c| c.type_ != "InUse");
    status.conditions.push(condition(&old.conditions, "InUse", true, "VolumesExist", &message, bs.meta().generation));
    if status != old {
        ctx.patch_status(bs.as_ref(), &status).await?;
        ctx.event(bs.as_ref(), false, "DeletionHeld", &message).await;
    }
    Err(Error::Held(format!("BlockStore {ns}/{}: {message}", bs.name_any())))
}

/// Probes the store `spec` describes (the BlockStore `key`, `NS/NAME`): a spec (credentials
/// included) that passed less than a minute ago is not probed again; a failure always is. The
/// BlockStore reconciler and a Volume about to take new credentials both ask here.
pub async fn probe(ctx: &Ctx, key: &str, spec: &fs_core::BackendSpec) -> Checked {
    let hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(spec).unwrap_or_default().hash(&mut h);
        h.finish()
    };
    let recent = ctx
        .checks
        .lock()
        .get(key)
        .filter(|(h, at, _)| *h == hash && at.elapsed() < Duration::from_secs(60))
        .map(|c| c.2.clone());
    if let Some(c) = recent {
        return c;
    }
    let c = match fs_core::check_backend(spec).await {
        Ok(()) => Checked {
            ready: true,
            reason: "Probed",
            message: format!("a probe object was written, read and deleted in {}", spec.url()),
        },
        Err(e) => Checked { ready: false, reason: reason_of(&e), message: e.to_string() },
    };
    if c.ready {
        ctx.checks.lock().insert(key.to_string(), (hash, std::time::Instant::now(), c.clone()));
    }
    c
}

/// Checks the store and writes the Ready condition.
async fn check(bs: Arc<BlockStore>, ctx: &Ctx) -> Result<Action, Error> {
    let ns = bs.namespace().unwrap_or_default();
    let checked = match backend_spec(&ctx.client, &ns, &bs.spec).await {
        Ok(spec) => probe(ctx, &format!("{ns}/{}", bs.name_any()), &spec).await,
        Err(c) => c,
    };
    let (backend, location) = describe(&bs.spec);
    let old = bs.status.clone().unwrap_or_default();
    let ready =
        condition(&old.conditions, "Ready", checked.ready, checked.reason, &checked.message, bs.meta().generation);
    let status = BlockStoreStatus {
        conditions: vec![ready.clone()],
        backend: Some(backend.into()),
        location: Some(location),
        observed_generation: bs.meta().generation,
    };
    if status != old {
        ctx.patch_status(bs.as_ref(), &status).await?;
        if transitions(&old.conditions, &ready) {
            ctx.event(bs.as_ref(), checked.ready, checked.reason, &checked.message).await;
        }
        tracing::info!(blockstore = %bs.name_any(), namespace = %ns, ready = checked.ready, reason = checked.reason, "{}", checked.message);
    }
    ctx.count::<BlockStore>(if checked.ready { "ready" } else { "not_ready" });
    Ok(Action::requeue(if checked.ready { Duration::from_secs(300) } else { Duration::from_secs(30) }))
}

/// The reason a failed check gives.
fn reason_of(e: &BackendError) -> &'static str {
    match e {
        BackendError::Denied { .. } => "AccessDenied",
        BackendError::NoBucket { .. } => "NoSuchBucket",
        BackendError::Unreachable { .. } => "Unreachable",
        BackendError::Credentials { .. } => "NoCredentials",
        BackendError::Url { .. } | BackendError::Endpoint { .. } | BackendError::Build { .. } => "InvalidSpec",
        BackendError::Probe { .. } | BackendError::LocalDir { .. } => "ProbeFailed",
    }
}

/// The backend's name and where in it the blocks go (bucket/prefix).
pub fn describe(spec: &BlockStoreSpec) -> (&'static str, String) {
    let at = |bucket: &str, prefix: &Option<String>| match prefix.as_deref().map(|p| p.trim_matches('/')) {
        Some(p) if !p.is_empty() => format!("{bucket}/{p}"),
        _ => bucket.to_string(),
    };
    match (&spec.s3, &spec.gcs, &spec.azure) {
        (Some(s), _, _) => ("s3", at(&s.bucket, &s.prefix)),
        (_, Some(g), _) => ("gcs", at(&g.bucket, &g.prefix)),
        (_, _, Some(a)) => ("azure", at(&a.container, &a.prefix)),
        _ => ("none", String::new()),
    }
}

/// The store a BlockStore names, with the credentials of its Secret; a missing Secret or key is
/// a failed check saying which.
pub async fn backend_spec(client: &kube::Client, ns: &str, spec: &BlockStoreSpec) -> Result<BackendSpec, Checked> {
    let secret_of = |name: &str| {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let name = name.to_string();
        async move {
            let missing = |why: String| Checked { ready: false, reason: "SecretMissing", message: why };
            match secrets.get_opt(&name).await {
                Ok(Some(s)) => Ok(secret_data(&s)),
                Ok(None) => Err(missing(format!("the credentials Secret {ns}/{name} does not exist"))),
                Err(e) => Err(missing(format!("reading the credentials Secret {ns}/{name}: {e}"))),
            }
        }
    };
    let key = |data: &BTreeMap<String, String>, secret: &str, key: &str| {
        data.get(key).cloned().ok_or_else(|| Checked {
            ready: false,
            reason: "SecretMissing",
            message: format!("the credentials Secret {ns}/{secret} has no key {key:?}"),
        })
    };
    match (&spec.s3, &spec.gcs, &spec.azure) {
        (Some(s), _, _) => {
            let data = secret_of(&s.credentials_secret.name).await?;
            let name = &s.credentials_secret.name;
            Ok(BackendSpec::S3 {
                bucket: s.bucket.clone(),
                prefix: s.prefix.clone().unwrap_or_default(),
                endpoint: s.endpoint.clone(),
                region: s.region.clone(),
                access_key_id: Some(key(&data, name, "accessKeyId")?),
                secret_access_key: Some(key(&data, name, "secretAccessKey")?),
                session_token: None,
                virtual_hosted_style: !s.path_style.unwrap_or(s.endpoint.is_some()),
                server_side_encryption: s
                    .server_side_encryption
                    .as_ref()
                    .map(|e| fs_core::blockstore::Sse { kms_key_id: e.kms_key_id.clone() }),
            })
        }
        (_, Some(g), _) => {
            let data = secret_of(&g.credentials_secret.name).await?;
            Ok(BackendSpec::Gcs {
                bucket: g.bucket.clone(),
                prefix: g.prefix.clone().unwrap_or_default(),
                endpoint: g.endpoint.clone(),
                service_account_key: Some(key(&data, &g.credentials_secret.name, "serviceAccount.json")?),
            })
        }
        (_, _, Some(a)) => {
            let data = secret_of(&a.credentials_secret.name).await?;
            Ok(BackendSpec::Azure {
                account: a.account.clone(),
                container: a.container.clone(),
                prefix: a.prefix.clone().unwrap_or_default(),
                endpoint: a.endpoint.clone(),
                access_key: Some(key(&data, &a.credentials_secret.name, "accountKey")?),
            })
        }
        _ => Err(Checked { ready: false, reason: "InvalidSpec", message: "no backend: give s3, gcs or azure".into() }),
    }
}

/// A Secret's values as text (data, then stringData).
pub fn secret_data(s: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in s.data.iter().flatten() {
        out.insert(k.clone(), String::from_utf8_lossy(&v.0).trim_end_matches('\n').to_string());
    }
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}
