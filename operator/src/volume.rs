//! The Volume reconciler. For a Volume `<vol>` it keeps the installation's CA (`stratusfs-ca` in
//! the operator's namespace), and in the Volume's namespace the Secrets `<vol>-ca` (`ca.crt`),
//! `<vol>-meta-tls` (the server certificate, issued again before it expires) and `<vol>-admin`
//! (`token`), the Service and StatefulSet `<vol>-meta` (children.rs), all with the Volume as
//! controller owner; a child deleted by hand is made again. Secrets holding something random (a
//! key, a token) are made once and kept.
//!
//! Then it calls the metadata server over TLS, verifying it against the CA and the Service's DNS
//! name: creates the volume with its BlockStore's spec and credentials (or finds the one it made),
//! brings quota, retention and credentials on the server in line with the spec, rewraps an
//! encrypted volume's key when its Secret has a `previousSecret`, makes the mount Secrets
//! `<vol>-mount` and `<vol>-mount-ro` (`token`, `ca.crt`, `source`) and reads usage and sessions
//! into the status, every 20 seconds while Ready. A server that has no volume of this name, or
//! one of another uuid, after the Volume had one (`status.volumeId`) is a lost database: a
//! condition says so, and nothing new is created over it.
//!
//! Deleting the Volume (a finalizer): `Retain` keeps the blocks and the metadata PVC, so a Volume
//! of the same name adopts them again; `Delete` deletes the volume's block objects, and the
//! StatefulSet's PVC retention policy deletes the database.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fs_core::admin::{Quota, TokenScope, VolumeSpec as ServerVolumeSpec, VolumeUpdate};
use fs_core::crypto::Secret as EncryptionSecret;
use fs_core::{AdminClient, BackendSpec, ClientTrust};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use stratusfs_api::Volume;
use stratusfs_api::blockstore::BlockStore;
use stratusfs_api::volume::{DeletionPolicy, Phase, Usage, VolumeStatus};

use crate::blockstore::{backend_spec, secret_data};
use crate::{Ctx, Error, FIELD_MANAGER, certs, children, condition, transitions};

/// The Secret holding the installation's CA, in the operator's namespace.
pub const CA_SECRET: &str = "stratusfs-ca";

/// The finalizer that runs a Volume's deletion policy.
pub const FINALIZER: &str = "stratusfs.io/volume";

/// On the server-certificate Secret: when to issue it again (a third of its life before expiry).
const RENEW_AFTER: &str = "stratusfs.io/renew-after";

/// How often each Volume's usage and sessions are read again from its server ([`refresh`]).
const REFRESH: Duration = Duration::from_secs(20);

/// How long one admin call may take before the server counts as not answering.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn reconcile(vol: Arc<Volume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let api: Api<Volume> = Api::namespaced(ctx.client.clone(), &vol.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, vol, |event| async {
        match event {
            FinalizerEvent::Apply(vol) => apply_volume(vol, &ctx).await,
            FinalizerEvent::Cleanup(vol) => cleanup(vol, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(e.to_string()))
}

