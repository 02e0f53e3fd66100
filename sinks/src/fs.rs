//! The one atomic file write, shared by everything stockflow keeps in files
//! of its own: the webhook registry and cursors, checkpoints, the embedded
//! log's topic metadata and the segments `log repair` rewrites.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never half of one: a temporary file in the same directory (a rename
/// is atomic only within one file system), fsynced, renamed over `path`, and
/// the directory fsynced so that the rename itself survives a crash.
/// Creates the directory if it is missing.
///
/// The temporary file is `.<name>.tmp` beside `path`: hidden, and never a
/// name any reader looks for (every reader of these directories matches a
/// prefix or suffix of its own), so a crash can leave one behind harmlessly;
/// checkpoints prune them. One writer per `path` at a time.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent)?;
    let temporary = temporary_path(path);
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    sync_directory(parent)
}

/// `.<name>.tmp` in `path`'s directory.
fn temporary_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    path.with_file_name(name)
}

/// Fsyncs a directory, which makes the renames in it durable (Unix; other
/// systems cannot open a directory as a file and order renames themselves).
fn sync_directory(dir: &Path) -> std::io::Result<()> {
    if cfg!(unix) {
        std::fs::File::open(dir)?.sync_all()
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(names(&dir.path().join("nested")), ["state.json"]);
    }

    #[test]
    fn files_differing_only_in_extension_do_not_share_a_temporary_file() {
        let path = Path::new("/data/checkpoints/events-000000000001.bin");
        assert_eq!(
            temporary_path(path),
            Path::new("/data/checkpoints/.events-000000000001.bin.tmp")
        );
        assert_ne!(
            temporary_path(Path::new("a.json")),
            temporary_path(Path::new("a.bin"))
        );
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        write_atomically(&path, b"old").unwrap();
        // A directory in the way: the rename over it fails.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), b"x").unwrap();
        assert!(write_atomically(&blocked, b"new").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["blocked", "target"]);
    }
}
