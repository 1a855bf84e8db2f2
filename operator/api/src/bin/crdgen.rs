//! Writes the CRDs the API types make into `crds/` and the chart (`cargo run -p stratusfs-api --bin
//! crdgen`); a unit test of the crate fails while they differ.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().with_context(|| format!("finding the repository at {}", root.display()))?;
    for dir in stratusfs_api::CRD_DIRS {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, crd) in stratusfs_api::crds() {
            let path = dir.join(file);
            std::fs::write(&path, stratusfs_api::crd_yaml(&crd)?)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