/// What the metadata server said.
enum Reached {
    /// The TLS admin call with the issued certificate and token succeeded; the volume is there.
    Serving { uuid: String, usage: Usage, sessions: i64, rekey: Option<(bool, &'static str, String)> },
    /// It did not (reason, message); `lost`: the server answers but the Volume's data is not on it.
    Not { reason: &'static str, message: String },
}

async fn apply_volume(vol: Arc<Volume>, ctx: &Ctx) -> Result<Action, Error> {
    let ns = vol.namespace().unwrap_or_default();
    let ca = children_of(&vol, ctx).await?;
    let resized = grow_database(&vol, ctx).await?;

    let stores: Api<BlockStore> = Api::namespaced(ctx.client.clone(), &ns);
    let store = stores.get_opt(&vol.spec.block_store).await?;
    let (bs_ok, bs_reason, bs_message) = match &store {
        None => (false, "NotFound", format!("BlockStore {ns}/{} does not exist", vol.spec.block_store)),
        Some(bs) => match bs.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")) {
            Some(c) => (
                c.status == "True",
                if c.status == "True" { "Ready" } else { "BlockStoreNotReady" },
                format!("BlockStore {}: {}", vol.spec.block_store, c.message),
            ),
            None => (false, "Checking", format!("BlockStore {} is being checked", vol.spec.block_store)),
        },
    };
    let backend = match &store {
        Some(bs) => backend_spec(&ctx.client, &ns, &bs.spec).await.map_err(|c| c.message),
        None => Err(bs_message.clone()),
    };
    let (reached, known_uuid) = on_server(&vol, ctx, &ca.cert_pem, backend).await;

    let old = vol.status.clone().unwrap_or_default();
    let generation = vol.meta().generation;
    let (meta_ok, meta_reason, meta_message) = match &reached {
        Reached::Serving { uuid, .. } => {
            (true, "Serving", format!("the metadata server answered over TLS; volume {uuid}"))
        }
        Reached::Not { reason, message } => (false, *reason, message.clone()),
    };
    let ready = bs_ok && meta_ok;
    let (reason, message) = match (bs_ok, meta_ok) {
        (true, true) => ("Ready", format!("serving at {}", vol.endpoint())),
        (false, _) => (bs_reason, bs_message.clone()),
        (true, false) => (meta_reason, meta_message.clone()),
    };
    let mut conditions = vec![
        condition(&old.conditions, "BlockStoreReady", bs_ok, bs_reason, &bs_message, generation),
        condition(&old.conditions, "MetadataReady", meta_ok, meta_reason, &meta_message, generation),
        condition(&old.conditions, "Ready", ready, reason, &message, generation),
    ];
    let mut status = VolumeStatus {
        endpoint: Some(vol.endpoint()),
        observed_generation: generation,
        conditions: Vec::new(),
        ..old.clone()
    };
    if known_uuid.is_some() {
        status.volume_id = known_uuid;
    }
    match reached {
        Reached::Serving { uuid, usage, sessions, rekey } => {
            status.volume_id = Some(uuid);
            status.usage = Some(usage);
            status.sessions = Some(sessions);
            if let Some((done, reason, message)) = rekey {
                conditions.push(condition(&old.conditions, "Rekeyed", done, reason, &message, generation));
            }
        }
        Reached::Not { .. } => {
            // Kept from before: what a user last saw, with Ready saying it is not current.
            if let Some(c) = old.conditions.iter().find(|c| c.type_ == "Rekeyed") {
                conditions.push(c.clone());
            }
        }
    }
    match &resized {
        Some((ok, reason, message)) => {
            conditions.push(condition(&old.conditions, "StorageResized", *ok, reason, message, generation))
        }
        // Kept: the last resize's outcome stays visible.
        None => conditions.extend(old.conditions.iter().find(|c| c.type_ == "StorageResized").cloned()),
    }
    status.phase = Some(match (ready, &status.volume_id) {
        (true, _) => Phase::Ready,
        (false, Some(_)) => Phase::Degraded,
        (false, None) => Phase::Pending,
    });
    status.conditions = conditions;
    if status != old {
        ctx.patch_status(vol.as_ref(), &status).await?;
        let ready_now = status.conditions.iter().find(|c| c.type_ == "Ready").expect("written above");
        if transitions(&old.conditions, ready_now) {
            ctx.event(vol.as_ref(), ready, reason, &message).await;
            tracing::info!(volume = %vol.name_any(), namespace = %ns, ready, reason, "{message}");
        }
    }
    ctx.count::<Volume>(if ready { "ready" } else { "not_ready" });
    // Ready: watches and [`refresh`] bring it back when something changes; once an hour anyway
    // (the server certificate's renewal is due long before it expires).
    Ok(Action::requeue(if ready { Duration::from_secs(3600) } else { Duration::from_secs(10) }))
}

/// The CA, the server certificate, the admin token, the Service and the StatefulSet; returns the CA.
async fn children_of(vol: &Volume, ctx: &Ctx) -> Result<certs::Ca, Error> {
    let ns = vol.namespace().unwrap_or_default();
    let ca = installation_ca(ctx).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    apply(&secrets, owned_secret(vol, vol.ca_secret(), [("ca.crt", ca.cert_pem.clone())])).await?;
    let tls = secrets.get_opt(&children::tls_secret(vol)).await?;
    let renew_after = tls.as_ref().and_then(|s| s.annotations().get(RENEW_AFTER)?.parse::<Timestamp>().ok());
    if renew_after.is_none_or(|t| Timestamp::now() >= t) {
        let (cert, key) = certs::issue(&ca, &certs::service_names(&vol.meta_name(), &ns))
            .map_err(|e| Error::Certificate(e.to_string()))?;
        let mut secret = owned_secret(vol, children::tls_secret(vol), [("tls.crt", cert), ("tls.key", key)]);
        let renew = Timestamp::now() + Duration::from_secs(certs::SERVER_DAYS * 2 / 3 * 86_400);
        secret.metadata.annotations = Some(BTreeMap::from([(RENEW_AFTER.to_string(), renew.to_string())]));
        apply(&secrets, secret).await?;
        if tls.is_some() {
            tracing::info!(volume = %vol.name_any(), namespace = %ns, "issued the metadata server's certificate again before it expires");
            ctx.event(vol, true, "CertificateRenewed", "the metadata server's certificate was issued again").await;
        }
    }
    if secrets.get_opt(&vol.admin_secret()).await?.is_none() {
        apply(&secrets, owned_secret(vol, vol.admin_secret(), [("token", random_token())])).await?;
    }
    apply(&Api::<Service>::namespaced(ctx.client.clone(), &ns), children::meta_service(vol)).await?;
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut set = children::meta_statefulset(vol, &ctx.image);
    if let Some(made) = sets.get_opt(&vol.meta_name()).await?
        && let (Some(want), Some(made)) = (set.spec.as_mut(), made.spec)
    {
        // A StatefulSet's volumeClaimTemplates never change: it keeps the ones it was made with,
        // and a larger size goes to the PVC itself (grow_database).
        want.volume_claim_templates = made.volume_claim_templates;
    }
    apply(&sets, set).await?;
    Ok(ca)
}

/// `spec.metadataServer.storage.size` grown: the database's PVC is asked for it (the schema
/// refuses a smaller size). A condition `StorageResized` says whether the apiserver took it; none
/// while the PVC already asks for the size.
async fn grow_database(vol: &Volume, ctx: &Ctx) -> Result<Option<(bool, &'static str, String)>, Error> {
    let ns = vol.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let name = format!("data-{}-0", vol.meta_name());
    let Some(pvc) = claims.get_opt(&name).await? else { return Ok(None) };
    let want = &vol.spec.metadata_server.storage.size.0;
    let has = pvc.spec.and_then(|s| s.resources?.requests?.get("storage").map(|q| q.0.clone())).unwrap_or_default();
    let bytes = |q: &str| stratusfs_api::volume::quantity_bytes(q).unwrap_or(0);
    if bytes(want) <= bytes(&has) {
        return Ok(None);
    }
    let patch = serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"resources": {"requests": {"storage": want}}}
    });
    Ok(Some(match claims.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        Ok(_) => {
            let note = format!("the metadata PVC {name} was asked to grow from {has} to {want}");
            ctx.event(vol, true, "StorageResized", &note).await;
            (true, "Requested", note)
        }
        Err(kube::Error::Api(e)) => {
            (false, "ResizeRefused", format!("growing the metadata PVC {name} from {has} to {want}: {}", e.message))
        }
        Err(e) => return Err(e.into()),
    }))
}

