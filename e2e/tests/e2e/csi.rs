//! The CSI driver judged by the CSI community's own suite, csi-sanity (pinned in
//! e2e/tools/versions), against `stratusfs-csi` on a Unix socket. Built so far: the Identity
//! service, so the suite runs its Identity specs; the Controller and Node specs join as those
//! services are built ([8]).

use std::process::Command;
use std::time::Duration;

use e2e::service::Service;

/// csi-sanity's summary counts: (passed, failed).
fn counts(out: &str) -> (u32, u32) {
    let number = |what: &str| {
        out.split('|')
            .find_map(|part| {
                let plain: String = part.chars().filter(|c| c.is_ascii_alphanumeric() || *c == ' ').collect();
                let words: Vec<&str> = plain.split_whitespace().collect();
                let at = words.iter().position(|w| *w == what)?;
                words.get(at.checked_sub(1)?)?.trim_start_matches("1m").parse().ok()
            })
            .unwrap_or(0)
    };
    (number("Passed"), number("Failed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_sanity_passes_the_identity_specs() {
    e2e::init();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let mut cmd = Command::new(e2e::stratusfs::csi_binary().unwrap());
    cmd.arg("--endpoint").arg(format!("unix://{}", socket.display()));
    let mut driver = Service::spawn("stratusfs-csi", cmd, dir.path()).unwrap();
    let s = socket.clone();
    driver
        .wait_ready(Duration::from_secs(30), || {
            let ok = s.exists();
            async move { if ok { Ok(()) } else { Err("no socket yet".to_string()) } }
        })
        .await
        .unwrap();
    let out = Command::new(e2e::tools::binary("csi-sanity").unwrap())
        .arg(format!("--csi.endpoint={}", socket.display()))
        .args(["-ginkgo.focus", "Identity Service", "-ginkgo.no-color"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let (passed, failed) = counts(&text);
    eprintln!("csi-sanity, Identity specs: {passed} passed, {failed} failed");
    assert!(out.status.success() && failed == 0 && passed >= 3, "csi-sanity:\n{text}");
}
