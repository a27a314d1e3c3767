//! One connection to a TPM and the handles it loaded, flushed on drop.
//!
//! swtpm and `/dev/tpm0` have no resource manager: a transient object or
//! session left loaded stays there until reboot and takes one of the (as few
//! as three) slots from the next caller. So every handle this module loads is
//! recorded in [`Tpm`] and flushed by its `Drop`, on every path, in reverse
//! order; the success paths flush explicitly so the count of TPM commands is
//! visible in the code.

use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, Ordering};

use tss_esapi::abstraction::pcr;
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::{CapabilityType, PropertyTag, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Digest, EccPoint, KeyedHashScheme, PcrSelectSize, PcrSelectionListBuilder,
    PcrSlot, Private, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
    SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

use super::policy::{Bank, PcrSelection};
use super::rc::{self, RcClass};
use crate::secret::DataKey;

/// The persistent handle conventionally holding the owner-hierarchy SRK
/// (TCG "TPM v2.0 Provisioning Guidance" §7.8; systemd uses it too).
pub const SRK_HANDLE: u32 = 0x8100_0001;

/// The TPM command (or local step) that failed, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Opening the TCTI.
    Connect,
    /// `TPM2_ReadPublic` of the persistent SRK.
    ReadSrk,
    /// `TPM2_CreatePrimary` of the SRK.
    CreateSrk,
    /// `TPM2_StartAuthSession`.
    StartSession,
    /// Setting session attributes (local to ESAPI).
    SessionAttributes,
    /// `TPM2_Create` of the sealed object.
    Create,
    /// `TPM2_Load` of the sealed object.
    Load,
    /// `TPM2_PolicyPCR`.
    PolicyPcr,
    /// `TPM2_PolicyCommandCode`.
    PolicyCommandCode,
    /// `TPM2_Unseal`.
    Unseal,
    /// `TPM2_PCR_Read`.
    PcrRead,
    /// `TPM2_GetCapability`.
    Capability,
    /// `TPM2_EvictControl`.
    EvictControl,
    /// `TPM2_FlushContext`.
    Flush,
    /// Building a TPM structure from the stanza or a template (local).
    Marshal,
}

impl Step {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connecting",
            Self::ReadSrk => "TPM2_ReadPublic(SRK)",
            Self::CreateSrk => "TPM2_CreatePrimary(SRK)",
            Self::StartSession => "TPM2_StartAuthSession",
            Self::SessionAttributes => "setting session attributes",
            Self::Create => "TPM2_Create",
            Self::Load => "TPM2_Load",
            Self::PolicyPcr => "TPM2_PolicyPCR",
            Self::PolicyCommandCode => "TPM2_PolicyCommandCode",
            Self::Unseal => "TPM2_Unseal",
            Self::PcrRead => "TPM2_PCR_Read",
            Self::Capability => "TPM2_GetCapability",
            Self::EvictControl => "TPM2_EvictControl",
            Self::Flush => "TPM2_FlushContext",
            Self::Marshal => "building TPM structures",
        }
    }
}

/// Why a step failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The TSS or the TPM returned this `TSS2_RC`.
    Rc(u32),
    /// tss-esapi refused locally (bad parameter, malformed structure).
    Wrapper(String),
    /// The TCTI string does not parse.
    BadTcti,
    /// `device:PATH` names a path that does not exist.
    NoDevice(String),
    /// The TPM lacks something the caller asked for (e.g. a PCR bank).
    Unsupported(String),
}

/// A failed TPM step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmError {
    /// What was being done.
    pub step: Step,
    /// Why it failed.
    pub cause: Cause,
}

impl TpmError {
    fn new(step: Step, e: &tss_esapi::Error) -> Self {
        let cause = match rc::raw(e) {
            Some(code) => Cause::Rc(code),
            None => Cause::Wrapper(e.to_string()),
        };
        Self { step, cause }
    }

    /// The response code's class, if the TSS or TPM answered.
    pub fn class(&self) -> Option<RcClass> {
        match self.cause {
            Cause::Rc(code) => Some(rc::classify(code)),
            _ => None,
        }
    }