/// A Secret of the Volume's, owned by it.
fn owned_secret<const N: usize>(vol: &Volume, name: String, data: [(&str, String); N]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            namespace: vol.namespace(),
            owner_references: vol.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(data.into_iter().map(|(k, v)| (k.to_string(), ByteString(v.into_bytes()))).collect()),
        ..Default::default()
    }
}

/// A value of a Secret's, by key, if the Secret and the key exist.
async fn secret_value(ctx: &Ctx, ns: &str, name: &str, key: &str) -> Result<Option<String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    Ok(secrets.get_opt(name).await?.and_then(|s| secret_data(&s).remove(key)))
}

/// An admin client of the Volume's metadata server: the one kept from an earlier reconcile
/// (`true`), else a new one dialled at its Service (or where `--service-address` maps it),
/// verified against the CA for the Service's DNS name.
async fn admin_client(vol: &Volume, ctx: &Ctx, ca_pem: &str) -> Result<(AdminClient, bool), Reached> {
    if let Some(c) = ctx.admins.lock().get(&ObjectRef::from_obj(vol)).cloned() {
        return Ok((c, true));
    }
    let ns = vol.namespace().unwrap_or_default();
    let not = |reason, message| Reached::Not { reason, message };
    let token = match secret_value(ctx, &ns, &vol.admin_secret(), "token").await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(not("Starting", format!("the admin token Secret {} is not made yet", vol.admin_secret())));
        }
        Err(e) => return Err(not("Starting", e.to_string())),
    };
    let address = vol.server_address();
    let dial = ctx.service_addresses.get(&address).cloned().unwrap_or_else(|| address.clone());
    let trust =
        ClientTrust { ca_pem: Some(ca_pem.to_string()), server_name: Some(vol.server_host()), ..Default::default() };
    match tokio::time::timeout(CALL_TIMEOUT, AdminClient::connect(&dial, &trust, &token)).await {
        Ok(Ok(c)) => Ok((c, false)),
        Ok(Err(e)) => Err(not("Unreachable", format!("the metadata server at {address} does not answer: {e}"))),
        Err(_) => Err(not("Unreachable", format!("the metadata server at {address} did not answer within 5 s"))),
    }
}

