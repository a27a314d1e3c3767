//! File I/O with the guarantees the CLI promises: bounded reads, atomic writes
//! (temp file in the same directory, fsync, rename, fsync the directory), and
//! plaintext only on tmpfs/ramfs unless the user says otherwise.

use std::fs::{self, File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, TMPFS_MAGIC};
use nix::unistd::{Gid, Group};

/// I/O failures, each naming the path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The input cannot be opened or read (exit 66).
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The output already exists and `--force` was not given (exit 73).
    #[error("{path}: already exists")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Plaintext would land on persistent storage (exit 73).
    #[error("{path}: not on a tmpfs or ramfs, so the plaintext could outlive a reboot")]
    NotTmpfs {
        /// The file.
        path: PathBuf,
    },
    /// The output cannot be created (exit 73).
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `--group` names no group (a usage problem: exit 64).
    #[error("no group named {0:?}")]
    NoSuchGroup(String),
}

impl IoError {
    /// The file involved, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Read { path, .. }
            | Self::Exists { path }
            | Self::NotTmpfs { path }
            | Self::Write { path, .. } => Some(path),
            Self::NoSuchGroup(_) => None,
        }
    }

    /// The message without the leading path, for callers whose context
    /// already names the file.
    pub fn detail(&self) -> String {
        match self {
            Self::Read { source, .. } | Self::Write { source, .. } => source.to_string(),
            Self::Exists { .. } => "already exists".into(),
            Self::NotTmpfs { .. } => {
                "not on a tmpfs or ramfs, so the plaintext could outlive a reboot".into()
            }
            Self::NoSuchGroup(_) => self.to_string(),
        }
    }
}

/// Reads a whole file, refusing to read more than `limit + 1` bytes so that an
/// oversized (or endless) input is detected without exhausting memory.
///
/// # Errors
/// [`IoError::Read`].
pub fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, IoError> {
    let err = |source| IoError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    Ok(bytes)
}

/// How to create an output file.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Permission bits of the final file.
    pub mode: u32,
    /// Group owner of the final file, if any.
    pub group: Option<Gid>,
    /// Replace an existing file (atomically).
    pub force: bool,
    /// Allow a destination that is not tmpfs/ramfs.
    pub allow_persistent: bool,
}

/// Resolves a group name (or a numeric gid) for `--group`.
///
/// # Errors
/// [`IoError::NoSuchGroup`].
pub fn lookup_group(name: &str) -> Result<Gid, IoError> {
    if let Ok(Some(group)) = Group::from_name(name) {
        return Ok(group.gid);
    }
    match name.parse::<u32>() {
        Ok(gid) => Ok(Gid::from_raw(gid)),
        Err(_) => Err(IoError::NoSuchGroup(name.to_owned())),
    }
}

/// True if `dir` is on tmpfs or ramfs (memory only, gone at reboot).
pub fn is_memory_fs(dir: &Path) -> bool {
    statfs(dir)
        .map(|s| {
            // ramfs has no constant in nix; its magic is 0x858458f6 (linux/magic.h).
            let t = s.filesystem_type();
            t == TMPFS_MAGIC || t.0 as u64 == 0x8584_58f6
        })
        .unwrap_or(false)
}

