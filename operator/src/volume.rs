//! The Volume reconciler, first part: the metadata server's children. For a Volume `<vol>` it
//! keeps the installation's CA (`stratusfs-ca` in the operator's namespace), and in the Volume's
//! namespace the Secrets `<vol>-ca` (`ca.crt`), `<vol>-meta-tls` (the server certificate) and
//! `<vol>-admin` (`token`), the Service and StatefulSet `<vol>-meta` (children.rs), all with the
//! Volume as controller owner; a child deleted by hand is made again. Secrets holding something
//! random (a key, a token) are made once and kept. Not yet: the volume on the server, its status
//! beyond Pending, quotas, encryption, deletion.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use stratusfs_api::Volume;
use stratusfs_api::blockstore::BlockStore;
use stratusfs_api::volume::{Phase, VolumeStatus};

use crate::{Ctx, Error, FIELD_MANAGER, certs, children, condition};

/// The Secret holding the installation's CA, in the operator's namespace.
pub const CA_SECRET: &str = "stratusfs-ca";

pub async fn reconcile(vol: Arc<Volume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = vol.namespace().unwrap_or_default();
    let name = vol.name_any();
    let ca = installation_ca(&ctx).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let owned = |name: String, data: BTreeMap<String, ByteString>| Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            namespace: Some(ns.clone()),
            owner_references: vol.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    apply(&secrets, owned(format!("{name}-ca"), BTreeMap::from([("ca.crt".into(), bytes(&ca.cert_pem))]))).await?;
    if secrets.get_opt(&children::tls_secret(&vol)).await?.is_none() {
        let (cert, key) = certs::issue(&ca, &certs::service_names(&children::meta_name(&vol), &ns))
            .map_err(|e| Error::Certificate(e.to_string()))?;
        let data = BTreeMap::from([("tls.crt".into(), bytes(&cert)), ("tls.key".into(), bytes(&key))]);
        apply(&secrets, owned(children::tls_secret(&vol), data)).await?;
    }
    if secrets.get_opt(&children::admin_secret(&vol)).await?.is_none() {
        let token = random_token();
        apply(&secrets, owned(children::admin_secret(&vol), BTreeMap::from([("token".into(), bytes(&token))]))).await?;
    }
    apply(&Api::<Service>::namespaced(ctx.client.clone(), &ns), children::meta_service(&vol)).await?;
    apply(&Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns), children::meta_statefulset(&vol, &ctx.image))
        .await?;

    // Status: the block store's readiness; the metadata server is not reached yet.
    let stores: Api<BlockStore> = Api::namespaced(ctx.client.clone(), &ns);
    let (bs_ok, bs_reason, bs_message) = match stores.get_opt(&vol.spec.block_store).await? {
        None => (false, "NotFound", format!("BlockStore {ns}/{} does not exist", vol.spec.block_store)),
        Some(bs) => match bs.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready")) {
            Some(c) => {
                (c.status == "True", "BlockStoreReady", format!("BlockStore {}: {}", vol.spec.block_store, c.message))
            }
            None => (false, "Checking", format!("BlockStore {} is being checked", vol.spec.block_store)),
        },
    };
    let old = vol.status.clone().unwrap_or_default();
    let generation = vol.meta().generation;
    let endpoint = format!("stratusfs://{}.{ns}.svc:{}/{name}", children::meta_name(&vol), children::GRPC_PORT);
    let waiting = format!("waiting for the metadata server at {}", endpoint.trim_start_matches("stratusfs://"));
    let status = VolumeStatus {
        phase: Some(Phase::Pending),
        conditions: vec![
            condition(
                &old.conditions,
                "BlockStoreReady",
                bs_ok,
                if bs_ok { "Ready" } else { bs_reason },
                &bs_message,
                generation,
            ),
            condition(&old.conditions, "MetadataReady", false, "Starting", &waiting, generation),
            condition(&old.conditions, "Ready", false, "Starting", &waiting, generation),
        ],
        endpoint: Some(endpoint),
        observed_generation: generation,
        ..old.clone()
    };
    if status != old {
        ctx.patch_status(vol.as_ref(), &status).await?;
    }
    ctx.count::<Volume>("not_ready");
    Ok(Action::requeue(Duration::from_secs(30)))
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
