//! Small helpers for the control plane's state files (CA keys, token key): they are written
//! atomically (temp file, fsync, rename, fsync of the directory) with the final mode set at
//! creation, so that a crash, a full disk or a read-only mount never leaves a half-written or
//! world-readable key, and a failed write never touches the file it would have replaced.
//! Files made on first start are created exclusively or under the state directory's lock, so two
//! processes starting at once on a fresh directory agree on one key instead of each keeping
//! its own.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes temp files of concurrent writes in one process (tests write in parallel).
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// A sibling of `path` no other write (in this or another process) uses.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp_name))
}

/// Writes and fsyncs `tmp` with `mode`.
fn write_temp(tmp: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    // The mode is applied at creation, so the secret is never readable by others, not even
    // briefly; and again in case a crashed run left a temp file of the same name.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(tmp)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    // Data before the name: otherwise a crash can leave the name pointing at an empty file.
    file.sync_all()
}

/// Writes `bytes` to `path` via a sibling temp file that is renamed into place. On error the temp
/// file is removed and `path` is as it was.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let result = write_temp(&tmp, bytes, mode).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself is durable only once the directory is.
    sync_dir(path)
}

/// Creates `path` with `bytes` unless it exists; returns whether this call created it. The file
/// appears complete or not at all (a hard link to a written, fsynced temp file), and of
/// concurrent callers exactly one wins: `link` fails with AlreadyExists where `rename` would
/// replace. On a filesystem without hard links it falls back to `write_atomic` (last one wins).
pub(crate) fn create_exclusive(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    let tmp = temp_path(path)?;
    let linked = write_temp(&tmp, bytes, mode).and_then(|()| match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) if is_links_unsupported(&e) => fs::rename(&tmp, path).map(|()| true),
        Err(e) => Err(e),
    });
    let _ = fs::remove_file(&tmp);
    let created = linked?;
    sync_dir(path)?;
    Ok(created)
}

fn is_links_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EOPNOTSUPP | libc::EMLINK)
    )
}

/// An exclusive lock on the state directory (flock on the directory itself, so no lock file
/// appears among the state files) for a step that creates several files at once; released on
/// drop. `None` when the filesystem cannot lock (the step then runs unlocked, as before locks).
pub(crate) fn lock_dir(dir: &Path) -> Option<File> {
    let handle = match File::open(dir) {
        Ok(handle) => handle,
        Err(e) => {
            tracing::debug!("cannot open {} to lock it: {e}", dir.display());
            return None;
        }
    };
    match handle.lock() {
        Ok(()) => Some(handle),
        Err(e) => {
            tracing::warn!(
                "cannot lock {} ({e}); creating its files without a lock",
                dir.display()
            );
            None
        }
    }
}

/// fsyncs the directory holding `path`, making a rename or removal in it durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Files created during one multi-file step (a fresh CA): unless `keep` is called, dropping it
/// removes them, so that a step failing halfway (disk full after the first key) leaves the state
/// directory as it found it instead of a key without its certificate, which would be refused at
/// every later start. Only files this step created are listed, never ones that were there.
#[derive(Debug, Default)]
pub(crate) struct CreatedFiles {
    paths: Vec<PathBuf>,
}

impl CreatedFiles {
    /// Writes a file that did not exist (see `write_atomic`) and remembers it.
    pub(crate) fn write_new(&mut self, path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
        write_atomic(path, bytes, mode)?;
        self.paths.push(path.to_owned());
        Ok(())
    }

    /// The step succeeded: the files stay.
    pub(crate) fn keep(mut self) {
        self.paths.clear();
    }
}

impl Drop for CreatedFiles {
    fn drop(&mut self) {
        for path in self.paths.iter().rev() {
            if fs::remove_file(path).is_ok() {
                let _ = sync_dir(path);
            }
        }
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Decodes lower- or upper-case hex; `None` if the text is not hex.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    (text.as_bytes().chunks(2))
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

fn digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00ab10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn failed_write_leaves_no_temp_file_and_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        // A directory at the target: the rename fails after the temp file was written.
        let target = dir.path().join("issuer.key.pem");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"old").unwrap();
        let err = write_atomic(&target, b"new", 0o600).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
        assert_eq!(names(dir.path()), vec!["issuer.key.pem"]);
        assert_eq!(fs::read(target.join("inside")).unwrap(), b"old");
        // A parent that is a file: nothing can be created.
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        let err = write_atomic(&file.join("key"), b"new", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotADirectory);
        assert_eq!(names(dir.path()), vec!["file", "issuer.key.pem"]);
    }

    #[test]
    fn write_atomic_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        write_atomic(&path, b"first, longer content", 0o600).unwrap();
        write_atomic(&path, b"second", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(names(dir.path()), vec!["token.key"]);
    }

    #[test]
    fn created_files_are_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("ca.crt.pem");
        fs::write(&existing, b"root").unwrap();
        {
            let mut step = CreatedFiles::default();
            step.write_new(&dir.path().join("a"), b"1", 0o600).unwrap();
            step.write_new(&dir.path().join("b"), b"2", 0o600).unwrap();
            // Failing here drops `step`.
        }
        assert_eq!(names(dir.path()), vec!["ca.crt.pem"]);
        assert_eq!(fs::read(&existing).unwrap(), b"root");
        let mut step = CreatedFiles::default();
        step.write_new(&dir.path().join("a"), b"1", 0o600).unwrap();
        step.keep();
        assert_eq!(names(dir.path()), vec!["a", "ca.crt.pem"]);
    }

    #[test]
    fn create_exclusive_keeps_the_first_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        assert!(create_exclusive(&path, b"first", 0o600).unwrap());
        assert!(!create_exclusive(&path, b"second", 0o600).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(names(dir.path()), vec!["token.key"]);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn concurrent_exclusive_creates_agree_on_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let winners: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || create_exclusive(path, &[b'a' + i], 0o600).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
        assert_eq!(fs::read(&path).unwrap().len(), 1);
        assert_eq!(names(dir.path()), vec!["token.key"]);
    }

    #[test]
    fn write_atomic_sets_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_atomic(&path, b"x", 0o600).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"x");
    }
}
