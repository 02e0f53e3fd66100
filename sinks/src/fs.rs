//! Durable file writes, shared by everything stockflow keeps in files of
//! its own: the webhook registry and cursors, checkpoints, the embedded
//! log's topic metadata.

use std::path::Path;

/// Writes `bytes` to `path` through a synced temporary file and a rename:
/// a crash leaves the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        // The rename itself is durable once the directory is synced.
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}
