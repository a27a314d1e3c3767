//! TPM 2.0 backend (placeholder: being built; see issue 3).

use crate::backend::{BackendError, KeyBackend};
use crate::format::Stanza;
use crate::secret::DataKey;

/// Stanza type.
pub const KIND: &str = "tpm2";

/// Default TCTI when neither flag, environment nor config names one.
pub const DEFAULT_DEVICE: &str = "device:/dev/tpmrm0";

/// Seals the data key to a TPM 2.0.
pub struct Tpm2Backend {
    _device: String,
}

impl Tpm2Backend {
    /// For sealing: `pcrs` is `none` or a list like `0,7`; `bank` e.g. `sha256`.
    ///
    /// # Errors
    /// [`BackendError::Config`] if `pcrs` or `bank` do not parse.
    pub fn for_sealing(device: &str, _pcrs: &str, _bank: &str) -> Result<Self, BackendError> {
        Ok(Self {
            _device: device.to_owned(),
        })
    }

    /// For unsealing with the TPM at `device`.
    pub fn for_unsealing(device: &str) -> Self {
        Self {
            _device: device.to_owned(),
        }
    }
}

impl KeyBackend for Tpm2Backend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn wrap(&mut self, _key: &DataKey) -> Result<Stanza, BackendError> {
        Err(BackendError::Unavailable {
            backend: KIND,
            reason: "not built yet".into(),
            hint: String::new(),
        })
    }

    fn unwrap(&mut self, _stanza: &Stanza) -> Result<DataKey, BackendError> {
        Err(BackendError::Unavailable {
            backend: KIND,
            reason: "not built yet".into(),
            hint: String::new(),
        })
    }
}
