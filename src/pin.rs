//! Where a token PIN comes from. The PIN is a secret: it is read into a
//! [`Pin`] and never logged, printed or passed on a command line.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::secret::Pin;

/// A PIN source as written in a PKCS#11 URI (`pin-source=`) or given with
/// `--pkcs11-pin-source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// `file:PATH` — the first line of a file that only its owner can read.
    File(PathBuf),
}

/// Why a PIN could not be obtained. Never contains the PIN.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// Not `file:PATH` (or a bare absolute path).
    #[error("PIN source {0:?} is not supported (use file:/path/to/pin)")]
    BadSource(String),
    /// The PIN file cannot be read.
    #[error("PIN file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read the PIN file.
    #[error("PIN file {path} is readable by group or others (mode {mode:o}; run chmod 600 on it)")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The PIN file is larger than any PIN.
    #[error("PIN file {path} is larger than {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        max: usize,
    },
    /// The PIN file is empty.
    #[error("PIN file {0} is empty")]
    Empty(PathBuf),
    /// No source was given and there is no terminal to ask on.
    #[error("no PIN source (add pin-source=file:PATH to the URI or pass --pkcs11-pin-source, or run on a terminal)")]
    NoSource,
}

impl PinSource {
    /// Parses `file:PATH` (RFC 7512 also allows a URI; only local files are
    /// accepted here, and `file:///abs` is treated as `file:/abs`).
    ///
    /// # Errors
    /// [`PinError::BadSource`].
    pub fn parse(text: &str) -> Result<Self, PinError> {
        let path = text
            .strip_prefix("file://")
            .or_else(|| text.strip_prefix("file:"))
            .or_else(|| text.starts_with('/').then_some(text));
        match path {
            Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
            _ => Err(PinError::BadSource(text.to_owned())),
        }
    }

    /// Reads the PIN.
    ///
    /// # Errors
    /// A [`PinError`].
    pub fn read(&self) -> Result<Pin, PinError> {
        match self {
            Self::File(path) => read_pin_file(path),
        }
    }
}

/// Largest accepted PIN file (PKCS#11 PINs are far shorter).
pub const MAX_PIN_FILE: usize = 4096;

/// Reads a PIN file: refuses group/world-readable files, takes the first line
/// without its line ending.
///
/// The file is opened once and its permissions are checked on the open
/// descriptor, so a file swapped in between the check and the read is not
/// read.
///
/// # Errors
/// A [`PinError`].
pub fn read_pin_file(path: &Path) -> Result<Pin, PinError> {
    let err = |source| PinError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PinError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    // Sized for the limit up front: a growing Vec would leave unwiped copies.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_PIN_FILE + 1));
    (&mut file)
        .take(MAX_PIN_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() > MAX_PIN_FILE {
        return Err(PinError::TooLarge {
            path: path.to_owned(),
            max: MAX_PIN_FILE,
        });
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8",
        ))
    })?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(PinError::Empty(path.to_owned()));
    }
    Ok(Pin::from(line.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::fs;

    #[test]
    fn pin_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        fs::write(&path, "1234\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let source = PinSource::parse(&format!("file:{}", path.display())).unwrap();
        assert_eq!(source.read().unwrap().expose_secret(), "1234");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(source.read(), Err(PinError::TooOpen { .. })));
        assert!(matches!(
            PinSource::parse("env:X"),
            Err(PinError::BadSource(_))
        ));
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(source.read(), Err(PinError::Empty(_))));
        fs::write(&path, vec![b'1'; MAX_PIN_FILE + 1]).unwrap();
        assert!(matches!(source.read(), Err(PinError::TooLarge { .. })));
        fs::write(&path, vec![b'1'; MAX_PIN_FILE]).unwrap();
        assert_eq!(source.read().unwrap().expose_secret().len(), MAX_PIN_FILE);
    }
}
