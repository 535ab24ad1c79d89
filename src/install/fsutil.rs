//! Atomic file replacement: write beside, fsync, rename, fsync the directory. A reader sees the
//! old file or the new one, never a partial one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::InstallError;

/// The temporary name used beside `path`: hidden and without a CNI extension, so libcni never
/// picks it up.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.egress-guard.tmp"))
}

/// Replaces `path` with `bytes` (mode `mode`) atomically.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let tmp = temp_path(path);
    let write = |source| InstallError::Write {
        path: path.to_path_buf(),
        source,
    };
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode given to open.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write(e));
    }
    sync_dir(path);
    Ok(())
}

/// fsyncs the directory holding `path` so a rename survives a crash (best effort).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Removes `path`; a missing file is fine. Returns whether something was removed.
pub fn remove_if_exists(path: &Path) -> Result<bool, InstallError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_dir(path);
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(InstallError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads `path`, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, InstallError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Mode of an existing file's permission bits, or `default`.
pub fn mode_of(path: &Path, default: u32) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(default)
}

/// Copies `src` to `dst` (mode 0755) atomically, only when the contents differ. Returns whether
/// it wrote.
pub fn install_file(src: &Path, dst: &Path) -> Result<bool, InstallError> {
    let new = std::fs::read(src).map_err(|source| InstallError::Read {
        path: src.to_path_buf(),
        source,
    })?;
    if read_optional(dst)?.as_deref() == Some(&new[..]) && mode_of(dst, 0) & 0o111 != 0 {
        return Ok(false);
    }
    atomic_write(dst, &new, 0o755)?;
    Ok(true)
}
