//! TPM 2.0 backend: the data key becomes a sealed object under this TPM's
//! storage root key, released only by this TPM and only while the sealed
//! policy holds. `docs/tpm2.md` explains the binding and the command budget.
//!
//! Seal: SRK (persistent 0x81000001 if it is the standard one, else
//! `CreatePrimary`) → read the chosen PCRs → policy digest computed in
//! software → `Create` in a salted HMAC session with command encryption.
//!
//! Unseal: `ReadPublic(0x81000001)` (or `CreatePrimary`) and an SRK name
//! check → `StartAuthSession` (policy, salted with the SRK) → `Load` →
//! `PolicyPCR`/`PolicyCommandCode` → `Unseal` with response encryption (the
//! TPM closes the session) → `FlushContext` of the object (and of the SRK if
//! transient): 6 commands with a persistent SRK, 8 without.

mod policy;
mod rc;
mod tpm;

use std::time::Duration;

use tss_esapi::constants::{PropertyTag, SessionType};
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::{Marshall as _, UnMarshall as _};

pub use policy::{parse_pcr_list, Bank, PcrSelection};
pub use tpm::{tss_log_was_set_by_us, SRK_HANDLE};

use crate::backend::{BackendError, KeyBackend};
use crate::format::{FormatError, Stanza};
use crate::secret::DataKey;
use rc::RcClass;
use tpm::{Cause, Step, Tpm, TpmError};

/// Stanza type.
pub const KIND: &str = "tpm2";

/// Default TCTI when neither flag, environment nor config names one.
pub const DEFAULT_DEVICE: &str = "device:/dev/tpmrm0";

/// Stanza fields, in the order they are written.
const F_SRK_NAME: &str = "srk-name";
const F_PCRS: &str = "pcrs";
const F_BANK: &str = "pcr-bank";
const F_VALUES: &str = "pcr-values";
const F_POLICY: &str = "policy-digest";
const F_PUBLIC: &str = "public";
const F_PRIVATE: &str = "private";
const FIELDS: &[&str] = &[
    F_SRK_NAME, F_PCRS, F_BANK, F_VALUES, F_POLICY, F_PUBLIC, F_PRIVATE,
];

/// Waits before retrying a command the TPM asked us to retry (RETRY,
/// YIELDED, TESTING, full object/session slots). ESAPI already resubmits
/// immediately a few times; these add real time for a busy TPM or another
/// process holding slots. About 1.5 s in all.
const BACKOFF_MS: [u64; 5] = [50, 100, 200, 400, 800];

/// Seals the data key to a TPM 2.0.
pub struct Tpm2Backend {
    device: String,
    /// For sealing: the PCRs to bind to, `None` for the TPM alone.
    selection: Option<PcrSelection>,
    /// When re-creating a stanza: the SRK name it was sealed under, which
    /// the TPM at `device` must have.
    expect_srk: Option<Vec<u8>>,
}

impl Tpm2Backend {
    /// For sealing: `pcrs` is `none` or a list like `0,7`; `bank` e.g. `sha256`.
    ///
    /// # Errors
    /// [`BackendError::Config`] if `pcrs` or `bank` do not parse.
    pub fn for_sealing(device: &str, pcrs: &str, bank: &str) -> Result<Self, BackendError> {
        let bank = Bank::parse(bank).ok_or_else(|| BackendError::Config {
            backend: KIND,
            reason: format!("PCR bank {bank:?} is not sha1, sha256, sha384 or sha512"),
            hint: "use --tpm2-pcr-bank sha256".into(),
        })?;
        let config = |reason: String| BackendError::Config {
            backend: KIND,
            reason: format!("--tpm2-pcrs: {reason}"),
            hint: "use none (the default), 7, or a list like 0,7".into(),
        };
        let selection = parse_pcr_list(pcrs)
            .map_err(config)?
            .map(|list| PcrSelection::new(bank, &list))
            .transpose()
            .map_err(config)?;
        Ok(Self {
            device: device.to_owned(),
            selection,
            expect_srk: None,
        })
    }

    /// For sealing a new data key with the same binding as an existing
    /// `stanza` (`rewrap --keep`, `rotate`): the recorded PCR selection and
    /// bank, sealed against the PCR values the TPM at `device` has *now*.
    /// [`KeyBackend::wrap`] refuses if that TPM is not the one the stanza was
    /// sealed to (another storage root key), so a stanza of another machine
    /// is never silently moved to this one.
    ///
    /// # Errors
    /// [`BackendError::Stanza`] if the stanza is malformed.
    pub fn for_resealing(device: &str, stanza: &Stanza) -> Result<Self, BackendError> {
        let sealed = SealedObject::from_stanza(stanza)?;
        Ok(Self {
            device: device.to_owned(),
            selection: match sealed.policy {
                Policy::TpmOnly => None,
                Policy::Pcrs { selection, .. } => Some(selection),
            },
            expect_srk: Some(sealed.srk_name),
        })
    }