/// Everything done through the metadata server's admin calls.
/// The client that succeeded is kept for the next reconcile and for [`refresh`]; a kept one that
/// fails is dropped and a new connection tried once.
/// Also returns the volume's uuid when the server has it (written to the status even when a later
/// step failed, so a lost database is still recognised and a deletion still finds the blocks).
async fn on_server(
    vol: &Volume,
    ctx: &Ctx,
    ca_pem: &str,
    backend: Result<BackendSpec, String>,
) -> (Reached, Option<String>) {
    let key = ObjectRef::from_obj(vol);
    let mut uuid = None;
    for _ in 0..2 {
        let (mut admin, kept) = match admin_client(vol, ctx, ca_pem).await {
            Ok(c) => c,
            Err(r) => return (r, uuid),
        };
        match on_server_inner(vol, ctx, &mut admin, ca_pem, backend.clone(), &mut uuid).await {
            Ok(r) => {
                ctx.admins.lock().insert(key, admin);
                return (r, uuid);
            }
            Err(r) => {
                ctx.admins.lock().remove(&key);
                if !kept {
                    return (r, uuid);
                }
            }
        }
    }
    unreachable!("the second round uses a new connection and returns")
}

/// Whether two block-store specs name the same place (backend, bucket or container, prefix,
/// endpoint, account): they may differ only in credentials.
fn same_place(a: &BackendSpec, b: &BackendSpec) -> bool {
    let place = |s: &BackendSpec| {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            for k in ["access_key_id", "secret_access_key", "session_token", "service_account_key", "access_key"] {
                m.remove(k);
            }
        }
        v
    };
    place(a) == place(b)
}

/// Every [`REFRESH`]: each Volume's usage and sessions read through its kept admin client; a
/// Volume whose figures differ from its status, or whose server does not answer, is sent to be
/// reconciled. Nothing is asked of the apiserver while nothing changes.
pub async fn refresh(
    ctx: Arc<Ctx>,
    volumes: Store<Volume>,
    trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<Volume>>,
) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for vol in volumes.state() {
            let key = ObjectRef::from_obj(vol.as_ref());
            let Some(mut admin) = ctx.admins.lock().get(&key).cloned() else { continue };
            let now = timed(admin.usage(&vol.name_any()))
                .await
                .ok()
                .map(|u| (Usage { bytes: u.bytes as i64, inodes: u.inodes as i64 }, u.sessions.len() as i64));
            let shown = vol.status.as_ref().and_then(|s| Some((s.usage.clone()?, s.sessions?)));
            if (now.is_none() || now != shown) && trigger.unbounded_send(key).is_err() {
                return;
            }
        }
    }
}

