//! The pod-template runner: there is no kubelet in the test world, so a workload's pod template
//! (a Deployment's or a StatefulSet's, read back from the apiserver) is run as a process the way a
//! kubelet would run its first container: its command, arguments and environment; its Secret
//! volumes as files and its emptyDirs and PVCs as directories, their mount paths rewritten in the
//! arguments; its container ports as free ports of this machine (arguments listening on
//! `0.0.0.0:PORT` are rewritten); its ServiceAccount's token where a pod would have it (as a
//! kubeconfig). So what is tested is the template the operator or the chart wrote, not a copy.
//!
//! A StatefulSet's PVC directory is keyed by the PVC object's uid, which the StatefulSet
//! controller makes: a retained PVC keeps its data for the next pod, a deleted and re-made one
//! starts empty, as a real volume would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use crate::kube::ControlPlane;
use crate::service::{Service, free_port, http_client, http_ok};
use crate::{HarnessError, Result};

/// A pod template running as a process.
pub struct Pod {
    /// The pod's name (`<workload>-0`), with `.<container>` when a container was chosen.
    pub name: String,
    /// Container port → the port of this machine it listens on.
    pub ports: BTreeMap<i32, u16>,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: PathBuf,
    ready_port: Option<(u16, String)>,
    service: Option<Service>,
}

/// How to run a workload's pod.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Container port → the port of this machine to use (others get a free one).
    pub ports: &'a [(i32, u16)],
    /// Arguments added after the template's.
    pub extra_args: &'a [&'a str],
    /// The container to run (default: the first). The containers of one pod share its volumes
    /// (an emptyDir is one directory for all of them), as in a pod.
    pub container: Option<&'a str>,
}