    /// For unsealing with the TPM at `device`.
    pub fn for_unsealing(device: &str) -> Self {
        Self {
            device: device.to_owned(),
            selection: None,
            expect_srk: None,
        }
    }
}

impl KeyBackend for Tpm2Backend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn wrap(&mut self, key: &DataKey) -> Result<Stanza, BackendError> {
        let this = &*self;
        retrying(&this.device, || {
            seal_once(
                &this.device,
                this.selection.as_ref(),
                this.expect_srk.as_deref(),
                key,
            )
        })
    }

    fn unwrap(&mut self, stanza: &Stanza) -> Result<DataKey, BackendError> {
        let sealed = SealedObject::from_stanza(stanza)?;
        let device = &self.device;
        retrying(device, || unseal_once(device, &sealed))
    }
}

/// What a TPM2 stanza binds to, for `inspect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The PCRs and the values sealed against, or `None` for the TPM alone.
    pub pcrs: Option<(PcrSelection, Vec<Vec<u8>>)>,
    /// The name of the SRK the object was sealed under.
    pub srk_name: Vec<u8>,
}

/// Reads a stanza's binding without a TPM.
///
/// # Errors
/// [`BackendError::Stanza`] if the stanza is malformed or inconsistent.
pub fn binding(stanza: &Stanza) -> Result<Binding, BackendError> {
    let sealed = SealedObject::from_stanza(stanza)?;
    Ok(Binding {
        pcrs: match sealed.policy {
            Policy::TpmOnly => None,
            Policy::Pcrs { selection, values } => Some((selection, values)),
        },
        srk_name: sealed.srk_name,
    })
}

/// One PCR in a pre-flight check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrCheck {
    /// PCR index.
    pub index: u8,
    /// The value sealed against.
    pub sealed: Vec<u8>,
    /// The value now.
    pub current: Vec<u8>,
}

impl PcrCheck {
    /// Whether the PCR moved since sealing.
    pub fn changed(&self) -> bool {
        self.sealed != self.current
    }
}

/// Whether this TPM, as it is now, would unseal a stanza.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreflightReport {
    /// The TCTI checked.
    pub device: String,
    /// Whether this TPM's SRK has the sealed SRK name.
    pub same_tpm: bool,
    /// The bank of the PCR checks (if any).
    pub bank: Option<Bank>,
    /// Each sealed PCR, sealed value against current value (empty for a
    /// TPM-only binding, or when the TPM is not the same one).
    pub pcrs: Vec<PcrCheck>,
}

impl PreflightReport {
    /// True when an unseal now would pass the policy.
    pub fn would_unseal(&self) -> bool {
        self.same_tpm && self.pcrs.iter().all(|p| !p.changed())
    }

    /// The PCRs that changed since sealing.
    pub fn changed(&self) -> Vec<u8> {
        self.pcrs
            .iter()
            .filter(|p| p.changed())
            .map(|p| p.index)
            .collect()
    }
}

/// Checks, without unsealing, whether the TPM at `device` would release the
/// key of a stanza now (its [`binding`]): same SRK, and every sealed PCR at
/// its sealed value. Costs one `ReadPublic` (or a `CreatePrimary` and flush)
/// and one `PCR_Read` per eight PCRs.
///
/// # Errors
/// The usual TPM errors (unavailable, busy).
pub fn preflight(binding: &Binding, device: &str) -> Result<PreflightReport, BackendError> {
    retrying(device, || {
        let mut tpm = Tpm::open(device).map_err(|e| fail(device, e))?;
        let srk = tpm
            .srk_named(&binding.srk_name)
            .map_err(|e| fail(device, e))?;
        let mut report = PreflightReport {
            device: device.to_owned(),
            same_tpm: srk.is_some(),
            bank: None,
            pcrs: Vec::new(),
        };
        if let Some(srk) = srk {
            tpm.release_srk(srk).map_err(|e| fail(device, e))?;
            if let Some((selection, values)) = &binding.pcrs {
                let current = tpm.read_pcrs(selection).map_err(|e| fail(device, e))?;
                report.bank = Some(selection.bank());
                report.pcrs = pcr_checks(selection, values, current);
            }
        }
        Ok(report)
    })
}

/// What `sesame tpm2 info` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmInfo {
    /// The TCTI used.
    pub device: String,
    /// TPM_PT_MANUFACTURER as text (e.g. `IBM`, `AMZN`).
    pub manufacturer: String,
    /// TPM_PT_VENDOR_STRING_1..4 as text.
    pub vendor: String,
    /// TPM_PT_FIRMWARE_VERSION_1 and _2.
    pub firmware: (u32, u32),
    /// Specification family and revision, e.g. `2.0 rev 1.59`.
    pub spec: String,
    /// State of the persistent SRK handle.
    pub srk: SrkStatus,
    /// TPMA_PERMANENT.inLockout.
    pub in_lockout: bool,
    /// TPMA_PERMANENT.ownerAuthSet: the owner hierarchy has a password, so
    /// sesame can only use a persistent SRK.
    pub owner_auth_set: bool,
    /// The PCR values asked for.
    pub pcrs: Option<(PcrSelection, Vec<Vec<u8>>)>,
}