    /// A one-line description (no secrets: codes and step names only).
    pub fn describe(&self) -> String {
        match &self.cause {
            Cause::Rc(code) => format!("{} failed with TSS2_RC {code:#x}", self.step.name()),
            Cause::Wrapper(why) => format!("{} failed: {why}", self.step.name()),
            Cause::BadTcti => "the TCTI string does not parse".into(),
            Cause::NoDevice(path) => format!("{path} does not exist"),
            Cause::Unsupported(why) => why.clone(),
        }
    }
}

/// Shorthand for results in this module.
pub type TpmResult<T> = Result<T, TpmError>;

trait At<T> {
    fn at(self, step: Step) -> TpmResult<T>;
}

impl<T> At<T> for tss_esapi::Result<T> {
    fn at(self, step: Step) -> TpmResult<T> {
        self.map_err(|e| TpmError::new(step, &e))
    }
}

/// The storage root key in use.
#[derive(Clone, Copy)]
pub struct Srk {
    /// Its ESAPI handle.
    pub handle: KeyHandle,
    /// Whether it is the persistent 0x81000001 (not to be flushed).
    pub persistent: bool,
}

/// An open TPM connection and every transient handle loaded through it.
pub struct Tpm {
    ctx: Context,
    /// Transient objects and sessions to flush, in load order.
    loaded: Vec<ObjectHandle>,
}

impl Drop for Tpm {
    fn drop(&mut self) {
        // Reverse order: the sealed object before its parent. Errors are
        // ignored on purpose: this runs on failure paths, where the TPM may be
        // gone, and there is nothing better to do with them here.
        while let Some(handle) = self.loaded.pop() {
            let _ = self.ctx.flush_context(handle);
        }
    }
}

/// Set once sesame itself put `TSS2_LOG` into the process environment.
static TSS_LOG_SET_BY_US: AtomicBool = AtomicBool::new(false);

/// Sets `TSS2_LOG=all+NONE` unless the user chose a level: libtss2 otherwise
/// prints its own warnings to stderr for every refused command, which breaks
/// our one-line error contract.
fn quiet_tss_logging() {
    if std::env::var_os("TSS2_LOG").is_none() {
        // Edition 2021: set_var is safe. sesame calls this before any thread
        // that reads the environment exists (the CLI is single-threaded).
        std::env::set_var("TSS2_LOG", "all+NONE");
        TSS_LOG_SET_BY_US.store(true, Ordering::Relaxed);
    }
}

/// Whether `TSS2_LOG` in this process's environment is sesame's own (set
/// because the caller had none), so that a child such as `sesame exec`'s
/// COMMAND should not inherit it.
pub fn tss_log_was_set_by_us() -> bool {
    TSS_LOG_SET_BY_US.load(Ordering::Relaxed)
}

impl Tpm {
    /// Connects to the TPM named by a TCTI string like `device:/dev/tpmrm0`
    /// or `swtpm:host=127.0.0.1,port=2321`. Sends no command.
    ///
    /// # Errors
    /// [`Step::Connect`] with [`Cause::BadTcti`], [`Cause::NoDevice`] or the
    /// TCTI's response code.
    pub fn open(device: &str) -> TpmResult<Self> {
        quiet_tss_logging();
        let conf = TctiNameConf::from_str(device).map_err(|_| TpmError {
            step: Step::Connect,
            cause: Cause::BadTcti,
        })?;
        if let TctiNameConf::Device(_) = conf {
            // The device TCTI's own error for a missing node is a bare I/O
            // error; say plainly that there is no TPM device. (libtss2's
            // default for a bare `device` is /dev/tpm0.)
            let path = match device.split_once(':') {
                Some((_, p)) if !p.is_empty() => p,
                _ => "/dev/tpm0",
            };
            if !std::path::Path::new(path).exists() {
                return Err(TpmError {
                    step: Step::Connect,
                    cause: Cause::NoDevice(path.to_owned()),
                });
            }
        }
        let ctx = Context::new(conf).at(Step::Connect)?;
        Ok(Self {
            ctx,
            loaded: Vec::new(),
        })
    }

