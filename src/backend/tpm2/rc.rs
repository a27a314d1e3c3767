//! TSS2 response codes, classified by what sesame should do about them.
//!
//! tss-esapi 7.6 keeps the raw `TSS2_RC` behind a bitfield newtype; its
//! `kind()` ignores the layer byte, so a TCTI I/O error and a TPM error can
//! share a kind. We classify the raw 32-bit code instead (TPM 2.0 Part 2
//! §6.6, TSS 2.0 TCTI/ESAPI layer numbers).

use bitfield::BitRange as _;
use tss_esapi::constants::response_code::Tss2ResponseCode;
use tss_esapi::Error as TssError;

/// Layer byte (bits 16–23) of a TSS2_RC.
const LAYER_MASK: u32 = 0x00FF_0000;
/// The TPM itself.
const LAYER_TPM: u32 = 0;
/// The TCTI (transport): the TPM could not be reached.
const LAYER_TCTI: u32 = 10 << 16;
/// A resource manager relaying a TPM response code (`/dev/tpmrm0`, tabrmd).
const LAYER_RESMGR_TPM: u32 = 11 << 16;
/// A resource manager's own errors.
const LAYER_RESMGR: u32 = 12 << 16;

/// Format-one response code flag.
const RC_FMT1: u32 = 0x080;
/// Format-zero "warning" (severity) flag.
const RC_WARN: u32 = 0x800;

/// What a response code means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RcClass {
    /// The transport failed: device missing, connection refused or dropped.
    Unreachable,
    /// Try again shortly: RETRY, YIELDED, TESTING, NV rate limits, or no free
    /// object/session slot (another process holds them; there may be no
    /// resource manager).
    Transient,
    /// Dictionary-attack lockout.
    Lockout,
    /// TPM_RC_VALUE (format one, error 4): from `PolicyPCR` it means the
    /// current PCR digest differs from the sealed one.
    Value,
    /// TPM_RC_POLICY_FAIL: the session does not satisfy the object's policy.
    PolicyFail,
    /// Wrong authorisation (AUTH_FAIL, BAD_AUTH): e.g. an owner password set.
    AuthFail,
    /// TPM_RC_HANDLE: the handle (e.g. a persistent SRK) does not exist.
    Handle,
    /// TPM_RC_NV_DEFINED: the persistent handle is taken.
    NvDefined,
    /// INTEGRITY/BINDING/KEY/SIZE and similar on `Load`: the blob was not
    /// made by (or for) this parent.
    BadBlob,
    /// The hierarchy is disabled (TPM_RC_HIERARCHY).
    Hierarchy,
    /// The TPM cannot serve any command: not started (TPM_RC_INITIALIZE),
    /// in failure mode (TPM_RC_FAILURE) or waiting for a reboot
    /// (TPM_RC_REBOOT). Not a refusal of this request.
    NotOperational,
    /// Anything else.
    Other,
}

/// The raw `TSS2_RC` of a tss-esapi error, or `None` for errors raised by the
/// Rust wrapper itself (bad parameters, unmarshalling).
pub fn raw(e: &TssError) -> Option<u32> {
    match e {
        TssError::Tss2Error(Tss2ResponseCode::Success) => Some(0),
        TssError::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => Some(rc.bit_range(31, 0)),
        TssError::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => Some(rc.bit_range(31, 0)),
        TssError::WrapperError(_) => None,
    }
}

/// Classifies a raw `TSS2_RC`.
pub fn classify(rc: u32) -> RcClass {
    let layer = rc & LAYER_MASK;
    if layer == LAYER_TCTI || layer == LAYER_RESMGR {
        return RcClass::Unreachable;
    }
    if !is_tpm_answer(rc) {
        return RcClass::Other;
    }
    let code = rc & 0xFFFF;
    if code & RC_FMT1 != 0 {
        return match code & 0x3F {
            0x04 => RcClass::Value,
            0x05 => RcClass::Hierarchy,
            0x0B => RcClass::Handle,
            0x0E | 0x22 => RcClass::AuthFail,
            0x1D => RcClass::PolicyFail,
            0x15 | 0x1C | 0x1F | 0x25 => RcClass::BadBlob,
            _ => RcClass::Other,
        };
    }
    if code & RC_WARN != 0 {
        return match code & 0x7F {
            // OBJECT_MEMORY, SESSION_MEMORY, MEMORY, SESSION_HANDLES,
            // OBJECT_HANDLES, YIELDED, TESTING, NV_RATE, RETRY, NV_UNAVAILABLE
            0x02..=0x06 | 0x08 | 0x0A | 0x20 | 0x22 | 0x23 => RcClass::Transient,
            0x21 => RcClass::Lockout,
            _ => RcClass::Other,
        };
    }
    match code {
        0x100 | 0x101 | 0x130 => RcClass::NotOperational,
        0x14C => RcClass::NvDefined,
        _ => RcClass::Other,
    }
}

/// Whether a raw `TSS2_RC` is the TPM's own answer (directly, or relayed by
/// a resource manager) rather than a transport, ESAPI or other TSS-layer
/// error.
pub fn is_tpm_answer(rc: u32) -> bool {
    let layer = rc & LAYER_MASK;
    layer == LAYER_TPM || layer == LAYER_RESMGR_TPM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_codes_seen_on_swtpm() {
        assert_eq!(classify(0x1c4), RcClass::Value);
        assert_eq!(classify(0x99d), RcClass::PolicyFail);
        assert_eq!(classify(0xa000a), RcClass::Unreachable);
        assert_eq!(classify(0x14c), RcClass::NvDefined);
        assert_eq!(classify(0x18b), RcClass::Handle);
        assert_eq!(classify(0x922), RcClass::Transient);
        assert_eq!(classify(0x908), RcClass::Transient);
        assert_eq!(classify(0x90a), RcClass::Transient);
        assert_eq!(classify(0x921), RcClass::Lockout);
        assert_eq!(classify(0x9a2), RcClass::AuthFail);
        assert_eq!(classify(0x98e), RcClass::AuthFail);
        assert_eq!(classify(0x1df), RcClass::BadBlob);
        // The same TPM code relayed by the kernel resource manager.
        assert_eq!(classify(0xb0922), RcClass::Transient);
        // An ESAPI-layer code is not a TPM answer.
        assert_eq!(classify(0x7000b), RcClass::Other);
        // Not started, failure mode, needs a reboot.
        assert_eq!(classify(0x100), RcClass::NotOperational);
        assert_eq!(classify(0x101), RcClass::NotOperational);
        assert_eq!(classify(0xb0101), RcClass::NotOperational);
        assert_eq!(classify(0x130), RcClass::NotOperational);
    }

    #[test]
    fn tpm_answers_are_told_from_tss_errors() {
        assert!(is_tpm_answer(0x1c4));
        assert!(is_tpm_answer(0xb0922));
        assert!(!is_tpm_answer(0xa000a));
        assert!(!is_tpm_answer(0x7000b));
        assert!(!is_tpm_answer(0xc0001));
    }
}
