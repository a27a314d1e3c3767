//! One logged-in session on one token: loading the module, finding the token
//! by label or serial, logging in (with retries for start-up races), finding
//! keys, and releasing everything on drop. Also the mapping of PKCS#11 errors
//! to [`BackendError`] variants, by return value, never by message text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;

use super::uri::Pkcs11Uri;
use super::KIND;
use crate::backend::BackendError;
use crate::secret::Pin;

/// How many times start-up (initialize, open session, login) is attempted
/// when it fails in a way that concurrent start-ups cause.
const START_ATTEMPTS: u32 = 8;
/// How many times a token that is not found is looked for again: SoftHSM
/// skips a token whose files another process is rewriting, so "not found"
/// can be transient too; but a token that is really absent should be
/// reported quickly (these attempts wait 0.3–0.5 s in total).
const NOT_FOUND_ATTEMPTS: u32 = 6;

/// Whether the session may change the token (only `create-key` needs to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read-only session.
    ReadOnly,
    /// Read-write session.
    ReadWrite,
}

/// What a mechanism is needed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Usage {
    /// `C_Encrypt`.
    Encrypt,
    /// `C_Decrypt`.
    Decrypt,
    /// `C_GenerateKey` or `C_GenerateKeyPair`.
    Generate,
}

impl Usage {
    fn as_str(self) -> &'static str {
        match self {
            Self::Encrypt => "encryption",
            Self::Decrypt => "decryption",
            Self::Generate => "key generation",
        }
    }
}

/// Where the PIN comes from, resolved lazily: a prompt is only shown once the
/// token is known to exist.
pub(crate) enum PinSupply<'a> {
    /// Already read (from a file).
    Ready(Pin),
    /// Ask this callback with the token label.
    Prompt(&'a mut dyn FnMut(&str) -> Result<Pin, crate::pin::PinError>),
    /// No PIN: only public objects are visible.
    None,
}

/// A loaded and initialized module. Dropping it finalizes the module
/// (cryptoki does not, and a second initialize in the same process would
/// otherwise fail).
struct Library {
    ctx: Pkcs11,
    /// False when someone else in this process initialized the module: they
    /// finalize it.
    finalize: bool,
}

impl Library {
    fn init(module: &Path, uri: &Pkcs11Uri) -> Result<Self, Failure> {
        let ctx = load(module)?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => Ok(Self {
                ctx,
                finalize: true,
            }),
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(Self {
                ctx,
                finalize: false,
            }),
            Err(e) => Err(classify(&e, module, uri, "initialize")),
        }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        if self.finalize {
            if let Err(e) = self.ctx.clone().finalize() {
                tracing::debug!(error = %e, "C_Finalize failed (ignored)");
            }
        }
    }
}

/// An open session on a token; dropping it closes the session (which logs
/// out), then finalizes the module.
pub(crate) struct Token {
    // Declared before `library`: fields drop in order, and the session must
    // be closed before the module is finalized.
    session: Session,
    library: Library,
    /// The token's label, for messages.
    pub label: String,
    /// The module path, for messages.
    pub module: PathBuf,
    slot: Slot,
    /// Whether the user is logged in.
    pub logged_in: bool,
}