async fn on_server_inner(
    vol: &Volume,
    ctx: &Ctx,
    admin: &mut AdminClient,
    ca_pem: &str,
    backend: Result<BackendSpec, String>,
    uuid: &mut Option<String>,
) -> Result<Reached, Reached> {
    let ns = vol.namespace().unwrap_or_default();
    let name = vol.name_any();
    let not = |reason: &'static str, message: String| Reached::Not { reason, message };
    let call = |what: &'static str| {
        move |e: fs_core::ClientError| Reached::Not { reason: "AdminCallFailed", message: format!("{what}: {e}") }
    };
    let known = vol.status.as_ref().and_then(|s| s.volume_id.clone());
    let found = timed(admin.volume(&name)).await.map_err(call("listing the server's volumes"))?;
    let lost = |what: String| {
        not(
            "MetadataLost",
            format!(
                "{what}: the metadata database (PVC data-{}-0) was lost or replaced. Nothing was created over it; \
                 restore that PVC. To start an empty volume instead, delete and re-create this Volume \
                 (under deletionPolicy Delete its old blocks are deleted then; set Retain first to keep them)",
                vol.meta_name()
            ),
        )
    };
    let (bytes, inodes) = vol.spec.quota_limits().map_err(|e| not("InvalidSpec", format!("spec.quota: {e}")))?;
    let quota = Quota { bytes, inodes };
    let retention = vol.spec.retention_secs().map_err(|e| not("InvalidSpec", format!("spec.retention: {e}")))?;
    let secret_of = |key: &'static str| {
        let ns = ns.clone();
        async move {
            let Some(enc) = &vol.spec.encryption else { return Ok(None) };
            let name = &enc.secret_ref.name;
            match secret_value(ctx, &ns, name, key).await {
                Ok(Some(v)) => EncryptionSecret::new(v.into_bytes())
                    .map(Some)
                    .map_err(|e| not("EncryptionSecretInvalid", format!("Secret {ns}/{name} key {key}: {e}"))),
                Ok(None) => Ok(None),
                Err(e) => Err(not("EncryptionSecretMissing", e.to_string())),
            }
        }
    };
    let server = match (found, known) {
        (None, Some(id)) => {
            return Err(lost(format!("the metadata server has no volume {name:?}, but this Volume's was {id}")));
        }
        (Some(v), Some(id)) if v.uuid != id => {
            return Err(lost(format!(
                "the metadata server's volume {name:?} is {}, but this Volume's was {id}",
                v.uuid
            )));
        }
        (None, None) => {
            let backend = backend.map_err(|m| not("WaitingForBlockStore", m))?;
            let encryption = match &vol.spec.encryption {
                None => None,
                Some(enc) => Some(secret_of("secret").await?.ok_or_else(|| {
                    not(
                        "EncryptionSecretMissing",
                        format!("the encryption Secret {ns}/{} has no key \"secret\"", enc.secret_ref.name),
                    )
                })?),
            };
            let spec = ServerVolumeSpec {
                name: name.clone(),
                block_store: backend,
                block_size: Some(vol.spec.block_size.bytes()),
                compression: match vol.spec.compression {
                    stratusfs_api::volume::Compression::None => fs_core::admin::Compression::None,
                    stratusfs_api::volume::Compression::Lz4 => fs_core::admin::Compression::Lz4,
                    stratusfs_api::volume::Compression::Zstd => fs_core::admin::Compression::Zstd,
                },
                retention_secs: Some(retention),
                quota,
                encryption,
            };
            // The server checks the store first (a few requests with short timeouts): more than
            // the usual call's 5 s.
            let made = tokio::time::timeout(Duration::from_secs(60), admin.create_volume(&spec))
                .await
                .unwrap_or_else(|_| {
                    Err(fs_core::ClientError::BadInput("the metadata server did not answer within 60 s".into()))
                })
                .map_err(call("creating the volume"))?;
            *uuid = Some(made.uuid.clone());
            tracing::info!(volume = %name, namespace = %ns, uuid = %made.uuid, encrypted = made.encrypted, "created the volume on its metadata server");
            ctx.event(vol, true, "Created", &format!("volume {} created on the metadata server", made.uuid)).await;
            made
        }
        (Some(v), known) => {
            if known.is_none() {
                // Adopting a volume of this name (a Volume re-created under Retain): only one made
                // as this spec would make it.
                let want_encrypted = vol.spec.encryption.is_some();
                let differs = [
                    (v.encrypted != want_encrypted).then(|| {
                        format!(
                            "it is {}encrypted and the spec says {}",
                            if v.encrypted { "" } else { "not " },
                            if want_encrypted { "encrypted" } else { "not encrypted" }
                        )
                    }),
                    (v.block_size != vol.spec.block_size.bytes()).then(|| {
                        format!("its block size is {} bytes, the spec's {}", v.block_size, vol.spec.block_size.bytes())
                    }),
                    backend
                        .as_ref()
                        .ok()
                        .filter(|b| !same_place(b, &v.block_store))
                        .map(|b| format!("its blocks are in {}, the BlockStore's in {}", v.block_store.url(), b.url())),
                ];
                let differs: Vec<String> = differs.into_iter().flatten().collect();
                if !differs.is_empty() {
                    return Err(not(
                        "AdoptionMismatch",
                        format!(
                            "the metadata server has a volume {name:?} ({}) that this Volume's spec does not describe: {}; \
                             nothing was changed. Give the spec it was made with, or move its PVC data-{}-0 away",
                            v.uuid,
                            differs.join("; "),
                            vol.meta_name()
                        ),
                    ));
                }
            }
            *uuid = Some(v.uuid.clone());
            // The spec's quota and retention, and the BlockStore's current credentials: only when
            // the BlockStore still names the same place (a changed bucket or prefix would move the
            // volume away from its blocks).
            let block_store = match backend {
                Ok(b) if b != v.block_store && same_place(&b, &v.block_store) => Some(b),
                Ok(b) if b != v.block_store => {
                    return Err(not(
                        "BlockStoreMoved",
                        format!(
                            "the BlockStore now names {}, but the volume's blocks are in {}; nothing was changed: \
                             point the BlockStore back (only its credentials may change)",
                            b.url(),
                            v.block_store.url()
                        ),
                    ));
                }
                _ => None,
            };
            // New credentials reach the volume record (and every mount through it) only once they
            // passed a probe: a bad rotation leaves the volume on the credentials it has.
            if let Some(b) = &block_store {
                let key = format!("{ns}/{}", vol.spec.block_store);
                let probed = crate::blockstore::probe(ctx, &key, b).await;
                if !probed.ready {
                    return Err(not(
                        "CredentialsRejected",
                        format!(
                            "the BlockStore's new credentials failed their probe ({}); the volume keeps the ones it has",
                            probed.message
                        ),
                    ));
                }
            }
            let update = VolumeUpdate {
                quota: (v.quota != quota).then_some(quota),
                retention_secs: (v.retention_secs != retention).then_some(retention),
                block_store: block_store.clone(),
            };
            if update != VolumeUpdate::default() {
                let v = timed(admin.update_volume(&name, &update)).await.map_err(call("updating the volume"))?;
                let what = [
                    update.quota.map(|q| format!("quota {} bytes, {} inodes", q.bytes, q.inodes)),
                    update.retention_secs.map(|r| format!("retention {r} s")),
                    block_store.map(|_| "the BlockStore's credentials".to_string()),
                ];
                let what = what.into_iter().flatten().collect::<Vec<_>>().join(", ");
                tracing::info!(volume = %name, namespace = %ns, "updated on the metadata server: {what}");
                ctx.event(vol, true, "Updated", &format!("the metadata server now has {what}")).await;
                v
            } else {
                v
            }
        }
    };
    mount_secrets(vol, ctx, admin, ca_pem).await?;

    // Rekeying: while the Secret has a previousSecret, the key is rewrapped under `secret`.
    let rekey = match (server.encrypted, secret_of("previousSecret").await?) {
        (true, Some(previous)) => {
            let current = secret_of("secret").await?.ok_or_else(|| {
                not("EncryptionSecretMissing", "the encryption Secret has previousSecret but no secret".into())
            })?;
            let done = "the volume's key is wrapped under the Secret's secret; previousSecret may be removed";
            if timed(admin.secret_opens(&name, &current)).await.map_err(call("checking the secret"))? {
                Some((true, "Rewrapped", done.to_string()))
            } else {
                match timed(admin.rekey_volume(&name, &previous, &current)).await {
                    Ok(_) => {
                        ctx.event(vol, true, "Rewrapped", done).await;
                        Some((true, "Rewrapped", done.to_string()))
                    }
                    Err(e) => Some((
                        false,
                        "RekeyFailed",
                        format!(
                            "neither secret nor previousSecret of the encryption Secret opens the volume's key: {e}"
                        ),
                    )),
                }
            }
        }
        (true, None) => vol.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Rekeyed")).map(|c| {
            (c.status == "True", if c.status == "True" { "Rewrapped" } else { "RekeyFailed" }, c.message.clone())
        }),
        (false, _) => None,
    };
    let usage = timed(admin.usage(&name)).await.map_err(call("reading usage"))?;
    Ok(Reached::Serving {
        uuid: server.uuid,
        usage: Usage { bytes: usage.bytes as i64, inodes: usage.inodes as i64 },
        sessions: usage.sessions.len() as i64,
        rekey,
    })
}

