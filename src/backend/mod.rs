//! Key backends: hardware that wraps and unwraps the data key.
//!
//! [`KeyBackend`] is the one joint of the design. Each backend lives in its own
//! module and owns one stanza type in the sealed file.

pub mod pkcs11;
pub mod tpm2;

use crate::format::{FormatError, Stanza};
use crate::secret::DataKey;

/// Where backends re-created from an existing file's stanzas find this
/// machine's hardware (see [`sealer_for`]).
pub struct Local<'a> {
    /// The TPM TCTI, e.g. `device:/dev/tpmrm0`.
    pub tpm2_device: &'a str,
    /// Where PKCS#11 PINs come from besides the recorded URIs' `pin-source`.
    pub pkcs11_pins: &'a pkcs11::PinSources,
    /// Makes a PIN prompt for each PKCS#11 backend (on a terminal), or none.
    pub pin_prompt: &'a dyn Fn() -> Option<pkcs11::PinPrompt>,
}

/// A backend that seals a *new* data key the way `stanza` was sealed: same
/// PKCS#11 key (its recorded URI and mechanism), or same TPM and PCR
/// selection (sealed against the PCR values now). Used by `rewrap --keep` and
/// `rotate`. Each backend's own constructor parses its stanza; `wrap` refuses
/// if the hardware found is not the one the stanza records (another TPM,
/// another key behind the URI).
///
/// # Errors
/// [`BackendError::Stanza`] for a malformed stanza;
/// [`BackendError::Unavailable`] for a stanza type this build cannot seal to.
pub fn sealer_for(stanza: &Stanza, local: &Local<'_>) -> Result<Box<dyn KeyBackend>, BackendError> {
    match stanza.kind.as_str() {
        tpm2::KIND => Ok(Box::new(tpm2::Tpm2Backend::for_resealing(
            local.tpm2_device,
            stanza,
        )?)),
        pkcs11::KIND => Ok(Box::new(pkcs11::Pkcs11Backend::for_resealing(
            stanza,
            local.pkcs11_pins.clone(),
            (local.pin_prompt)(),
        )?)),
        other => Err(BackendError::Unavailable {
            backend: "sesame",
            reason: format!(
                "cannot seal to a {other:?} stanza (this sesame seals to {}, {})",
                tpm2::KIND,
                pkcs11::KIND
            ),
            hint: "upgrade sesame, or rewrap without keeping that stanza".into(),
        }),
    }
}

/// A backend that can wrap the data key into a stanza and unwrap it again.
///
/// # Contract
/// - [`KeyBackend::wrap`] returns a stanza of type [`KeyBackend::kind`] holding
///   everything needed to unwrap it later (key names, mechanism and parameters,
///   the wrapped bytes) and **never** the data key, a PIN or any other secret in
///   clear. It must not return until the hardware has produced the wrapping.
/// - [`KeyBackend::unwrap`] is only called with stanzas of its own kind. `Ok`
///   means the hardware released a 32-byte key; the caller still authenticates
///   it by opening the payload, so a wrong key ends as "tampered", never as
///   garbage output. `Err` says why not, classified by [`BackendError`] so the
///   CLI can choose the exit code.
/// - Backends never touch the terminal, never log secrets, and release every
///   hardware resource (sessions, handles, library state) on every path.
pub trait KeyBackend {
    /// The stanza type this backend writes and reads, e.g. `"pkcs11"`.
    fn kind(&self) -> &'static str;

    /// Wraps `key` for this backend.
    ///
    /// # Errors
    /// A [`BackendError`]; nothing has been written anywhere.
    fn wrap(&mut self, key: &DataKey) -> Result<Stanza, BackendError>;

    /// Unwraps the data key from one of this backend's stanzas.
    ///
    /// # Errors
    /// A [`BackendError`] saying why the hardware did not release the key.
    fn unwrap(&mut self, stanza: &Stanza) -> Result<DataKey, BackendError>;
}

/// Why a backend failed. Every variant carries the backend's name, a one-line
/// reason (never a secret) and, where useful, what the user can do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The device, module or token is not there or does not answer (exit 69).
    #[error("{backend}: {reason}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// What is missing.
        reason: String,
        /// What to do.
        hint: String,
    },
    /// A temporary condition worth retrying later (exit 75).
    #[error("{backend}: {reason}")]
    Busy {
        /// Backend name.
        backend: &'static str,
        /// What is busy.
        reason: String,
        /// What to do.
        hint: String,
    },
    /// The hardware refused: changed PCRs, wrong PIN, another TPM, a missing or
    /// different key, lockout (exit 77).
    #[error("{backend}: {reason}")]
    Refused {
        /// Backend name.
        backend: &'static str,
        /// What was refused.
        reason: String,
        /// What to do.
        hint: String,
    },
    /// The hardware refused because the measured boot state (TPM PCRs) is no
    /// longer the one the key was sealed to (exit 77, like [`Self::Refused`]).
    /// `changed` says which PCRs, for status and pre-flight reports.
    #[error("{backend}: {reason}")]
    StateChanged {
        /// Backend name.
        backend: &'static str,
        /// What was refused (names the device and the PCRs).
        reason: String,
        /// Which PCRs changed, e.g. `sha256 PCR 7 changed since sealing`.
        changed: String,
        /// What to do.
        hint: String,
    },
    /// The stanza itself is malformed (exit 65).
    #[error("{backend}: stanza: {source}")]
    Stanza {
        /// Backend name.
        backend: &'static str,
        /// The format problem.
        #[source]
        source: FormatError,
    },
    /// The user's configuration or arguments for this backend are wrong (exit 78).
    #[error("{backend}: {reason}")]
    Config {
        /// Backend name.
        backend: &'static str,
        /// What is wrong.
        reason: String,
        /// What to do.
        hint: String,
    },
    /// Creating something that already exists, e.g. a key label (exit 73).
    #[error("{backend}: {reason}")]
    Exists {
        /// Backend name.
        backend: &'static str,
        /// What exists.
        reason: String,
        /// What to do.
        hint: String,
    },
}

impl BackendError {
    /// The backend that failed.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Unavailable { backend, .. }
            | Self::Busy { backend, .. }
            | Self::Refused { backend, .. }
            | Self::StateChanged { backend, .. }
            | Self::Stanza { backend, .. }
            | Self::Config { backend, .. }
            | Self::Exists { backend, .. } => backend,
        }
    }

    /// What the user can do about it, if anything useful can be said.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Self::Unavailable { hint, .. }
            | Self::Busy { hint, .. }
            | Self::Refused { hint, .. }
            | Self::StateChanged { hint, .. }
            | Self::Config { hint, .. }
            | Self::Exists { hint, .. } => Some(hint.as_str()).filter(|h| !h.is_empty()),
            Self::Stanza { .. } => {
                Some("the sealed file is damaged; restore it from backup or seal again")
            }
        }
    }

    /// Which failure to report when every stanza failed. A temporary failure
    /// comes first: the unit retries on it, and the retry may succeed through
    /// that stanza even if another one was refused for good. Then a refusal by
    /// the hardware, which beats "not reachable".
    pub fn precedence(&self) -> u8 {
        match self {
            Self::Busy { .. } => 6,
            Self::Refused { .. } | Self::StateChanged { .. } => 5,
            Self::Stanza { .. } => 4,
            Self::Config { .. } => 3,
            Self::Exists { .. } => 2,
            Self::Unavailable { .. } => 1,
        }
    }
}