impl Token {
    /// Loads the module named by `uri`, finds its token, opens a session and
    /// logs in with the PIN from `pin`.
    ///
    /// Concurrent start-ups of several processes can fail transiently (SoftHSM
    /// rewrites its token files on login, and a reader can see them half
    /// written); such failures are retried with bounded, jittered backoff
    /// after finalizing, so the library re-reads the token from scratch.
    pub(crate) fn open(
        uri: &Pkcs11Uri,
        access: Access,
        mut pin: PinSupply<'_>,
    ) -> Result<Self, BackendError> {
        let module = module_path(uri)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::open_once(uri, &module, access, &mut pin) {
                Ok(token) => {
                    if attempt > 1 {
                        tracing::info!(attempt, "PKCS#11 start-up succeeded after retrying");
                    }
                    return Ok(token);
                }
                Err(Failure::Transient(e)) if attempt < START_ATTEMPTS => {
                    let delay = backoff(attempt);
                    tracing::debug!(attempt, error = %e, delay_ms = delay.as_millis() as u64, "PKCS#11 start-up failed; retrying");
                    std::thread::sleep(delay);
                }
                Err(Failure::NotFound(e)) if attempt < NOT_FOUND_ATTEMPTS => {
                    let delay = backoff(attempt);
                    tracing::debug!(attempt, error = %e, delay_ms = delay.as_millis() as u64, "PKCS#11 start-up failed; retrying");
                    std::thread::sleep(delay);
                }
                // Still failing after the retries: report what it was.
                Err(Failure::Transient(e) | Failure::NotFound(e) | Failure::Final(e)) => {
                    return Err(e)
                }
            }
        }
    }

    fn open_once(
        uri: &Pkcs11Uri,
        module: &Path,
        access: Access,
        pin: &mut PinSupply<'_>,
    ) -> Result<Self, Failure> {
        let library = Library::init(module, uri)?;
        let (slot, label) = find_token(&library.ctx, uri, module)?;
        let session = match access {
            Access::ReadOnly => library.ctx.open_ro_session(slot),
            Access::ReadWrite => library.ctx.open_rw_session(slot),
        }
        .map_err(|e| classify(&e, module, uri, "open a session on"))?;
        if let PinSupply::Prompt(prompt) = pin {
            let p = prompt(&label).map_err(|e| {
                Failure::Final(BackendError::Config {
                    backend: KIND,
                    reason: format!("no PIN for token {label:?}: {e}"),
                    hint: PIN_HINT.into(),
                })
            })?;
            // Kept: a retry must not prompt again.
            *pin = PinSupply::Ready(p);
        }
        let mut logged_in = false;
        if let PinSupply::Ready(p) = pin {
            match session.login(UserType::User, Some(p)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => logged_in = true,
                Err(e) => return Err(classify(&e, module, uri, "log in to")),
            }
            tracing::debug!(token = %label, "logged in");
        }
        Ok(Token {
            session,
            library,
            label,
            module: module.to_owned(),
            slot,
            logged_in,
        })
    }

    /// The open session.
    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    /// Keys of `class` and `key_type` matching the URI's `object=` and
    /// `id=` (`id`, if given, overrides the URI's).
    pub(crate) fn find(
        &self,
        uri: &Pkcs11Uri,
        class: ObjectClass,
        key_type: KeyType,
        id: Option<&[u8]>,
    ) -> Result<Vec<ObjectHandle>, BackendError> {
        let mut template = vec![Attribute::Class(class), Attribute::KeyType(key_type)];
        if let Some(label) = &uri.object {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = id.or(uri.id.as_deref()) {
            template.push(Attribute::Id(id.to_vec()));
        }
        self.session()
            .find_objects(&template)
            .map_err(|e| self.error(&e, uri, "search"))
    }

    /// Any object with this label, whatever its class (for `create-key`).
    pub(crate) fn find_label(&self, label: &str) -> Result<Vec<ObjectHandle>, BackendError> {
        self.session()
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(|e| self.error_plain(&e, "search"))
    }

    /// An object's `CKA_ID`, empty if it has none.
    pub(crate) fn id_of(&self, object: ObjectHandle) -> Result<Vec<u8>, BackendError> {
        let attrs = self
            .session()
            .get_attributes(object, &[AttributeType::Id])
            .map_err(|e| self.error_plain(&e, "read the id of a key on"))?;
        Ok(attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::Id(id) => Some(id),
                _ => None,
            })
            .unwrap_or_default())
    }

    /// Whether a key's value can leave the token, from its `CKA_SENSITIVE`,
    /// `CKA_EXTRACTABLE` and `CKA_NEVER_EXTRACTABLE` (each `None` when the
    /// token does not report it).
    pub(crate) fn protection(&self, key: ObjectHandle) -> Result<Protection, BackendError> {
        let attrs = self
            .session()
            .get_attributes(
                key,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                ],
            )
            .map_err(|e| self.error_plain(&e, "read the attributes of a key on"))?;
        let mut protection = Protection::default();
        for attr in attrs {
            match attr {
                Attribute::Sensitive(v) => protection.sensitive = Some(v),
                Attribute::Extractable(v) => protection.extractable = Some(v),
                Attribute::NeverExtractable(v) => protection.never_extractable = Some(v),
                _ => {}
            }
        }
        Ok(protection)
    }

    /// Checks the token offers `mechanism` for `usage`, so a missing
    /// mechanism gets a clear message naming it instead of a bare
    /// CKR_MECHANISM_INVALID later.
    pub(crate) fn require_mechanism(
        &self,
        mechanism: MechanismType,
        name: &str,
        usage: Usage,
    ) -> Result<(), BackendError> {
        let unavailable = || BackendError::Unavailable {
            backend: KIND,
            reason: format!(
                "token {:?} does not support {name} {}",
                self.label,
                usage.as_str()
            ),
            hint: "use a key type this token supports (see hsm/profiles/)".into(),
        };
        // get_mechanism_info answers CKR_MECHANISM_INVALID for a mechanism the
        // token lacks. (get_mechanism_list would also work, but cryptoki logs
        // an error for every vendor mechanism it does not know.)
        let info = match self.library.ctx.get_mechanism_info(self.slot, mechanism) {
            Ok(info) => info,
            Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => return Err(unavailable()),
            Err(e) => return Err(self.error_plain(&e, "query a mechanism of")),
        };
        let ok = match usage {
            Usage::Encrypt => info.encrypt(),
            Usage::Decrypt => info.decrypt(),
            Usage::Generate => info.generate() || info.generate_key_pair(),
        };
        if ok {
            Ok(())
        } else {
            Err(unavailable())
        }
    }

    /// Maps an error during an operation on this token.
    pub(crate) fn error(&self, e: &CkError, uri: &Pkcs11Uri, doing: &str) -> BackendError {
        classify(e, &self.module, uri, doing).into_error()
    }

    fn error_plain(&self, e: &CkError, doing: &str) -> BackendError {
        let uri = Pkcs11Uri {
            token: Some(self.label.clone()),
            ..Pkcs11Uri::default()
        };
        self.error(e, &uri, doing)
    }
}

