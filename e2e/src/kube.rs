//! A Kubernetes control plane like controller-runtime's envtest, plus kube-controller-manager:
//! etcd, kube-apiserver (TLS from a fresh CA, token authentication, RBAC) and
//! kube-controller-manager (garbage collection, namespace deletion, service accounts).
//!
//! There is no kubelet, scheduler, DNS or kube-proxy: pods are never run here.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tempfile::TempDir;

use crate::certs::TestCa;
use crate::service::{Service, free_port, http_client, http_ok};
use crate::{HarnessError, Result, tools};

pub struct ControlPlane {
    /// `https://127.0.0.1:PORT`
    pub server: String,
    /// A bearer token in group system:masters.
    pub token: String,
    /// A kubeconfig (CA file + token) that kube-rs and kubectl accept.
    pub kubeconfig: PathBuf,
    /// The CA that signed the apiserver's certificate, PEM.
    pub ca_pem: String,
    // Dropped in reverse start order: controller-manager, apiserver, etcd.
    controller_manager: Service,
    apiserver: Service,
    etcd: Service,
    dir: TempDir,
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(HarnessError::io(format!("writing {}", path.display())))
}

impl ControlPlane {
    pub async fn start() -> Result<ControlPlane> {
        let dir = tempfile::Builder::new()
            .prefix("stratusfs-kube-")
            .tempdir()
            .map_err(HarnessError::io("creating the control plane's directory"))?;
        let d = dir.path();

        // etcd
        let (etcd_port, peer_port) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(tools::binary("etcd")?);
        cmd.arg("--data-dir")
            .arg(d.join("etcd"))
            .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--unsafe-no-fsync", "--log-level", "warn"]);
        let mut etcd = Service::spawn("etcd", cmd, d)?;
        let http = http_client();
        let health = format!("{etcd_url}/health");
        etcd.wait_ready(Duration::from_secs(30), || http_ok(&http, &health)).await?;

        // Certificates, service-account key, token file.
        let ca = TestCa::new("stratusfs-e2e-kubernetes-ca")?;
        let serving = ca.issue(
            "kube-apiserver",
            &["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST), "10.0.0.1".parse().expect("an IP literal")],
        )?;
        let sa = rcgen::KeyPair::generate().map_err(|e| HarnessError::setup("service-account key", e))?;
        let token = format!("e2e-admin-{}", uuid::Uuid::new_v4().simple());
        for (name, contents) in [
            ("ca.crt", ca.cert_pem.as_str()),
            ("apiserver.crt", serving.cert_pem.as_str()),
            ("apiserver.key", serving.key_pem.as_str()),
            ("sa.key", &sa.serialize_pem()),
            ("sa.pub", &sa.public_key_pem()),
            ("tokens.csv", &format!("{token},admin,admin,system:masters\n")),
        ] {
            write(&d.join(name), contents)?;
        }

        // kube-apiserver
        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let p = |name: &str| d.join(name).display().to_string();
        let mut cmd = Command::new(tools::binary("kube-apiserver")?);
        cmd.args([
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", p("apiserver-certs")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=Node,RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ]);
        let mut apiserver = Service::spawn("kube-apiserver", cmd, d)?;
        let ca_cert = reqwest::Certificate::from_pem(ca.cert_pem.as_bytes())
            .map_err(|e| HarnessError::setup("reading the generated CA", e))?;
        let https = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([ca_cert])
            .build()
            .map_err(|e| HarnessError::setup("building an HTTPS client for the apiserver", e))?;
        let readyz = format!("{server}/readyz");
        apiserver
            .wait_ready(Duration::from_secs(120), || async {
                let r = https
                    .get(&readyz)
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .map_err(|e| format!("GET {readyz}: {e}"))?;
                if r.status().is_success() { Ok(()) } else { Err(format!("GET {readyz}: {}", r.status())) }
            })
            .await?;

        let kubeconfig = d.join("kubeconfig");
        write(
            &kubeconfig,
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: admin\n    namespace: default\ncurrent-context: e2e\n",
                p("ca.crt")
            ),
        )?;

        // kube-controller-manager
        let kcm_port = free_port()?;
        let mut cmd = Command::new(tools::binary("kube-controller-manager")?);
        cmd.args([
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--authentication-kubeconfig={}", kubeconfig.display()),
            format!("--authorization-kubeconfig={}", kubeconfig.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={kcm_port}"),
            format!("--cert-dir={}", p("kcm-certs")),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            "--use-service-account-credentials=false".into(),
            "--v=1".into(),
        ]);
        let mut controller_manager = Service::spawn("kube-controller-manager", cmd, d)?;
        let insecure = reqwest::Client::builder()
            .no_proxy()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| HarnessError::setup("building an HTTPS client for the controller manager", e))?;
        let healthz = format!("https://127.0.0.1:{kcm_port}/healthz");
        controller_manager.wait_ready(Duration::from_secs(60), || http_ok(&insecure, &healthz)).await?;

        Ok(ControlPlane { server, token, kubeconfig, ca_pem: ca.cert_pem, controller_manager, apiserver, etcd, dir })
    }

    /// A kube-rs client for this control plane, built from its kubeconfig.
    pub async fn client(&self) -> Result<kube::Client> {
        let what = "building a kube client from the e2e kubeconfig";
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).map_err(|e| HarnessError::setup(what, e))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| HarnessError::setup(what, e))?;
        kube::Client::try_from(config).map_err(|e| HarnessError::setup(what, e))
    }

    /// Runs the pinned kubectl against this control plane.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        Command::new(tools::binary("kubectl")?)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .map_err(HarnessError::io(format!("running kubectl {}", args.join(" "))))
    }

    /// The directory holding certificates, kubeconfig and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The services, in start order (for log inspection).
    pub fn services(&self) -> [&Service; 3] {
        [&self.etcd, &self.apiserver, &self.controller_manager]
    }
}
