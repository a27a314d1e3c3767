//! PKCS#11 backend (placeholder: being built; see issue 2).

use crate::backend::{BackendError, KeyBackend};
use crate::format::Stanza;
use crate::pin::{PinError, PinSource};
use crate::secret::{DataKey, Pin};

/// Stanza type.
pub const KIND: &str = "pkcs11";

/// Asks the user for a token's PIN (the CLI supplies this when on a terminal;
/// the argument is the token label).
pub type PinPrompt = Box<dyn FnMut(&str) -> Result<Pin, PinError>>;

/// Wraps the data key with a key held in a PKCS#11 token.
pub struct Pkcs11Backend {
    _seal_uri: Option<String>,
    _pin_override: Option<PinSource>,
    _pin_prompt: Option<PinPrompt>,
}

impl Pkcs11Backend {
    /// For sealing to the key named by the RFC 7512 `uri`.
    ///
    /// # Errors
    /// [`BackendError::Config`] if the URI does not parse.
    pub fn for_sealing(uri: &str, pin_prompt: Option<PinPrompt>) -> Result<Self, BackendError> {
        Ok(Self {
            _seal_uri: Some(uri.to_owned()),
            _pin_override: None,
            _pin_prompt: pin_prompt,
        })
    }

    /// For unsealing: the URI comes from each stanza; `pin_override` replaces
    /// the stanza's `pin-source`.
    pub fn for_unsealing(pin_override: Option<PinSource>, pin_prompt: Option<PinPrompt>) -> Self {
        Self {
            _seal_uri: None,
            _pin_override: pin_override,
            _pin_prompt: pin_prompt,
        }
    }
}

impl KeyBackend for Pkcs11Backend {
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