/// An admin call bounded by [`CALL_TIMEOUT`].
async fn timed<T>(call: impl Future<Output = Result<T, fs_core::ClientError>>) -> Result<T, fs_core::ClientError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(fs_core::ClientError::BadInput("the metadata server did not answer within 5 s".into())))
}

/// `<vol>-mount` and `<vol>-mount-ro`: a read-write and a read-only token of the whole volume,
/// the CA and the source, for mounts (the CSI driver); made once.
async fn mount_secrets(vol: &Volume, ctx: &Ctx, admin: &mut AdminClient, ca_pem: &str) -> Result<(), Reached> {
    let ns = vol.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let kube_err = |e: kube::Error| Reached::Not { reason: "ApiError", message: e.to_string() };
    for (suffix, read_only) in [("mount", false), ("mount-ro", true)] {
        let name = format!("{}-{suffix}", vol.name_any());
        if secrets.get_opt(&name).await.map_err(kube_err)?.is_some() {
            continue;
        }
        let scope = TokenScope { read_only, comment: format!("Kubernetes Secret {ns}/{name}"), ..Default::default() };
        // A Secret made again (deleted by someone): the token of the one it replaces goes, so a
        // copy of the old Secret no longer mounts.
        let failed = |what: &str, e: fs_core::ClientError| Reached::Not {
            reason: "AdminCallFailed",
            message: format!("{what} of {name}: {e}"),
        };
        let old = timed(admin.tokens(&vol.name_any())).await.map_err(|e| failed("listing the tokens", e))?;
        for t in old.iter().filter(|t| t.comment == scope.comment) {
            timed(admin.revoke_token(&vol.name_any(), &t.id)).await.map_err(|e| failed("revoking the old token", e))?;
            tracing::info!(volume = %vol.name_any(), namespace = %ns, secret = %name, token = %t.id, "revoked the token of a replaced mount Secret");
        }
        let token = timed(admin.create_token(&vol.name_any(), &scope)).await.map_err(|e| Reached::Not {
            reason: "AdminCallFailed",
            message: format!("making the token of {name}: {e}"),
        })?;
        let secret = owned_secret(
            vol,
            name,
            [("token", token.token), ("ca.crt", ca_pem.to_string()), ("source", vol.endpoint())],
        );
        apply(&secrets, secret).await.map_err(|e| Reached::Not { reason: "ApiError", message: e.to_string() })?;
    }
    Ok(())
}