/// A key's export attributes, as the token reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Protection {
    /// `CKA_SENSITIVE`: the value cannot be read in clear.
    pub sensitive: Option<bool>,
    /// `CKA_EXTRACTABLE`: the value can be wrapped out of the token.
    pub extractable: Option<bool>,
    /// `CKA_NEVER_EXTRACTABLE`: it was never extractable (so no copy was
    /// ever exported).
    pub never_extractable: Option<bool>,
}

impl Protection {
    /// Why the key's value could be, or could have been, copied out of the
    /// token (a predicate: "is extractable …"); `None` when it is sensitive and non-extractable (and, if the
    /// token says, never was extractable).
    pub(crate) fn weakness(&self) -> Option<&'static str> {
        if self.sensitive != Some(true) {
            Some("is not sensitive (CKA_SENSITIVE is not true), so its value can be read")
        } else if self.extractable != Some(false) {
            Some("is extractable (CKA_EXTRACTABLE is not false), so it can be exported")
        } else if self.never_extractable == Some(false) {
            Some("was extractable once (CKA_NEVER_EXTRACTABLE is false), so copies may exist outside the token")
        } else {
            None
        }
    }
}

/// The hint for "no PIN".
pub(crate) const PIN_HINT: &str =
    "add pin-source=file:PATH to the URI, pass --pkcs11-pin-source file:PATH, or run on a terminal";

/// A start-up failure: worth retrying, or not.
enum Failure {
    /// What racing start-ups cause: retry.
    Transient(BackendError),
    /// No matching token: retry briefly (see [`NOT_FOUND_ATTEMPTS`]).
    NotFound(BackendError),
    /// Retrying cannot help.
    Final(BackendError),
}

impl Failure {
    fn into_error(self) -> BackendError {
        match self {
            Self::Transient(e) | Self::NotFound(e) | Self::Final(e) => e,
        }
    }
}

fn module_path(uri: &Pkcs11Uri) -> Result<PathBuf, BackendError> {
    uri.module_path.clone().ok_or_else(|| BackendError::Config {
        backend: KIND,
        reason: format!("the URI for {} has no module-path", uri.describe()),
        hint: "add ?module-path=/path/to/pkcs11-module.so to the URI, e.g. /usr/lib/softhsm/libsofthsm2.so (see hsm/profiles/)".into(),
    })
}

fn load(module: &Path) -> Result<Pkcs11, Failure> {
    Pkcs11::new(module).map_err(|e| {
        let reason = match &e {
            CkError::LibraryLoading(_) => {
                format!("cannot load PKCS#11 module {}", module.display())
            }
            CkError::MissingSymbol(symbol) => format!(
                "{} is not a PKCS#11 module (it has no {symbol})",
                module.display()
            ),
            other => format!("cannot load PKCS#11 module {}: {other}", module.display()),
        };
        tracing::debug!(error = %e, module = %module.display(), "loading the PKCS#11 module failed");
        Failure::Final(BackendError::Unavailable {
            backend: KIND,
            reason,
            hint: "check module-path in the URI names the vendor's PKCS#11 library and that it is installed (see hsm/profiles/)".into(),
        })
    })
}