/// What 0x81000001 holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SrkStatus {
    /// Nothing: every unseal creates the SRK (a `CreatePrimary`, slower).
    Absent,
    /// The standard ECC P-256 SRK sesame uses, with its name.
    Standard(Vec<u8>),
    /// Some other key (sesame will not use it), with its name.
    Other(Vec<u8>),
}

/// Reads the TPM's identity, SRK state and optionally some PCR values.
///
/// # Errors
/// The usual TPM errors; [`BackendError::Config`] if the PCR bank is not
/// allocated.
pub fn info(device: &str, pcrs: Option<&PcrSelection>) -> Result<TpmInfo, BackendError> {
    retrying(device, || {
        let mut tpm = Tpm::open(device).map_err(|e| fail(device, e))?;
        let props = tpm.properties().map_err(|e| fail(device, e))?;
        let prop = |tag: PropertyTag| props.iter().find(|(t, _)| *t == tag).map_or(0, |(_, v)| *v);
        let text = |tags: &[PropertyTag]| {
            let bytes: Vec<u8> = tags.iter().flat_map(|&t| prop(t).to_be_bytes()).collect();
            String::from_utf8_lossy(&bytes)
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
                .trim()
                .to_owned()
        };
        let srk = match tpm.persistent_srk().map_err(|e| fail(device, e))? {
            None => SrkStatus::Absent,
            Some((srk, name)) => {
                if tpm.is_standard_srk(srk).map_err(|e| fail(device, e))? {
                    SrkStatus::Standard(name)
                } else {
                    SrkStatus::Other(name)
                }
            }
        };
        let pcr_values = match pcrs {
            Some(sel) => Some((
                sel.clone(),
                tpm.read_pcrs(sel).map_err(|e| fail(device, e))?,
            )),
            None => None,
        };
        let permanent = prop(PropertyTag::Permanent);
        let revision = prop(PropertyTag::Revision);
        Ok(TpmInfo {
            device: device.to_owned(),
            manufacturer: text(&[PropertyTag::Manufacturer]),
            vendor: text(&[
                PropertyTag::VendorString1,
                PropertyTag::VendorString2,
                PropertyTag::VendorString3,
                PropertyTag::VendorString4,
            ]),
            firmware: (
                prop(PropertyTag::FirmwareVersion1),
                prop(PropertyTag::FirmwareVersion2),
            ),
            spec: format!(
                "{} rev {}.{:02}",
                text(&[PropertyTag::FamilyIndicator]),
                revision / 100,
                revision % 100
            ),
            srk,
            in_lockout: permanent & (1 << 9) != 0,
            owner_auth_set: permanent & 1 != 0,
            pcrs: pcr_values,
        })
    })
}

/// What `persist-srk` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistOutcome {
    /// The standard SRK is now at 0x81000001 (its name).
    Created(Vec<u8>),
    /// The standard SRK was already there (its name): nothing to do.
    AlreadyPresent(Vec<u8>),
}

/// Creates the standard SRK and makes it persistent at 0x81000001, so every
/// later seal and unseal skips `CreatePrimary`. Idempotent when the
/// standard SRK is already there.
///
/// # Errors
/// [`BackendError::Exists`] if 0x81000001 holds another key;
/// [`BackendError::Refused`] if the owner hierarchy has a password; the usual
/// TPM errors otherwise.
pub fn persist_srk(device: &str) -> Result<PersistOutcome, BackendError> {
    retrying(device, || {
        let mut tpm = Tpm::open(device).map_err(|e| fail(device, e))?;
        if let Some((srk, name)) = tpm.persistent_srk().map_err(|e| fail(device, e))? {
            if tpm.is_standard_srk(srk).map_err(|e| fail(device, e))? {
                return Ok(PersistOutcome::AlreadyPresent(name));
            }
            return Err(Fail::Final(taken(device)));
        }
        let (srk, name) = tpm.create_srk().map_err(|e| fail(device, e))?;
        tpm.persist(srk).map_err(|e| fail(device, e))?;
        tpm.release_srk(srk).map_err(|e| fail(device, e))?;
        Ok(PersistOutcome::Created(name))
    })
}

fn taken(device: &str) -> BackendError {
    BackendError::Exists {
        backend: KIND,
        reason: format!(
            "persistent handle {SRK_HANDLE:#x} on {device} already holds a key that is not the standard ECC P-256 SRK"
        ),
        hint: format!(
            "leave it if something else uses it (sesame then creates its SRK on each use), or evict it with `tpm2_evictcontrol -C o -c {SRK_HANDLE:#x}` and run persist-srk again"
        ),
    }
}

/// A stanza parsed and checked for internal consistency.
struct SealedObject {
    srk_name: Vec<u8>,
    policy: Policy,
    policy_digest: Vec<u8>,
    public: Public,
    private: Private,
}