fn kubectl_json(cp: &ControlPlane, args: &[&str]) -> Result<Value> {
    let out = cp.kubectl(args)?;
    if !out.status.success() {
        return Err(HarnessError::setup(
            format!("kubectl {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| HarnessError::setup(format!("kubectl {}", args.join(" ")), e))
}

/// The program a container's `command[0]` names, built in this workspace; or, for a container
/// without a command, its image's entry point: the community sidecars, built by the installer
/// at the version the image's tag names.
fn program_of(name: &str) -> Result<PathBuf> {
    match name {
        "stratusfs" => crate::stratusfs::binary(),
        "stratusfs-operator" => crate::stratusfs::operator_binary(),
        "stratusfs-csi" => crate::stratusfs::csi_binary(),
        other => Err(HarnessError::setup("running a pod template", format!("no program {other:?} here"))),
    }
}

/// The sidecar an image is (`registry.k8s.io/sig-storage/csi-provisioner:v6.4.0`): the tool of
/// that name, which must be pinned at the image's tag.
fn sidecar_of(image: &str) -> Result<PathBuf> {
    let fail = |m: String| HarnessError::setup("running a pod template", m);
    let (path, tag) = image.rsplit_once(':').ok_or_else(|| fail(format!("image {image:?} has no tag")))?;
    let name = path.rsplit('/').next().unwrap_or(path);
    let pinned = crate::tools::version(name)?;
    if pinned != tag {
        return Err(fail(format!(
            "image {image}: e2e/tools/versions pins {name} {pinned}; make the chart and the pin agree"
        )));
    }
    crate::tools::binary(name)
}

/// Kubernetes' `$(VAR)` references in a container's arguments, from its environment.
fn expand(arg: &str, env: &[(String, String)]) -> String {
    let mut out = arg.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

impl Pod {
    /// Runs the pod of `workload` (`deployment/NAME` or `statefulset/NAME`) in `ns`, its files
    /// under `root`; waits for its readiness probe when it has one.
    pub async fn run(cp: &ControlPlane, ns: &str, workload: &str, root: &Path, o: RunOptions<'_>) -> Result<Pod> {
        let w = kubectl_json(cp, &["get", workload, "-n", ns, "-o", "json"])?;
        let what = format!("running the pod of {ns}/{workload}");
        let fail = |m: String| HarnessError::setup(what.clone(), m);
        let name = format!("{}-0", w["metadata"]["name"].as_str().unwrap_or_default());
        let spec = &w["spec"]["template"]["spec"];
        let c = match o.container {
            None => &spec["containers"][0],
            Some(want) => spec["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == want)
                .ok_or_else(|| fail(format!("the pod has no container {want}")))?,
        };
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).map_err(HarnessError::io(format!("creating {}", dir.display())))?;

        // Volumes: where each pod volume is on this machine.
        let mut volumes: BTreeMap<String, PathBuf> = BTreeMap::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().unwrap_or_default().to_string();
            let path = dir.join("volumes").join(&vname);
            std::fs::create_dir_all(&path).map_err(HarnessError::io(format!("creating {}", path.display())))?;
            if let Some(secret) = v["secret"]["secretName"].as_str() {
                let s = kubectl_json(cp, &["get", "secret", secret, "-n", ns, "-o", "json"])?;
                for (key, value) in s["data"].as_object().into_iter().flatten() {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(value.as_str().unwrap_or_default())
                        .map_err(|e| fail(format!("Secret {secret} key {key}: {e}")))?;
                    let file = path.join(key);
                    std::fs::write(&file, bytes).map_err(HarnessError::io(format!("writing {}", file.display())))?;
                }
            } else if v.get("emptyDir").is_none() {
                return Err(fail(format!("volume {vname}: only secret and emptyDir volumes are run here")));
            }
            volumes.insert(vname, path);
        }
        for t in w["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten() {
            let claim = format!("{}-{name}", t["metadata"]["name"].as_str().unwrap_or_default());
            let deadline = Instant::now() + Duration::from_secs(30);
            let uid = loop {
                let out = cp.kubectl(&["get", "pvc", &claim, "-n", ns, "-o", "jsonpath={.metadata.uid}"])?;
                let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if out.status.success() && !uid.is_empty() {
                    break uid;
                }
                if Instant::now() > deadline {
                    return Err(fail(format!("the StatefulSet controller made no PVC {claim} within 30 s")));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let path = root.join("pvc").join(uid);
            std::fs::create_dir_all(&path).map_err(HarnessError::io(format!("creating {}", path.display())))?;
            volumes.insert(t["metadata"]["name"].as_str().unwrap_or_default().to_string(), path);
        }
        let mounts: Vec<(String, PathBuf)> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let vname = m["name"].as_str().unwrap_or_default();
                let at = volumes.get(vname).cloned().ok_or_else(|| fail(format!("no volume {vname} to mount")))?;
                Ok((m["mountPath"].as_str().unwrap_or_default().to_string(), at))
            })
            .collect::<Result<_>>()?;

        // Ports.
        let mut ports = BTreeMap::new();
        for p in c["ports"].as_array().into_iter().flatten() {
            let port = p["containerPort"].as_i64().unwrap_or_default() as i32;
            let host = match o.ports.iter().find(|(c, _)| *c == port) {
                Some((_, h)) => *h,
                None => free_port()?,
            };
            ports.insert(port, host);
        }
        let rewrite = |arg: &str| -> String {
            let (flag, value) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (format!("{f}="), v.to_string()),
                _ => (String::new(), arg.to_string()),
            };
            // A path under a volume mount (also as a `unix://` socket address).
            let (scheme, path_value) = match value.strip_prefix("unix://") {
                Some(p) => ("unix://", p.to_string()),
                None => ("", value.clone()),
            };
            for (path, at) in &mounts {
                if path_value == *path || path_value.starts_with(&format!("{path}/")) {
                    return format!("{flag}{scheme}{}{}", at.display(), &path_value[path.len()..]);
                }
            }
            for (port, host) in &ports {
                for any in ["0.0.0.0", "[::]", ""] {
                    if value == format!("{any}:{port}") {
                        return format!("{flag}127.0.0.1:{host}");
                    }
                }
            }
            format!("{flag}{value}")
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
        };
        let command = strings(&c["command"]);
        let (program, sidecar) = match command.first() {
            Some(name) => (program_of(name)?, false),
            None => (sidecar_of(c["image"].as_str().unwrap_or_default())?, true),
        };
        let template_args: Vec<String> = command.iter().skip(1).chain(&strings(&c["args"])).cloned().collect();

        // Environment.
        let mut env = Vec::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let key = e["name"].as_str().unwrap_or_default().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match field {
                    "metadata.name" => name.clone(),
                    "metadata.namespace" => ns.to_string(),
                    "spec.serviceAccountName" => spec["serviceAccountName"].as_str().unwrap_or("default").into(),
                    "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
                    other => return Err(fail(format!("env {key}: fieldRef {other} is not run here"))),
                }
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                let (secret, k) = (r["name"].as_str().unwrap_or_default(), r["key"].as_str().unwrap_or_default());
                let s = kubectl_json(cp, &["get", "secret", secret, "-n", ns, "-o", "json"])?;
                let b = s["data"][k].as_str().ok_or_else(|| fail(format!("env {key}: Secret {secret} has no {k}")))?;
                let b = base64::engine::general_purpose::STANDARD.decode(b).map_err(|e| fail(e.to_string()))?;
                String::from_utf8_lossy(&b).into_owned()
            } else {
                return Err(fail(format!("env {key}: only value, fieldRef and secretKeyRef are run here")));
            };
            env.push((key, value));
        }
        let mut args: Vec<String> = template_args.iter().map(|a| rewrite(&expand(a, &env))).collect();
        args.extend(o.extra_args.iter().map(|a| a.to_string()));
        // The ServiceAccount's token, as a kubeconfig where in-cluster config would be.
        if let Some(sa) = spec["serviceAccountName"].as_str()
            && spec["automountServiceAccountToken"] != false
        {
            let out = cp.kubectl(&["create", "token", sa, "-n", ns])?;
            if !out.status.success() {
                return Err(fail(format!("a token of ServiceAccount {sa}: {}", String::from_utf8_lossy(&out.stderr))));
            }
            let ca = base64::engine::general_purpose::STANDARD.encode(&cp.ca_pem);
            let kubeconfig = dir.join("serviceaccount.kubeconfig");
            let text = format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: e2e, cluster: {{server: '{}', certificate-authority-data: {ca}}}}}]\nusers: [{{name: sa, user: {{token: '{}'}}}}]\ncontexts: [{{name: sa, context: {{cluster: e2e, user: sa, namespace: {ns}}}}}]\ncurrent-context: sa\n",
                cp.server,
                String::from_utf8_lossy(&out.stdout).trim()
            );
            std::fs::write(&kubeconfig, text).map_err(HarnessError::io("writing the ServiceAccount's kubeconfig"))?;
            env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
            if sidecar {
                // client-go's sidecars read in-cluster config unless given a kubeconfig.
                args.push(format!("--kubeconfig={}", kubeconfig.display()));
            }
        }
        let ready_port = c["readinessProbe"]["httpGet"].as_object().and_then(|g| {
            let port = match &g["port"] {
                Value::Number(n) => n.as_i64()? as i32,
                Value::String(s) => {
                    c["ports"].as_array()?.iter().find(|p| p["name"] == *s)?["containerPort"].as_i64()? as i32
                }
                _ => return None,
            };
            Some((*ports.get(&port)?, g["path"].as_str().unwrap_or("/").to_string()))
        });
        let label = match o.container {
            Some(c) => format!("{name}.{c}"),
            None => name,
        };
        let mut pod = Pod { name: label, ports, program, args, env, dir, ready_port, service: None };
        pod.start().await?;
        Ok(pod)
    }

    /// Starts the process (again, after [`Pod::stop`]: the same ports and files, like a pod's
    /// container restarted by its kubelet); waits for the readiness probe.
    pub async fn start(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v)));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut service = Service::spawn(&self.name, cmd, &self.dir)?;
        if let Some((port, path)) = &self.ready_port {
            let (http, url) = (http_client(), format!("http://127.0.0.1:{port}{path}"));
            service.wait_ready(Duration::from_secs(60), || http_ok(&http, &url)).await?;
        }
        self.service = Some(service);
        Ok(())
    }

    /// Kills the process (SIGKILL, like a node that went away).
    pub fn stop(&mut self) {
        self.service = None;
    }

    /// `127.0.0.1:PORT` where container port `port` is reached.
    pub fn address(&self, port: i32) -> String {
        format!("127.0.0.1:{}", self.ports[&port])
    }

    /// The arguments the process was started with (after rewriting).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn service(&self) -> Option<&Service> {
        self.service.as_ref()
    }
}