/// The deletion policy, run before the Volume goes.
async fn cleanup(vol: Arc<Volume>, ctx: &Ctx) -> Result<Action, Error> {
    ctx.admins.lock().remove(&ObjectRef::from_obj(vol.as_ref()));
    let ns = vol.namespace().unwrap_or_default();
    let name = vol.name_any();
    let mut status = vol.status.clone().unwrap_or_default();
    if status.phase != Some(Phase::Deleting) {
        status.phase = Some(Phase::Deleting);
        ctx.patch_status(vol.as_ref(), &status).await?;
    }
    let uuid = status.volume_id.clone();
    match (vol.spec.deletion_policy, uuid) {
        (DeletionPolicy::Retain, uuid) => {
            let note = format!(
                "deletionPolicy Retain: the blocks of volume {} and the PVC data-{}-0 are kept; a Volume named {name} adopts them",
                uuid.as_deref().unwrap_or("(never created)"),
                vol.meta_name()
            );
            tracing::info!(volume = %name, namespace = %ns, "{note}");
            ctx.event(vol.as_ref(), true, "Retained", &note).await;
        }
        (DeletionPolicy::Delete, None) => {
            tracing::info!(volume = %name, namespace = %ns, "deletionPolicy Delete: the volume was never created; nothing in the store to delete");
        }
        (DeletionPolicy::Delete, Some(uuid)) => {
            let stores: Api<BlockStore> = Api::namespaced(ctx.client.clone(), &ns);
            let held = |why: String| Error::Held(format!("Volume {ns}/{name} (deletionPolicy Delete): {why}"));
            let lost = status.conditions.iter().any(|c| c.type_ == "MetadataReady" && c.reason == "MetadataLost");
            if lost {
                let why = "its metadata database is lost (MetadataLost), so its blocks are the only copy left and \
                           are not deleted: restore the PVC, or set deletionPolicy: Retain to delete the Volume and \
                           keep the blocks";
                let mut held_status = status.clone();
                held_status.conditions.retain(|c| c.type_ != "DeletionHeld");
                let generation = vol.meta().generation;
                held_status.conditions.push(condition(
                    &status.conditions,
                    "DeletionHeld",
                    true,
                    "MetadataLost",
                    why,
                    generation,
                ));
                if held_status != status {
                    ctx.patch_status(vol.as_ref(), &held_status).await?;
                    ctx.event(vol.as_ref(), false, "DeletionHeld", why).await;
                }
                return Err(held(why.to_string()));
            }
            let bs = stores.get_opt(&vol.spec.block_store).await?.ok_or_else(|| {
                held(format!("its BlockStore {} is gone; its blocks cannot be deleted", vol.spec.block_store))
            })?;
            let spec = backend_spec(&ctx.client, &ns, &bs.spec).await.map_err(|c| held(c.message))?;
            // The server first: its sessions end, so no mount uploads into what is being deleted.
            let ca = installation_ca(ctx).await?;
            match admin_client(&vol, ctx, &ca.cert_pem).await {
                Ok((mut admin, _)) => match timed(admin.delete_volume(&name)).await {
                    Ok(()) => {
                        tracing::info!(volume = %name, namespace = %ns, "deleted the volume on its metadata server")
                    }
                    Err(e) => {
                        tracing::warn!(volume = %name, namespace = %ns, error = %e, "deleting the volume on its metadata server failed; its database goes with the PVC")
                    }
                },
                Err(_) => {
                    tracing::info!(volume = %name, namespace = %ns, "the metadata server does not answer; its database goes with the PVC")
                }
            }
            let n = fs_core::delete_volume_objects(&spec, &uuid)
                .await
                .map_err(|e| held(format!("deleting the blocks of volume {uuid}: {e}")))?;
            let note = format!(
                "deletionPolicy Delete: deleted {n} objects of volume {uuid}; the metadata PVC goes with the StatefulSet"
            );
            tracing::info!(volume = %name, namespace = %ns, "{note}");
            ctx.event(vol.as_ref(), true, "Deleted", &note).await;
        }
    }
    Ok(Action::await_change())
}