enum Policy {
    TpmOnly,
    Pcrs {
        selection: PcrSelection,
        values: Vec<Vec<u8>>,
    },
}

impl Policy {
    fn digest(&self) -> [u8; policy::POLICY_DIGEST_LEN] {
        match self {
            Self::TpmOnly => policy::policy_unseal_only(),
            Self::Pcrs { selection, values } => {
                let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                policy::policy_pcr(selection, &refs)
            }
        }
    }
}

fn stanza_error(field: &str, reason: impl Into<String>) -> BackendError {
    BackendError::Stanza {
        backend: KIND,
        source: FormatError::InvalidValue {
            field: format!("{KIND}.{field}"),
            reason: reason.into(),
        },
    }
}

fn stanza_format(e: FormatError) -> BackendError {
    BackendError::Stanza {
        backend: KIND,
        source: e,
    }
}

impl SealedObject {
    fn from_stanza(stanza: &Stanza) -> Result<Self, BackendError> {
        stanza.only_fields(FIELDS).map_err(stanza_format)?;
        let srk_name = stanza.require_bytes(F_SRK_NAME).map_err(stanza_format)?;
        // A SHA-256 name: 2-byte algorithm id + 32-byte digest.
        if srk_name.len() != 34 || srk_name[..2] != [0x00, 0x0b] {
            return Err(stanza_error(F_SRK_NAME, "not a SHA-256 TPM name"));
        }
        let pcrs = stanza.require(F_PCRS).map_err(stanza_format)?;
        let policy = match parse_pcr_list(pcrs).map_err(|e| stanza_error(F_PCRS, e))? {
            None => {
                for absent in [F_BANK, F_VALUES] {
                    if stanza.field(absent).is_some() {
                        return Err(stanza_error(absent, "present although pcrs is none"));
                    }
                }
                Policy::TpmOnly
            }
            Some(list) => {
                let bank_text = stanza.require(F_BANK).map_err(stanza_format)?;
                let bank =
                    Bank::parse(bank_text).ok_or_else(|| stanza_error(F_BANK, "unknown bank"))?;
                let selection =
                    PcrSelection::new(bank, &list).map_err(|e| stanza_error(F_PCRS, e))?;
                if selection.list() != pcrs {
                    return Err(stanza_error(F_PCRS, "not in canonical form"));
                }
                let values =
                    parse_values(&selection, stanza.require(F_VALUES).map_err(stanza_format)?)?;
                Policy::Pcrs { selection, values }
            }
        };
        let policy_digest = stanza.require_bytes(F_POLICY).map_err(stanza_format)?;
        if policy_digest != policy.digest() {
            return Err(stanza_error(
                F_POLICY,
                "does not match the PCR selection and values",
            ));
        }
        let public = tpm2b(&stanza.require_bytes(F_PUBLIC).map_err(stanza_format)?)
            .and_then(|b| Public::unmarshall(b).ok())
            .ok_or_else(|| stanza_error(F_PUBLIC, "not a TPM2B_PUBLIC"))?;
        if !tpm::is_sealed_object_with_policy(&public, &policy_digest) {
            return Err(stanza_error(
                F_PUBLIC,
                "not a sealed object with the stanza's policy digest",
            ));
        }
        let private = tpm2b(&stanza.require_bytes(F_PRIVATE).map_err(stanza_format)?)
            .and_then(|b| Private::try_from(b.to_vec()).ok())
            .ok_or_else(|| stanza_error(F_PRIVATE, "not a TPM2B_PRIVATE"))?;
        Ok(Self {
            srk_name,
            policy,
            policy_digest,
            public,
            private,
        })
    }

    fn to_stanza(&self) -> Result<Stanza, BackendError> {
        let public = self
            .public
            .marshall()
            .map_err(|_| stanza_error(F_PUBLIC, "cannot marshal the TPM's public area"))?;
        let mut stanza = Stanza::new(KIND).with_bytes(F_SRK_NAME, &self.srk_name);
        match &self.policy {
            Policy::TpmOnly => stanza = stanza.with(F_PCRS, "none"),
            Policy::Pcrs { selection, values } => {
                stanza = stanza
                    .with(F_PCRS, selection.list())
                    .with(F_BANK, selection.bank().name())
                    .with(F_VALUES, format_values(selection, values));
            }
        }
        Ok(stanza
            .with_bytes(F_POLICY, &self.policy_digest)
            .with_bytes(F_PUBLIC, &with_size(&public))
            .with_bytes(F_PRIVATE, &with_size(self.private.value())))
    }
}

/// The body of a TPM2B (2-byte big-endian size, then exactly that many bytes).
fn tpm2b(bytes: &[u8]) -> Option<&[u8]> {
    let (size, body) = bytes.split_first_chunk::<2>()?;
    (usize::from(u16::from_be_bytes(*size)) == body.len()).then_some(body)
}

