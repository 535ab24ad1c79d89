//! Images made locally because no registry is reachable, each a one-layer OCI image layout
//! packed as a tar for `ctr images import`: the sandbox ("pause") image, a static program from
//! pause.c, and egress-guard's own image, the DaemonSet's, from a statically linked binary
//! with `install/Dockerfile`'s layout (`/egress-guard`, its entrypoint, command and user).
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};

use crate::cri::node::run;

pub const IMAGE: &str = "localhost/egress-guard-cri/pause:1";

/// Stores `path` as a blob of the layout under `oci`; returns (digest, size).
fn blob(oci: &Path, path: &Path) -> Result<(String, u64), String> {
    let p = path.to_str().ok_or("non-utf8 path")?;
    let sum = run("sha256sum", &[p])?;
    let hex = sum
        .split_whitespace()
        .next()
        .ok_or("sha256sum printed nothing")?
        .to_string();
    let size = fs::metadata(path).map_err(|e| e.to_string())?.len();
    fs::copy(path, oci.join("blobs/sha256").join(&hex)).map_err(|e| format!("copy blob: {e}"))?;
    Ok((format!("sha256:{hex}"), size))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), String> {
    fs::write(path, v.to_string()).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Builds the pause image tarball under `work` and returns its path.
pub fn build(work: &Path) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cri/pause.c");
    let rootfs = work.join("rootfs");
    fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
    let s = |p: &Path| p.to_string_lossy().into_owned();
    run(
        "gcc",
        &[
            "-static",
            "-O2",
            "-s",
            "-o",
            &s(&rootfs.join("pause")),
            &s(&src),
        ],
    )?;
    let (tarball, _) = pack(work, &rootfs, &["/pause"], &[], IMAGE, "pause-oci.tar")?;
    Ok(tarball)
}

/// The name `deploy/daemonset.yaml`'s `egress-guard:dev` resolves to in containerd.
pub const EGRESS_GUARD_IMAGE: &str = "docker.io/library/egress-guard:dev";
/// `install/Dockerfile`'s ENTRYPOINT and CMD.
pub const EGRESS_GUARD_ENTRYPOINT: &[&str] = &["/egress-guard"];
pub const EGRESS_GUARD_CMD: &[&str] = &["install"];

/// Packs `binary` (statically linked) as egress-guard's image under `work`: the one file
/// `/egress-guard` (root, mode 0755), entrypoint and command as the Dockerfile's, user 0:0.
/// Returns the tarball's path.
pub fn build_egress_guard(work: &Path, binary: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let rootfs = work.join("rootfs");
    let _ = fs::remove_dir_all(&rootfs);
    fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
    let dest = rootfs.join("egress-guard");
    fs::copy(binary, &dest).map_err(|e| format!("copy {}: {e}", binary.display()))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let (tarball, _) = pack(
        work,
        &rootfs,
        EGRESS_GUARD_ENTRYPOINT,
        EGRESS_GUARD_CMD,
        EGRESS_GUARD_IMAGE,
        "egress-guard-oci.tar",
    )?;
    Ok(tarball)
}

/// Packs the tree `rootfs` as a one-layer OCI image named `image` (with `entrypoint` and
/// `cmd`, run as root) into an image-layout tarball `work/<tarball>` for `ctr images import`;
/// returns it and the layer size.
pub fn pack(
    work: &Path,
    rootfs: &Path,
    entrypoint: &[&str],
    cmd: &[&str],
    image: &str,
    tarball: &str,
) -> Result<(PathBuf, u64), String> {
    let oci = work.join("oci");
    fs::create_dir_all(oci.join("blobs/sha256")).map_err(|e| e.to_string())?;
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let layer = work.join("layer.tar");
    run(
        "tar",
        &[
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--mtime=@0",
            "-C",
            &s(rootfs),
            "-cf",
            &s(&layer),
            ".",
        ],
    )?;
    let (layer_digest, layer_size) = blob(&oci, &layer)?;
    let config = work.join("config.json");
    write_json(
        &config,
        &json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": entrypoint, "Cmd": cmd, "User": "0:0", "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }),
    )?;
    let (config_digest, config_size) = blob(&oci, &config)?;
    let manifest = work.join("manifest.json");
    write_json(
        &manifest,
        &json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer_size}],
        }),
    )?;
    let (manifest_digest, manifest_size) = blob(&oci, &manifest)?;
    let tag = image.rsplit(':').next().unwrap_or("latest");
    write_json(
        &oci.join("index.json"),
        &json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": image,
                                "org.opencontainers.image.ref.name": tag},
            }],
        }),
    )?;
    write_json(
        &oci.join("oci-layout"),
        &json!({"imageLayoutVersion": "1.0.0"}),
    )?;
    let out = work.join(tarball);
    run(
        "tar",
        &[
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-C",
            &s(&oci),
            "-cf",
            &s(&out),
            "oci-layout",
            "index.json",
            "blobs",
        ],
    )?;
    Ok((out, layer_size))
}

/// Imports an image-layout tarball into containerd (namespace k8s.io, native snapshotter).
pub fn import(sock: &Path, tarball: &Path) -> Result<(), String> {
    run(
        "ctr",
        &[
            "-a",
            &sock.to_string_lossy(),
            "-n",
            "k8s.io",
            "images",
            "import",
            "--snapshotter",
            "native",
            "--platform",
            "linux/amd64",
            &tarball.to_string_lossy(),
        ],
    )?;
    Ok(())
}