/// Server-side applies `obj` under the operator's field manager (the same content twice changes
/// nothing: no new resourceVersion).
async fn apply<K>(api: &Api<K>, obj: K) -> Result<(), Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj)).await?;
    Ok(())
}

/// The installation's CA: read from its Secret, made once when there is none.
async fn installation_ca(ctx: &Ctx) -> Result<certs::Ca, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let read = |s: Secret| -> Option<certs::Ca> {
        let d = s.data?;
        let text = |k: &str| d.get(k).map(|b| String::from_utf8_lossy(&b.0).into_owned());
        Some(certs::Ca { cert_pem: text("ca.crt")?, key_pem: text("ca.key")? })
    };
    if let Some(ca) = secrets.get_opt(CA_SECRET).await?.and_then(read) {
        return Ok(ca);
    }
    let ca = certs::new_ca().map_err(|e| Error::Certificate(e.to_string()))?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some(CA_SECRET.into()), ..Default::default() },
        data: Some(BTreeMap::from([
            ("ca.crt".into(), ByteString(ca.cert_pem.clone().into_bytes())),
            ("ca.key".into(), ByteString(ca.key_pem.clone().into_bytes())),
        ])),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(namespace = %ctx.namespace, secret = CA_SECRET, "made the installation's CA");
            Ok(ca)
        }
        // Made meanwhile (another replica a moment ago): that one is the CA.
        Err(kube::Error::Api(s)) if s.code == 409 => secrets
            .get(CA_SECRET)
            .await
            .ok()
            .and_then(read)
            .ok_or_else(|| Error::Certificate("the CA Secret has no ca.crt and ca.key".into())),
        Err(e) => Err(e.into()),
    }
}

/// 32 random bytes, hex: an account token.
fn random_token() -> String {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).expect("the system's random number generator");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_place_may_differ_only_in_credentials() {
        let s3 = |bucket: &str, prefix: &str, key: &str| BackendSpec::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: Some("http://minio:9000".into()),
            region: None,
            access_key_id: Some("id".into()),
            secret_access_key: Some(key.into()),
            session_token: None,
            virtual_hosted_style: false,
            server_side_encryption: None,
        };
        assert!(same_place(&s3("b", "p", "old"), &s3("b", "p", "rotated")));
        assert!(!same_place(&s3("b", "p", "k"), &s3("b", "other", "k")), "another prefix");
        assert!(!same_place(&s3("b", "p", "k"), &s3("c", "p", "k")), "another bucket");
    }
}
