//! `/etc/sesame/sesame.toml`: defaults for flags. Never holds a secret.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default config location.
pub const DEFAULT_PATH: &str = "/etc/sesame/sesame.toml";

/// The settings file. Every setting is also a flag; flags win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Default TPM TCTI, e.g. `device:/dev/tpmrm0`.
    pub tpm2_device: Option<String>,
    /// Default PCR list for `seal --tpm2` (`none`, `7`, `0,7`).
    pub tpm2_pcrs: Option<String>,
    /// Default PCR bank.
    pub tpm2_pcr_bank: Option<String>,
    /// Default PKCS#11 PIN source (`file:PATH`) for every command: used only
    /// for a URI without its own `pin-source`; `--pkcs11-pin-source` wins
    /// over both. (Unlike the other settings this is a default under the
    /// URI, not under the flag alone.)
    pub pkcs11_pin_source: Option<String>,
    /// Log format: `text` or `json`.
    pub log_format: Option<String>,
    /// Credential rotation period in days, for `status`.
    pub rotation_days: Option<u64>,
}

/// Config problems (exit 78).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file given with `--config` does not exist or cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (the config holds no secrets).
        message: String,
    },
}

impl Config {
    /// Loads `explicit` if given (it must exist), else the default path if it exists.
    ///
    /// # Errors
    /// A [`ConfigError`].
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_owned(),
            None => {
                let p = PathBuf::from(DEFAULT_PATH);
                if !p.exists() {
                    return Ok(Self::default());
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path,
            message: e.message().to_owned(),
        })
    }
}