    fn track(&mut self, handle: ObjectHandle) {
        self.loaded.push(handle);
    }

    /// Flushes a transient handle this connection loaded.
    ///
    /// # Errors
    /// [`Step::Flush`]; the handle stays tracked so `Drop` tries again.
    pub fn flush(&mut self, handle: ObjectHandle) -> TpmResult<()> {
        self.ctx.flush_context(handle).at(Step::Flush)?;
        self.loaded.retain(|h| *h != handle);
        Ok(())
    }

    /// Forgets a session the TPM closed itself (continueSession was clear and
    /// the command succeeded): flushing it would only cost a failing command.
    fn forget_closed_session(&mut self, session: AuthSession) {
        let mut handle = session_object(session);
        self.loaded.retain(|h| *h != handle);
        // Frees ESAPI's record of it; tss-esapi reports an error because it
        // expected a flush, but the record is released either way.
        let _ = self.ctx.tr_close(&mut handle);
    }

    /// Flushes the SRK unless it is the persistent one.
    ///
    /// # Errors
    /// [`Step::Flush`].
    pub fn release_srk(&mut self, srk: Srk) -> TpmResult<()> {
        if srk.persistent {
            Ok(())
        } else {
            self.flush(srk.handle.into())
        }
    }

    /// The persistent SRK at 0x81000001, if the handle exists (one
    /// `TPM2_ReadPublic`), with its name.
    ///
    /// # Errors
    /// [`Step::ReadSrk`] for anything but "no such handle".
    pub fn persistent_srk(&mut self) -> TpmResult<Option<(Srk, Vec<u8>)>> {
        let handle = persistent_srk_handle()?;
        match self.ctx.tr_from_tpm_public(handle) {
            Ok(object) => {
                let name = self.ctx.tr_get_name(object).at(Step::ReadSrk)?;
                let srk = Srk {
                    handle: object.into(),
                    persistent: true,
                };
                Ok(Some((srk, name.value().to_vec())))
            }
            Err(e) => {
                let err = TpmError::new(Step::ReadSrk, &e);
                if err.class() == Some(RcClass::Handle) {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Whether the persistent SRK was made from our template (so sealing
    /// under it gives the same binding as `CreatePrimary` would).
    ///
    /// # Errors
    /// [`Step::ReadSrk`].
    pub fn is_standard_srk(&mut self, srk: Srk) -> TpmResult<bool> {
        let (public, _, _) = self.ctx.read_public(srk.handle).at(Step::ReadSrk)?;
        Ok(same_template(&public, &srk_template()?))
    }

    /// Creates the SRK from the standard template (one `TPM2_CreatePrimary`),
    /// with its name. It is tracked and flushed on drop.
    ///
    /// # Errors
    /// [`Step::CreateSrk`].
    pub fn create_srk(&mut self) -> TpmResult<(Srk, Vec<u8>)> {
        let template = srk_template()?;
        let result = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .at(Step::CreateSrk)?;
        self.track(result.key_handle.into());
        let name = self
            .ctx
            .tr_get_name(result.key_handle.into())
            .at(Step::CreateSrk)?;
        let srk = Srk {
            handle: result.key_handle,
            persistent: false,
        };
        Ok((srk, name.value().to_vec()))
    }

    /// The SRK to seal under: the persistent one if present and standard,
    /// else a fresh primary.
    ///
    /// # Errors
    /// As [`Tpm::persistent_srk`] and [`Tpm::create_srk`].
    pub fn srk_for_sealing(&mut self) -> TpmResult<(Srk, Vec<u8>)> {
        if let Some((srk, name)) = self.persistent_srk()? {
            if self.is_standard_srk(srk)? {
                return Ok((srk, name));
            }
        }
        self.create_srk()
    }

    /// The SRK whose name is `expected`: the persistent one if it matches
    /// (one command), else a fresh primary (one or two more). `Ok(None)`
    /// when neither matches: the file was sealed by another TPM (or this
    /// TPM's owner seed was cleared).
    ///
    /// # Errors
    /// As [`Tpm::persistent_srk`] and [`Tpm::create_srk`].
    pub fn srk_named(&mut self, expected: &[u8]) -> TpmResult<Option<Srk>> {
        if let Some((srk, name)) = self.persistent_srk()? {
            if name == expected {
                return Ok(Some(srk));
            }
        }
        let (srk, name) = self.create_srk()?;
        if name == expected {
            Ok(Some(srk))
        } else {
            self.release_srk(srk)?;
            Ok(None)
        }
    }

    /// Starts a session salted with the SRK, AES-128-CFB parameter
    /// encryption, SHA-256. The salt is encrypted to the SRK, so only this
    /// TPM can derive the session key that protects the parameters.
    ///
    /// # Errors
    /// [`Step::StartSession`].
    pub fn salted_session(&mut self, srk: Srk, kind: SessionType) -> TpmResult<AuthSession> {
        let session = self
            .ctx
            .start_auth_session(
                Some(srk.handle),
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .at(Step::StartSession)?
            .ok_or(TpmError {
                step: Step::StartSession,
                cause: Cause::Wrapper("the TPM returned no session handle".into()),
            })?;
        self.track(session_object(session));
        Ok(session)
    }

    /// Sets a session's attributes: `decrypt` encrypts the first command
    /// parameter, `encrypt` the first response parameter; continueSession is
    /// cleared so the TPM closes the session after the one command that
    /// uses it (saving a `FlushContext`).
    fn one_shot(&mut self, session: AuthSession, decrypt: bool, encrypt: bool) -> TpmResult<()> {
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_decrypt(decrypt)
            .with_encrypt(encrypt)
            .with_continue_session(false)
            .build();
        self.ctx
            .tr_sess_set_attributes(session, attributes, mask)
            .at(Step::SessionAttributes)
    }

    /// Creates the sealed object holding `key` under `srk`, its sensitive
    /// part encrypted on the way in by a salted HMAC session. Returns the
    /// TPM2B-ready public and private parts.
    ///
    /// # Errors
    /// [`Step::StartSession`], [`Step::Create`] or [`Step::Marshal`].
    pub fn create_sealed(
        &mut self,
        srk: Srk,
        policy: &[u8],
        key: &DataKey,
    ) -> TpmResult<(Public, Private)> {
        let template = sealed_template(policy)?;
        // SensitiveData wipes its buffer on drop; the FFI copy tss-esapi makes
        // on the stack is beyond our reach (see docs/tpm2.md).
        let data = SensitiveData::try_from(key.expose().to_vec()).at(Step::Marshal)?;
        let session = self.salted_session(srk, SessionType::Hmac)?;
        self.one_shot(session, true, false)?;
        let result = self
            .ctx
            .execute_with_session(Some(session), |ctx| {
                ctx.create(srk.handle, template, None, Some(data), None, None)
            })
            .at(Step::Create)?;
        self.forget_closed_session(session);
        Ok((result.out_public, result.out_private))
    }

    /// Loads a sealed object under `srk` (authorised by the SRK's empty
    /// password: no session, no extra command).
    ///
    /// # Errors
    /// [`Step::Load`].
    pub fn load(&mut self, srk: Srk, public: Public, private: Private) -> TpmResult<KeyHandle> {
        let handle = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(srk.handle, private, public)
            })
            .at(Step::Load)?;
        self.track(handle.into());
        Ok(handle)
    }

    /// `TPM2_PolicyPCR` with the expected PCR digest: the TPM compares it
    /// with the current values and answers TPM_RC_VALUE if they differ, so a
    /// changed PCR is detected here rather than as a generic policy failure.
    ///
    /// # Errors
    /// [`Step::PolicyPcr`] or [`Step::Marshal`].
    pub fn policy_pcr(
        &mut self,
        session: AuthSession,
        selection: &PcrSelection,
        pcr_digest: &[u8],
    ) -> TpmResult<()> {
        let policy = PolicySession::try_from(session).at(Step::PolicyPcr)?;
        let digest = Digest::try_from(pcr_digest.to_vec()).at(Step::Marshal)?;
        let list = selection_list(selection)?;
        self.ctx
            .execute_without_session(|ctx| ctx.policy_pcr(policy, digest, list))
            .at(Step::PolicyPcr)
    }

    /// `TPM2_PolicyCommandCode(TPM_CC_Unseal)`.
    ///
    /// # Errors
    /// [`Step::PolicyCommandCode`].
    pub fn policy_unseal_only(&mut self, session: AuthSession) -> TpmResult<()> {
        let policy = PolicySession::try_from(session).at(Step::PolicyCommandCode)?;
        self.ctx
            .execute_without_session(|ctx| {
                ctx.policy_command_code(policy, tss_esapi::constants::CommandCode::Unseal)
            })
            .at(Step::PolicyCommandCode)
    }

    /// `TPM2_Unseal` in the (satisfied) policy session, with response
    /// encryption: the key crosses the TPM interface encrypted under the
    /// salted session key. The TPM closes the session on success.
    ///
    /// # Errors
    /// [`Step::Unseal`] or [`Step::SessionAttributes`].
    pub fn unseal(&mut self, session: AuthSession, object: KeyHandle) -> TpmResult<SensitiveData> {
        self.one_shot(session, false, true)?;
        let data = self
            .ctx
            .execute_with_session(Some(session), |ctx| ctx.unseal(object.into()))
            .at(Step::Unseal)?;
        self.forget_closed_session(session);
        Ok(data)
    }

    /// Current values of the selected PCRs, in selection order.
    ///
    /// # Errors
    /// [`Step::PcrRead`].
    pub fn read_pcrs(&mut self, selection: &PcrSelection) -> TpmResult<Vec<Vec<u8>>> {
        let list = selection_list(selection)?;
        let data = self
            .ctx
            .execute_without_session(|ctx| pcr::read_all(ctx, list))
            .at(Step::PcrRead)?;
        let bank = data
            .pcr_bank(hashing_algorithm(selection.bank()))
            .ok_or_else(|| TpmError {
                step: Step::PcrRead,
                cause: Cause::Unsupported(format!(
                    "the TPM has no {} PCR bank allocated",
                    selection.bank()
                )),
            })?;
        selection
            .pcrs()
            .iter()
            .map(|&index| {
                bank.get_digest(pcr_slot(index)?)
                    .map(|d| d.value().to_vec())
                    .ok_or_else(|| TpmError {
                        step: Step::PcrRead,
                        cause: Cause::Unsupported(format!(
                            "the TPM returned no value for {} PCR {index}",
                            selection.bank()
                        )),
                    })
            })
            .collect()
    }

    /// Fixed and variable TPM properties (two `TPM2_GetCapability`).
    ///
    /// # Errors
    /// [`Step::Capability`].
    pub fn properties(&mut self) -> TpmResult<Vec<(PropertyTag, u32)>> {
        let mut out = Vec::new();
        // TPM_PT_FIXED and TPM_PT_VAR groups.
        for first in [0x100u32, 0x200] {
            let (data, _) = self
                .ctx
                .execute_without_session(|ctx| {
                    ctx.get_capability(CapabilityType::TpmProperties, first, 64)
                })
                .at(Step::Capability)?;
            if let CapabilityData::TpmProperties(list) = data {
                out.extend(list.iter().map(|p| (p.property(), p.value())));
            }
        }
        Ok(out)
    }

    /// Makes `srk` (a transient primary) persistent at 0x81000001. The
    /// transient copy is still loaded afterwards and must be flushed.
    ///
    /// # Errors
    /// [`Step::EvictControl`].
    pub fn persist(&mut self, srk: Srk) -> TpmResult<()> {
        let target = Persistent::Persistent(persistent_handle()?);
        let mut persistent = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(Provision::Owner, srk.handle.into(), target)
            })
            .at(Step::EvictControl)?;
        let _ = self.ctx.tr_close(&mut persistent);
        Ok(())
    }
}

/// The ObjectHandle ESAPI uses for a session.
fn session_object(session: AuthSession) -> ObjectHandle {
    tss_esapi::handles::SessionHandle::from(session).into()
}

fn persistent_handle() -> TpmResult<PersistentTpmHandle> {
    PersistentTpmHandle::new(SRK_HANDLE).at(Step::Marshal)
}

fn persistent_srk_handle() -> TpmResult<TpmHandle> {
    Ok(TpmHandle::Persistent(persistent_handle()?))
}

/// The ECC P-256 storage root key template of the TCG Provisioning Guidance
/// (and systemd): restricted decryption key, AES-128-CFB, noDA, empty auth,
/// zero-length unique. Deterministic: the same seed always gives the same
/// key and name, so the name identifies this TPM's owner hierarchy.
pub fn srk_template() -> TpmResult<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .at(Step::Marshal)?;
    let parameters = PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .build()
    .at(Step::Marshal)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .at(Step::Marshal)
}

/// Whether `public` was made from `template` (everything but `unique`).
fn same_template(public: &Public, template: &Public) -> bool {
    match (public, template) {
        (
            Public::Ecc {
                object_attributes: a1,
                name_hashing_algorithm: n1,
                auth_policy: p1,
                parameters: q1,
                ..
            },
            Public::Ecc {
                object_attributes: a2,
                name_hashing_algorithm: n2,
                auth_policy: p2,
                parameters: q2,
                ..
            },
        ) => a1 == a2 && n1 == n2 && p1 == p2 && q1 == q2,
        _ => false,
    }
}

/// The sealed data object: keyedhash, fixedTPM + fixedParent (it can never
/// leave this TPM or be re-parented), noDA (a failed policy never counts
/// toward lockout, so an unclean boot cannot lock us out), adminWithPolicy
/// (no admin action without the policy), userWithAuth clear (the policy is
/// the only way to use it: the empty auth value grants nothing).
fn sealed_template(policy: &[u8]) -> TpmResult<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_admin_with_policy(true)
        .with_user_with_auth(false)
        .build()
        .at(Step::Marshal)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::try_from(policy.to_vec()).at(Step::Marshal)?)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .at(Step::Marshal)
}