/// The checks [`write_atomic`] makes before writing: the destination must
/// not exist (unless `force`) and must be on tmpfs/ramfs (unless
/// `allow_persistent`). Callers run it early to refuse before touching any
/// hardware.
///
/// # Errors
/// [`IoError::Exists`] or [`IoError::NotTmpfs`].
pub fn check_destination(path: &Path, options: &WriteOptions) -> Result<(), IoError> {
    if !options.allow_persistent && !is_memory_fs(&parent_dir(path)) {
        return Err(IoError::NotTmpfs {
            path: path.to_owned(),
        });
    }
    if !options.force && path.symlink_metadata().is_ok() {
        return Err(IoError::Exists {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// For replacing an existing file in place: its path with symlinks resolved
/// (so that a link stays a link and its target is replaced), and write
/// options that keep its permission bits and group.
///
/// # Errors
/// [`IoError::Read`] if the file cannot be resolved or examined.
pub fn options_to_replace(path: &Path) -> Result<(PathBuf, WriteOptions), IoError> {
    use std::os::unix::fs::MetadataExt as _;
    let err = |source| IoError::Read {
        path: path.to_owned(),
        source,
    };
    let target = fs::canonicalize(path).map_err(err)?;
    let meta = fs::metadata(&target).map_err(err)?;
    // Only set a group when it differs from what a new file would get.
    let group = (meta.gid() != nix::unistd::getegid().as_raw()).then(|| Gid::from_raw(meta.gid()));
    let options = WriteOptions {
        mode: meta.mode() & 0o777,
        group,
        force: true,
        allow_persistent: true,
    };
    Ok((target, options))
}

/// The directory a file is (to be) created in.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` to `path` atomically: a private temp file in the same
/// directory, owner/group/mode set before any byte is written, fsync, rename
/// over (or next to) the destination, fsync of the directory. On any error the
/// temp file is removed and an existing destination is untouched.
///
/// # Errors
/// [`IoError::Exists`], [`IoError::NotTmpfs`] or [`IoError::Write`].
pub fn write_atomic(path: &Path, bytes: &[u8], options: &WriteOptions) -> Result<(), IoError> {
    let werr = |source| IoError::Write {
        path: path.to_owned(),
        source,
    };
    check_destination(path, options)?;
    let dir = parent_dir(path);
    // tempfile creates the file 0600 with O_EXCL and removes it on drop.
    let mut temp = tempfile::Builder::new()
        .prefix(".sesame-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(werr)?;
    if let Some(gid) = options.group {
        std::os::unix::fs::fchown(temp.as_file(), None, Some(gid.as_raw())).map_err(werr)?;
    }
    temp.as_file()
        .set_permissions(Permissions::from_mode(options.mode))
        .map_err(werr)?;
    temp.write_all(bytes).map_err(werr)?;
    temp.as_file().sync_all().map_err(werr)?;
    if options.force {
        temp.persist(path).map_err(|e| werr(e.error))?;
    } else {
        // Fails if something appeared at `path` since the check above.
        temp.persist_noclobber(path).map_err(|e| {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                IoError::Exists {
                    path: path.to_owned(),
                }
            } else {
                werr(e.error)
            }
        })?;
    }
    if let Ok(d) = File::open(&dir) {
        // Best effort: the rename is durable once the directory is synced.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes a file if present (for cleanup paths); errors other than "not
/// found" are returned.
///
/// # Errors
/// The OS error.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> WriteOptions {
        WriteOptions {
            mode: 0o640,
            group: None,
            force: false,
            allow_persistent: true,
        }
    }

    #[test]
    fn atomic_write_refuses_existing_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        write_atomic(&path, b"one", &opts()).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(matches!(
            write_atomic(&path, b"two", &opts()),
            Err(IoError::Exists { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_atomic(
            &path,
            b"two",
            &WriteOptions {
                force: true,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn tmpfs_check() {
        if is_memory_fs(Path::new("/dev/shm")) {
            let dir = tempfile::tempdir_in("/dev/shm").unwrap();
            let strict = WriteOptions {
                allow_persistent: false,
                ..opts()
            };
            write_atomic(&dir.path().join("x"), b"1", &strict).unwrap();
        }
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        if !is_memory_fs(dir.path()) {
            let strict = WriteOptions {
                allow_persistent: false,
                ..opts()
            };
            assert!(matches!(
                write_atomic(&dir.path().join("x"), b"1", &strict),
                Err(IoError::NotTmpfs { .. })
            ));
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn bounded_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![0u8; 100]).unwrap();
        assert_eq!(read_bounded(&path, 10).unwrap().len(), 11);
        assert!(matches!(
            read_bounded(&dir.path().join("missing"), 10),
            Err(IoError::Read { .. })
        ));
    }
}