fn with_size(body: &[u8]) -> Vec<u8> {
    // Invariant: TPM structures are far below 64 KiB (TPM2B sizes are u16).
    let size = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let mut out = size.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// `0=<hex>,7=<hex>`: readable in `inspect`, and enough to name the PCRs
/// that changed when the TPM refuses.
fn format_values(selection: &PcrSelection, values: &[Vec<u8>]) -> String {
    selection
        .pcrs()
        .iter()
        .zip(values)
        .map(|(i, v)| format!("{i}={}", hex::encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_values(selection: &PcrSelection, text: &str) -> Result<Vec<Vec<u8>>, BackendError> {
    let parts: Vec<&str> = text.split(',').collect();
    if parts.len() != selection.pcrs().len() {
        return Err(stanza_error(F_VALUES, "not one value per selected PCR"));
    }
    selection
        .pcrs()
        .iter()
        .zip(parts)
        .map(|(&index, part)| {
            let (i, v) = part
                .split_once('=')
                .ok_or_else(|| stanza_error(F_VALUES, "expected PCR=HEX"))?;
            let value = hex::decode(v)
                .ok()
                .ok_or_else(|| stanza_error(F_VALUES, "bad hex"))?;
            if i != index.to_string() || value.len() != selection.bank().digest_len() {
                return Err(stanza_error(
                    F_VALUES,
                    format!("PCR {index}: wrong index or length"),
                ));
            }
            Ok(value)
        })
        .collect()
}

fn pcr_checks(
    selection: &PcrSelection,
    sealed: &[Vec<u8>],
    current: Vec<Vec<u8>>,
) -> Vec<PcrCheck> {
    selection
        .pcrs()
        .iter()
        .zip(sealed)
        .zip(current)
        .map(|((&index, sealed), current)| PcrCheck {
            index,
            sealed: sealed.clone(),
            current,
        })
        .collect()
}

/// How one attempt failed: worth retrying, or final.
enum Fail {
    Retry(TpmError),
    Final(BackendError),
}

/// Runs `op` until it succeeds, fails for good, or the TPM stayed busy
/// through every backoff step. Only "busy" answers are retried: a refusal
/// (wrong policy, wrong authorisation) is never sent again.
fn retrying<T>(device: &str, mut op: impl FnMut() -> Result<T, Fail>) -> Result<T, BackendError> {
    let mut delays = BACKOFF_MS.iter();
    loop {
        match op() {
            Ok(value) => return Ok(value),
            Err(Fail::Final(e)) => return Err(e),
            Err(Fail::Retry(e)) => match delays.next() {
                Some(&ms) => {
                    tracing::debug!(backend = KIND, error = %e.describe(), delay_ms = ms, "TPM busy, retrying");
                    std::thread::sleep(Duration::from_millis(ms));
                }
                None => {
                    return Err(BackendError::Busy {
                        backend: KIND,
                        reason: format!(
                            "the TPM at {device} stayed busy ({})",
                            e.describe()
                        ),
                        hint: "try again in a few seconds; if another program holds TPM sessions or objects, stop it or use /dev/tpmrm0 (the kernel resource manager)".into(),
                    })
                }
            },
        }
    }
}

/// Classifies a TPM failure into what the user sees.
fn fail(device: &str, e: TpmError) -> Fail {
    let refused = |reason: String, hint: &str| {
        Fail::Final(BackendError::Refused {
            backend: KIND,
            reason,
            hint: hint.into(),
        })
    };
    let unavailable = |reason: String, hint: &str| {
        Fail::Final(BackendError::Unavailable {
            backend: KIND,
            reason,
            hint: hint.into(),
        })
    };
    const NOT_ANSWERING: &str = "check that the TPM is enabled and /dev/tpmrm0 exists (on EC2: an instance launched with NitroTPM), that the service starts after tpm2.target, or pass --tpm2-device";
    match (&e.cause, e.class()) {
        (Cause::BadTcti, _) => Fail::Final(BackendError::Config {
            backend: KIND,
            reason: format!("--tpm2-device {device:?} is not a TCTI"),
            hint: "use device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321".into(),
        }),
        (Cause::NoDevice(path), _) => unavailable(
            format!("no TPM device {path}"),
            NOT_ANSWERING,
        ),
        (Cause::Unsupported(why), _) => Fail::Final(BackendError::Config {
            backend: KIND,
            reason: why.clone(),
            hint: "use --tpm2-pcr-bank sha256 (see sesame tpm2 info)".into(),
        }),
        (Cause::Wrapper(_), _) => unavailable(
            format!("TPM at {device}: {}", e.describe()),
            "this looks like a TSS or TPM fault; run sesame tpm2 info to check the TPM",
        ),
        (Cause::Rc(_), Some(RcClass::Transient)) => Fail::Retry(e),
        (Cause::Rc(_), Some(RcClass::Unreachable)) => unavailable(
            if e.step == Step::Connect {
                format!("the TPM at {device} does not answer")
            } else {
                format!("the TPM at {device} stopped answering ({})", e.describe())
            },
            NOT_ANSWERING,
        ),
        (Cause::Rc(_), Some(RcClass::Lockout)) => refused(
            format!("the TPM at {device} is in dictionary-attack lockout"),
            "sesame's objects are noDA and never cause it; wait for the lockout to expire or clear it with the lockout authorisation (tpm2_dictionarylockout -c)",
        ),
        // Only the owner-hierarchy commands use the owner authorisation
        // (empty); elsewhere an AUTH_FAIL is an ordinary refusal below.
        (Cause::Rc(_), Some(RcClass::AuthFail))
            if matches!(e.step, Step::CreateSrk | Step::EvictControl) =>
        {
            refused(
                format!(
                    "the TPM refused the owner authorisation ({}): the owner hierarchy has a password",
                    e.describe()
                ),
                "provision the standard SRK at 0x81000001 once with the owner password (then sesame needs no owner authorisation), or clear the owner password",
            )
        }
        (Cause::Rc(_), Some(RcClass::Hierarchy)) => refused(
            format!("the owner hierarchy of the TPM at {device} is disabled ({})", e.describe()),
            "enable the owner hierarchy (it is on by default; tpm2_hierarchycontrol)",
        ),
        (Cause::Rc(_), Some(RcClass::BadBlob)) if e.step == Step::Load => refused(
            format!("the TPM rejected the sealed object ({}): it was made by another TPM or is damaged", e.describe()),
            "unseal on the machine that sealed it, or with another backend of this file",
        ),
        (Cause::Rc(_), Some(RcClass::NvDefined)) if e.step == Step::EvictControl => {
            Fail::Final(taken(device))
        }
        (Cause::Rc(_), Some(RcClass::PolicyFail)) => refused(
            format!("the TPM policy is not satisfied ({})", e.describe()),
            "check with sesame inspect --tpm2-device; seal again if the machine state changed on purpose",
        ),
        (Cause::Rc(_), Some(RcClass::NotOperational)) => unavailable(
            format!("the TPM at {device} is not operational ({})", e.describe()),
            "the TPM is not started or is in failure mode; reboot, and if it persists check the firmware TPM settings (sesame tpm2 info)",
        ),
        (Cause::Rc(code), _) if rc::is_tpm_answer(*code) => refused(
            format!("the TPM at {device} refused: {}", e.describe()),
            "run sesame tpm2 info to check the TPM",
        ),
        (Cause::Rc(_), _) => unavailable(
            format!("TPM at {device}: {}", e.describe()),
            "run sesame tpm2 info to check the TPM",
        ),
    }
}

fn seal_once(
    device: &str,
    selection: Option<&PcrSelection>,
    expect_srk: Option<&[u8]>,
    key: &DataKey,
) -> Result<Stanza, Fail> {
    let f = |e| fail(device, e);
    let mut tpm = Tpm::open(device).map_err(f)?;
    let (srk, srk_name) = tpm.srk_for_sealing().map_err(f)?;
    if expect_srk.is_some_and(|expected| expected != srk_name) {
        tpm.release_srk(srk).map_err(f)?;
        return Err(Fail::Final(BackendError::Refused {
            backend: KIND,
            reason: format!(
                "the existing tpm2 stanza belongs to a different TPM than the one at {device} (another storage root key)"
            ),
            hint: "run on the machine it was sealed on, or drop it (rewrap without --keep, adding --tpm2 for this TPM)".into(),
        }));
    }
    let policy = match selection {
        None => Policy::TpmOnly,
        Some(selection) => Policy::Pcrs {
            selection: selection.clone(),
            values: tpm.read_pcrs(selection).map_err(f)?,
        },
    };
    let policy_digest = policy.digest().to_vec();
    let (public, private) = tpm.create_sealed(srk, &policy_digest, key).map_err(f)?;
    tpm.release_srk(srk).map_err(f)?;
    SealedObject {
        srk_name,
        policy,
        policy_digest,
        public,
        private,
    }
    .to_stanza()
    .map_err(Fail::Final)
}

fn unseal_once(device: &str, sealed: &SealedObject) -> Result<DataKey, Fail> {
    let f = |e| fail(device, e);
    let mut tpm = Tpm::open(device).map_err(f)?;
    let Some(srk) = tpm.srk_named(&sealed.srk_name).map_err(f)? else {
        return Err(Fail::Final(BackendError::Refused {
            backend: KIND,
            reason: format!(
                "the file was sealed to a different TPM (the storage root key of the TPM at {device} has another name)"
            ),
            hint: "unseal on the machine that sealed it or with another backend of this file; if this TPM was cleared (tpm2_clear, a new instance), seal the secret again".into(),
        }));
    };
    let session = tpm.salted_session(srk, SessionType::Policy).map_err(f)?;
    let object = tpm
        .load(srk, sealed.public.clone(), sealed.private.clone())
        .map_err(f)?;
    match &sealed.policy {
        Policy::TpmOnly => tpm.policy_unseal_only(session).map_err(f)?,
        Policy::Pcrs { selection, values } => {
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            let expected = policy::pcr_digest(&refs);
            if let Err(e) = tpm.policy_pcr(session, selection, &expected) {
                if e.step == Step::PolicyPcr && e.class() == Some(RcClass::Value) {
                    return Err(pcrs_changed(&mut tpm, device, selection, values));
                }
                return Err(f(e));
            }
        }
    }
    let data = tpm.unseal(session, object).map_err(f)?;
    // The key is out: a failed flush must not turn this into a failure (or a
    // retry that unseals again). `Tpm`'s Drop tries the flush once more.
    if let Err(e) = tpm.flush(object.into()) {
        tracing::debug!(backend = KIND, error = %e.describe(), "flushing the sealed object failed (ignored)");
    }
    if let Err(e) = tpm.release_srk(srk) {
        tracing::debug!(backend = KIND, error = %e.describe(), "flushing the transient SRK failed (ignored)");
    }
    DataKey::from_slice(data.value()).ok_or_else(|| {
        Fail::Final(BackendError::Refused {
            backend: KIND,
            reason: "the TPM released data that is not a 32-byte key".into(),
            hint: "the sealed file is not one sesame wrote; restore it from backup".into(),
        })
    })
}

/// The refusal for changed PCRs, naming them (one `PCR_Read` on this
/// failure path only).
fn pcrs_changed(tpm: &mut Tpm, device: &str, selection: &PcrSelection, sealed: &[Vec<u8>]) -> Fail {
    let which = match tpm.read_pcrs(selection) {
        Ok(current) => {
            let changed: Vec<String> = pcr_checks(selection, sealed, current)
                .iter()
                .filter(|c| c.changed())
                .map(|c| c.index.to_string())
                .collect();
            if changed.is_empty() {
                // Changed back between PolicyPCR and PCR_Read: racing extends.
                PCRS_RACED.to_owned()
            } else {
                format!(
                    "{} PCR {}{PCRS_CHANGED}",
                    selection.bank(),
                    changed.join(",")
                )
            }
        }
        Err(e) => format!(
            "{} PCRs {}{PCRS_CHANGED} (reading them failed: {})",
            selection.bank(),
            selection.list(),
            e.describe()
        ),
    };
    Fail::Final(pcr_refusal(device, selection, &which))
}

/// How every PCR refusal's `which` part ends (or continues, when reading the
/// PCRs failed).
const PCRS_CHANGED: &str = " changed since sealing";
const PCRS_RACED: &str = "the selected PCRs changed while checking";

fn pcr_refusal(device: &str, selection: &PcrSelection, which: &str) -> BackendError {
    BackendError::StateChanged {
        backend: KIND,
        reason: format!("the TPM at {device} refused: {which}"),
        changed: which.to_owned(),
        hint: format!(
            "the boot state differs from when this file was sealed with --tpm2-pcrs {} (firmware, bootloader or Secure Boot dbx update?); if that is expected, unseal with another backend of the file and seal again (`sesame inspect --tpm2-device` shows the check)",
            selection.list()
        ),
    }
}

/// If `e` is this backend's refusal because the sealed PCR policy no longer
/// holds, which PCRs changed (e.g. `sha256 PCR 7 changed since sealing`), so
/// that a caller who just tried to unseal need not ask the TPM again.
pub fn pcr_drift(e: &BackendError) -> Option<&str> {
    match e {
        BackendError::StateChanged {
            backend, changed, ..
        } if *backend == KIND => Some(changed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm2b_framing() {
        assert_eq!(tpm2b(&[0, 2, 7, 8]), Some(&[7u8, 8][..]));
        assert_eq!(tpm2b(&[0, 3, 7, 8]), None);
        assert_eq!(tpm2b(&[0]), None);
        assert_eq!(with_size(&[9]), vec![0, 1, 9]);
    }

    #[test]
    fn for_sealing_rejects_bad_flags_as_config() {
        assert!(matches!(
            Tpm2Backend::for_sealing(DEFAULT_DEVICE, "0,99", "sha256"),
            Err(BackendError::Config { .. })
        ));
        assert!(matches!(
            Tpm2Backend::for_sealing(DEFAULT_DEVICE, "7", "md5"),
            Err(BackendError::Config { .. })
        ));
        let b = Tpm2Backend::for_sealing(DEFAULT_DEVICE, "7,0", "sha256").unwrap();
        assert_eq!(b.selection.unwrap().pcrs(), &[0, 7]);
        assert!(Tpm2Backend::for_sealing(DEFAULT_DEVICE, "none", "sha256")
            .unwrap()
            .selection
            .is_none());
    }

    #[test]
    fn stanza_problems_are_stanza_errors() {
        let good_name = [0u8, 0x0b]
            .iter()
            .chain(&[1u8; 32])
            .copied()
            .collect::<Vec<u8>>();
        let cases = [
            Stanza::new(KIND),
            Stanza::new(KIND).with("bogus", "x"),
            Stanza::new(KIND).with_bytes(F_SRK_NAME, &[1, 2]),
            Stanza::new(KIND)
                .with_bytes(F_SRK_NAME, &good_name)
                .with(F_PCRS, "none")
                .with_bytes(F_POLICY, &[0u8; 32]),
            Stanza::new(KIND)
                .with_bytes(F_SRK_NAME, &good_name)
                .with(F_PCRS, "7")
                .with(F_BANK, "sha256")
                .with(F_VALUES, "7=00"),
        ];
        for stanza in cases {
            assert!(
                matches!(
                    SealedObject::from_stanza(&stanza),
                    Err(BackendError::Stanza { .. })
                ),
                "{stanza:?}"
            );
        }
    }

    #[test]
    fn device_errors_map_to_exit_classes() {
        let e = |cause, step| TpmError { step, cause };
        let unavailable = fail(
            "device:/dev/tpmrm0",
            e(Cause::NoDevice("/dev/tpmrm0".into()), Step::Connect),
        );
        assert!(matches!(
            unavailable,
            Fail::Final(BackendError::Unavailable { .. })
        ));
        let down = fail("swtpm:port=1", e(Cause::Rc(0xa000a), Step::Connect));
        assert!(matches!(
            down,
            Fail::Final(BackendError::Unavailable { .. })
        ));
        assert!(matches!(
            fail("x", e(Cause::Rc(0x922), Step::Unseal)),
            Fail::Retry(_)
        ));
        assert!(matches!(
            fail("x", e(Cause::Rc(0x921), Step::Unseal)),
            Fail::Final(BackendError::Refused { .. })
        ));
        assert!(matches!(
            fail("x", e(Cause::Rc(0x14c), Step::EvictControl)),
            Fail::Final(BackendError::Exists { .. })
        ));
        assert!(matches!(
            fail("x", e(Cause::BadTcti, Step::Connect)),
            Fail::Final(BackendError::Config { .. })
        ));
    }

    #[test]
    fn pcr_refusals_are_recognised_and_nothing_else() {
        let sel = PcrSelection::new(Bank::Sha256, &[0, 7]).unwrap();
        let which = "sha256 PCR 7 changed since sealing";
        assert_eq!(
            pcr_drift(&pcr_refusal("swtpm:port=1", &sel, which)),
            Some(which)
        );
        assert_eq!(
            pcr_drift(&pcr_refusal("x", &sel, PCRS_RACED)),
            Some(PCRS_RACED)
        );
        let other = match fail(
            "x",
            TpmError {
                step: Step::Load,
                cause: Cause::Rc(0x143),
            },
        ) {
            Fail::Final(e) => e,
            Fail::Retry(_) => panic!("retry"),
        };
        assert!(matches!(other, BackendError::Refused { .. }));
        assert_eq!(pcr_drift(&other), None);
    }

    #[test]
    fn tpm_not_started_or_failed_is_unavailable() {
        let e = |code| TpmError {
            step: Step::Unseal,
            cause: Cause::Rc(code),
        };
        // TPM_RC_INITIALIZE, TPM_RC_FAILURE (also relayed by /dev/tpmrm0).
        for code in [0x100, 0x101, 0xb0101] {
            assert!(
                matches!(
                    fail("x", e(code)),
                    Fail::Final(BackendError::Unavailable { .. })
                ),
                "{code:#x}"
            );
        }
        // Another TPM answer without a class is a refusal; an ESAPI-layer
        // code is not the TPM's answer.
        assert!(matches!(
            fail("x", e(0x143)),
            Fail::Final(BackendError::Refused { .. })
        ));
        assert!(matches!(
            fail("x", e(0x7000b)),
            Fail::Final(BackendError::Unavailable { .. })
        ));
    }

    #[test]
    fn only_owner_commands_blame_an_owner_password() {
        let reason = |step| match fail(
            "x",
            TpmError {
                step,
                cause: Cause::Rc(0x9a2),
            },
        ) {
            Fail::Final(BackendError::Refused { reason, .. }) => reason,
            _ => panic!("not a refusal"),
        };
        assert!(reason(Step::CreateSrk).contains("owner hierarchy has a password"));
        assert!(reason(Step::EvictControl).contains("owner hierarchy has a password"));
        assert!(!reason(Step::Unseal).contains("owner"));
        assert!(!reason(Step::Create).contains("owner"));
    }

    #[test]
    fn busy_is_retried_then_reported_as_busy() {
        let mut calls = 0;
        let started = std::time::Instant::now();
        let result: Result<(), _> = retrying("x", || {
            calls += 1;
            Err(Fail::Retry(TpmError {
                step: Step::Unseal,
                cause: Cause::Rc(0x922),
            }))
        });
        assert!(matches!(result, Err(BackendError::Busy { .. })));
        assert_eq!(calls, BACKOFF_MS.len() + 1);
        assert!(started.elapsed() >= Duration::from_millis(BACKOFF_MS.iter().sum()));
    }
}