/// Checks a stored public area is a sealed object we could have made: right
/// type and attributes, and `authPolicy` equal to `policy`.
pub fn is_sealed_object_with_policy(public: &Public, policy: &[u8]) -> bool {
    match (public, sealed_template(policy)) {
        (
            Public::KeyedHash {
                object_attributes,
                name_hashing_algorithm,
                auth_policy,
                parameters,
                ..
            },
            Ok(Public::KeyedHash {
                object_attributes: a,
                name_hashing_algorithm: n,
                auth_policy: p,
                parameters: q,
                ..
            }),
        ) => {
            *object_attributes == a
                && *name_hashing_algorithm == n
                && *auth_policy == p
                && *parameters == q
        }
        _ => false,
    }
}

fn hashing_algorithm(bank: Bank) -> HashingAlgorithm {
    match bank {
        Bank::Sha1 => HashingAlgorithm::Sha1,
        Bank::Sha256 => HashingAlgorithm::Sha256,
        Bank::Sha384 => HashingAlgorithm::Sha384,
        Bank::Sha512 => HashingAlgorithm::Sha512,
    }
}

fn pcr_slot(index: u8) -> TpmResult<PcrSlot> {
    PcrSlot::try_from(1u32 << index).at(Step::Marshal)
}

/// The selection as tss-esapi sends it; `sizeofSelect` pinned to 3 octets to
/// match the software policy computation.
fn selection_list(selection: &PcrSelection) -> TpmResult<tss_esapi::structures::PcrSelectionList> {
    let slots = selection
        .pcrs()
        .iter()
        .map(|&i| pcr_slot(i))
        .collect::<TpmResult<Vec<_>>>()?;
    PcrSelectionListBuilder::new()
        .with_size_of_select(PcrSelectSize::ThreeOctets)
        .with_selection(hashing_algorithm(selection.bank()), &slots)
        .build()
        .at(Step::Marshal)
}
