//! The one atomic file write, shared by everything stockflow writes to files:
//! the webhook registry and cursors, checkpoints, the embedded log's topic
//! metadata, the segments `log repair` rewrites and `export`'s files.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never half of one (see [`AtomicFile`]). Creates the directory if it
/// is missing.
///
/// The temporary file is `.<name>.tmp` beside `path`: hidden, and never a
/// name any reader looks for (every reader of these directories matches a
/// prefix or suffix of its own), so a crash can leave one behind harmlessly;
/// checkpoints prune them. One writer per `path` at a time.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// A file written in steps that appears at its path whole or not at all: it
/// is written as `.<name>.tmp` in the same directory (a rename is atomic
/// only within one file system); [`AtomicFile::commit`] fsyncs it, renames
/// it over the path and fsyncs the directory, so that the rename itself
/// survives a crash. Dropped without a commit (an error on the way), the
/// temporary file is removed and the path keeps what it had.
pub struct AtomicFile {
    file: std::fs::File,
    temporary: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Starts writing what will be `path`; creates its directory if missing.
    pub fn create(path: &Path) -> std::io::Result<AtomicFile> {
        std::fs::create_dir_all(parent(path))?;
        let temporary = temporary_path(path);
        Ok(AtomicFile {
            file: std::fs::File::create(&temporary)?,
            temporary,
            path: path.to_owned(),
            committed: false,
        })
    }

    /// Makes what was written the file at the path.
    pub fn commit(mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        std::fs::rename(&self.temporary, &self.path)?;
        self.committed = true;
        sync_directory(parent(&self.path))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.file.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// The directory `path` is in (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
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

    #[test]
    fn a_file_written_in_steps_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        std::fs::write(&path, b"old").unwrap();
        let mut file = AtomicFile::create(&path).unwrap();
        file.write_all(b"half").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["out.parquet"]);
        let mut file = AtomicFile::create(&path).unwrap();
        file.write_all(b"whole").unwrap();
        file.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert_eq!(names(dir.path()), ["out.parquet"]);
    }
}