/// Finds the one token matching the URI's token attributes.
fn find_token(ctx: &Pkcs11, uri: &Pkcs11Uri, module: &Path) -> Result<(Slot, String), Failure> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| classify(&e, module, uri, "list the tokens of"))?;
    let mut present = Vec::new();
    let mut found = Vec::new();
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| classify(&e, module, uri, "read token information from"))?;
        let label = info.label().trim_end().to_owned();
        let serial = info.serial_number().trim_end();
        let matches = uri.token.as_deref().is_none_or(|t| t == label)
            && uri.serial.as_deref().is_none_or(|s| s == serial)
            && uri
                .manufacturer
                .as_deref()
                .is_none_or(|m| m == info.manufacturer_id().trim_end())
            && uri
                .model
                .as_deref()
                .is_none_or(|m| m == info.model().trim_end());
        // Uninitialized slots (SoftHSM's spare one) have an empty label.
        if info.token_initialized() {
            present.push(format!("{label:?} (serial {serial})"));
            if matches {
                found.push((slot, label));
            }
        }
    }
    match found.len() {
        1 => {
            // Invariant: len() == 1.
            let (slot, label) = found.pop().expect("one match");
            tracing::debug!(token = %label, "token found");
            Ok((slot, label))
        }
        0 => Err(Failure::NotFound(BackendError::Unavailable {
            backend: KIND,
            reason: format!(
                "no token matching {} in {} (tokens present: {})",
                token_selector(uri),
                module.display(),
                if present.is_empty() {
                    "none".into()
                } else {
                    present.join(", ")
                }
            ),
            hint: "check token= or serial= in the URI, and that the token belongs to this user"
                .into(),
        })),
        n => Err(Failure::Final(BackendError::Config {
            backend: KIND,
            reason: format!(
                "{n} tokens match {} in {}",
                token_selector(uri),
                module.display()
            ),
            hint: "add serial= to the URI to name one token".into(),
        })),
    }
}

fn token_selector(uri: &Pkcs11Uri) -> String {
    let mut parts = Vec::new();
    if let Some(t) = &uri.token {
        parts.push(format!("token={t:?}"));
    }
    if let Some(s) = &uri.serial {
        parts.push(format!("serial={s:?}"));
    }
    if let Some(m) = &uri.manufacturer {
        parts.push(format!("manufacturer={m:?}"));
    }
    if let Some(m) = &uri.model {
        parts.push(format!("model={m:?}"));
    }
    if parts.is_empty() {
        "any token".into()
    } else {
        parts.join(" ")
    }
}

/// Sorts a PKCS#11 error into a [`BackendError`] by its return value and the
/// call that failed, and says whether a start-up retry could help.
fn classify(e: &CkError, module: &Path, uri: &Pkcs11Uri, doing: &str) -> Failure {
    let token = uri
        .token
        .as_deref()
        .map(|t| format!("token {t:?}"))
        .unwrap_or_else(|| "the token".into());
    let what = format!("{doing} {token}");
    tracing::debug!(error = %e, %what, "PKCS#11 call failed");
    let CkError::Pkcs11(rv, function) = e else {
        return Failure::Final(unexpected(module, e));
    };
    let function = *function;
    match rv {
        RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange => {
            Failure::Final(BackendError::Refused {
                backend: KIND,
                reason: format!("wrong PIN for {token}"),
                hint: "check the PIN file (a token may lock after repeated wrong PINs)".into(),
            })
        }
        RvError::PinLocked | RvError::PinExpired => Failure::Final(BackendError::Refused {
            backend: KIND,
            reason: format!("the user PIN of {token} is locked or expired"),
            hint: "unlock or reset the PIN with the token's SO tools".into(),
        }),
        RvError::UserPinNotInitialized => {
            let error = BackendError::Config {
                backend: KIND,
                reason: format!("{token} has no user PIN set"),
                hint: "initialize the user PIN (e.g. softhsm2-util --init-token or pkcs11-tool --init-pin)".into(),
            };
            // SoftHSM 2.6 also answers this from C_Login when it reads token
            // flags that a concurrent login is rewriting (seen about once in
            // 100 runs of 8 parallel unseals): retried like the other
            // start-up races, and reported as it is if it persists.
            if matches!(function, Function::Login) {
                Failure::Transient(error)
            } else {
                Failure::Final(error)
            }
        }
        RvError::SessionCount
        | RvError::DeviceMemory
        | RvError::HostMemory
        | RvError::FunctionCanceled
        | RvError::CantLock => Failure::Final(BackendError::Busy {
            backend: KIND,
            reason: format!("cannot {what}: the token is busy ({rv:?})"),
            hint: "retry later; too many sessions may be open".into(),
        }),
        // A module that cannot start (SoftHSM: SOFTHSM2_CONF or its token
        // directory missing or not ours). Not a start-up race: those show up
        // after initialize, so this is reported at once.
        RvError::GeneralError | RvError::FunctionFailed | RvError::DeviceError
            if matches!(function, Function::Initialize) =>
        {
            Failure::Final(BackendError::Unavailable {
                backend: KIND,
                reason: format!(
                    "PKCS#11 module {} failed to initialize ({rv:?})",
                    module.display()
                ),
                hint: "check the module's configuration (for SoftHSM: SOFTHSM2_CONF and its token directory, owned by this user)".into(),
            })
        }
        // The failures concurrent start-ups cause (measured on SoftHSM 2.6:
        // C_GetTokenInfo and C_Login fail with CKR_GENERAL_ERROR while another
        // process rewrites the token files): retried.
        RvError::GeneralError
        | RvError::FunctionFailed
        | RvError::TokenNotRecognized
        | RvError::TokenNotPresent
        | RvError::DeviceError
            if matches!(
                function,
                Function::GetSlotList
                    | Function::GetTokenInfo
                    | Function::OpenSession
                    | Function::Login
            ) =>
        {
            Failure::Transient(BackendError::Unavailable {
                backend: KIND,
                reason: format!("cannot {what} (C_{function:?}: {rv:?})"),
                hint: "retry; if it persists, check the token".into(),
            })
        }
        RvError::DeviceRemoved
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::DeviceError
        | RvError::SlotIdInvalid => Failure::Final(BackendError::Unavailable {
            backend: KIND,
            reason: format!("cannot {what}: the token is gone or failing ({rv:?})"),
            hint: "check the HSM is connected and working".into(),
        }),
        RvError::MechanismInvalid => Failure::Final(BackendError::Unavailable {
            backend: KIND,
            reason: format!("cannot {what}: mechanism not supported (C_{function:?})"),
            hint: "use a key type this token supports (see hsm/profiles/)".into(),
        }),
        _ => Failure::Final(BackendError::Unavailable {
            backend: KIND,
            reason: format!("cannot {what}: C_{function:?} failed ({rv:?})"),
            hint: "run with -vv for details".into(),
        }),
    }
}

fn unexpected(module: &Path, e: &CkError) -> BackendError {
    BackendError::Unavailable {
        backend: KIND,
        reason: format!("PKCS#11 module {}: {e}", module.display()),
        hint: "run with -vv for details".into(),
    }
}

/// 10, 20, 40 … ms, capped at 320 ms, plus up to 50% jitter so racing
/// processes spread out; 8 attempts wait at most ~1.9 s in total.
fn backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(5);
    let mut byte = [0u8; 1];
    // Jitter is a nicety: without randomness, retry without it.
    let jitter = match getrandom::getrandom(&mut byte) {
        Ok(()) => base * u64::from(byte[0]) / 512,
        Err(_) => 0,
    };
    Duration::from_millis(base + jitter)
}

/// The key id for messages.
pub(crate) fn show_id(id: &[u8]) -> String {
    if id.is_empty() {
        "(none)".into()
    } else {
        hex::encode(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sensitive_never_exported_keys_pass() {
        let p = |sensitive, extractable, never_extractable| Protection {
            sensitive,
            extractable,
            never_extractable,
        };
        assert_eq!(p(Some(true), Some(false), Some(true)).weakness(), None);
        // A token that does not report CKA_NEVER_EXTRACTABLE.
        assert_eq!(p(Some(true), Some(false), None).weakness(), None);
        for weak in [
            p(Some(false), Some(false), Some(true)),
            p(None, Some(false), Some(true)),
            p(Some(true), Some(true), Some(false)),
            p(Some(true), None, None),
            p(Some(true), Some(false), Some(false)),
        ] {
            assert!(weak.weakness().is_some(), "{weak:?}");
        }
    }
}
