//! PCR selections and authorisation policies, computed in software.
//!
//! The sealed object's `authPolicy` is a hash chain the TPM recomputes in a
//! policy session (TPM 2.0 Part 1 §19.7). Computing it here instead of in a
//! trial session saves TPM commands at seal time and lets `unseal` check that
//! a stanza's PCR values, policy digest and public area agree before it spends
//! any command on them. Pure code over bytes, no TPM.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// `TPM_CC_PolicyPCR`.
const CC_POLICY_PCR: u32 = 0x0000_017F;
/// `TPM_CC_PolicyCommandCode`.
const CC_POLICY_COMMAND_CODE: u32 = 0x0000_016C;
/// `TPM_CC_Unseal`.
const CC_UNSEAL: u32 = 0x0000_015E;
/// PC Client TPMs have 24 PCRs; `sizeofSelect` is therefore 3 octets.
pub const PCR_COUNT: u8 = 24;
const SIZE_OF_SELECT: u8 = 3;

/// Length of a policy digest (the session and object hash is SHA-256).
pub const POLICY_DIGEST_LEN: usize = 32;

/// A PCR bank (the hash algorithm of the PCR values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bank {
    /// SHA-1 (legacy; most TPMs still allocate it).
    Sha1,
    /// SHA-256 (the default, and the bank EC2 NitroTPM measures into).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Bank {
    /// Parses `sha1`, `sha256`, `sha384` or `sha512`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            "sha384" => Some(Self::Sha384),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// The name as written in the stanza and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// `TPM_ALG_ID` of the bank's hash.
    pub fn alg_id(self) -> u16 {
        match self {
            Self::Sha1 => 0x0004,
            Self::Sha256 => 0x000B,
            Self::Sha384 => 0x000C,
            Self::Sha512 => 0x000D,
        }
    }

    /// Length of one PCR value in this bank.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

impl fmt::Display for Bank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of PCR indices in one bank, ascending and without duplicates (the
/// order in which the TPM concatenates their values for `PolicyPCR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrSelection {
    bank: Bank,
    pcrs: Vec<u8>,
}

impl PcrSelection {
    /// A selection of `pcrs` (any order, duplicates folded) in `bank`.
    ///
    /// # Errors
    /// A message when the list is empty or an index is 24 or more.
    pub fn new(bank: Bank, pcrs: &[u8]) -> Result<Self, String> {
        if pcrs.is_empty() {
            return Err("the PCR list is empty".into());
        }
        if let Some(bad) = pcrs.iter().find(|&&p| p >= PCR_COUNT) {
            return Err(format!(
                "PCR {bad} does not exist (PCRs are 0–{})",
                PCR_COUNT - 1
            ));
        }
        let mut pcrs = pcrs.to_vec();
        pcrs.sort_unstable();
        pcrs.dedup();
        Ok(Self { bank, pcrs })
    }

    /// The bank.
    pub fn bank(&self) -> Bank {
        self.bank
    }

    /// The PCR indices, ascending.
    pub fn pcrs(&self) -> &[u8] {
        &self.pcrs
    }

    /// The list as written in the stanza, e.g. `0,7`.
    pub fn list(&self) -> String {
        self.pcrs
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `TPML_PCR_SELECTION` holding this selection, marshalled exactly as
    /// tss-esapi sends it (one `TPMS_PCR_SELECTION`, `sizeofSelect` 3): the
    /// TPM hashes the bytes it received, so these must match.
    pub fn marshal(&self) -> Vec<u8> {
        let mut bitmap = [0u8; SIZE_OF_SELECT as usize];
        for &pcr in &self.pcrs {
            bitmap[usize::from(pcr / 8)] |= 1 << (pcr % 8);
        }
        let mut out = Vec::with_capacity(10);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&self.bank.alg_id().to_be_bytes());
        out.push(SIZE_OF_SELECT);
        out.extend_from_slice(&bitmap);
        out
    }
}

/// Parses `--tpm2-pcrs`: `none` (or empty) for no PCRs, else a comma list
/// like `0,7`. Ranges like `0-7` are accepted for convenience.
///
/// # Errors
/// A message naming the part that does not parse.
pub fn parse_pcr_list(text: &str) -> Result<Option<Vec<u8>>, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let mut out = Vec::new();
    for part in text.split([',', '+']) {
        let part = part.trim();
        let parse = |s: &str| {
            s.trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p < PCR_COUNT)
                .ok_or_else(|| {
                    format!(
                        "{s:?} is not a PCR index 0–{} (use e.g. 7 or 0,7, or none)",
                        PCR_COUNT - 1
                    )
                })
        };
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (parse(lo)?, parse(hi)?);
                if lo > hi {
                    return Err(format!("range {part:?} is backwards"));
                }
                out.extend(lo..=hi);
            }
            None => out.push(parse(part)?),
        }
    }
    Ok(Some(out))
}

/// `PolicyPCR` extended into a fresh session: `H(0³² ‖ CC_PolicyPCR ‖
/// TPML_PCR_SELECTION ‖ H(values))`, where `values` are the selected PCRs'
/// values in ascending order and `H` is SHA-256 (the session's hash, whatever
/// the bank).
pub fn policy_pcr(selection: &PcrSelection, values: &[&[u8]]) -> [u8; POLICY_DIGEST_LEN] {
    let mut h = Sha256::new();
    h.update([0u8; POLICY_DIGEST_LEN]);
    h.update(CC_POLICY_PCR.to_be_bytes());
    h.update(selection.marshal());
    h.update(pcr_digest(values));
    h.finalize().into()
}

/// The `pcrDigest` argument of `PolicyPCR`: SHA-256 over the concatenated values.
pub fn pcr_digest(values: &[&[u8]]) -> [u8; POLICY_DIGEST_LEN] {
    let mut h = Sha256::new();
    for v in values {
        h.update(v);
    }
    h.finalize().into()
}

/// `PolicyCommandCode(TPM_CC_Unseal)` extended into a fresh session: the policy
/// for `--tpm2-pcrs none`. See `docs/tpm2.md` for why this is enough.
pub fn policy_unseal_only() -> [u8; POLICY_DIGEST_LEN] {
    let mut h = Sha256::new();
    h.update([0u8; POLICY_DIGEST_LEN]);
    h.update(CC_POLICY_COMMAND_CODE.to_be_bytes());
    h.update(CC_UNSEAL.to_be_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pcr_lists() {
        assert_eq!(parse_pcr_list("none").unwrap(), None);
        assert_eq!(parse_pcr_list("").unwrap(), None);
        assert_eq!(parse_pcr_list("7").unwrap(), Some(vec![7]));
        assert_eq!(parse_pcr_list("0, 7").unwrap(), Some(vec![0, 7]));
        assert_eq!(parse_pcr_list("0-2,7").unwrap(), Some(vec![0, 1, 2, 7]));
        for bad in ["24", "x", "7,", "-1", "3-1", "256"] {
            assert!(parse_pcr_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selection_sorts_and_marshals() {
        let s = PcrSelection::new(Bank::Sha256, &[7, 0, 7, 16]).unwrap();
        assert_eq!(s.pcrs(), &[0, 7, 16]);
        assert_eq!(s.list(), "0,7,16");
        assert_eq!(hex::encode(s.marshal()), "00000001000b03810001");
        assert!(PcrSelection::new(Bank::Sha1, &[]).is_err());
        assert!(PcrSelection::new(Bank::Sha1, &[24]).is_err());
    }

    #[test]
    fn known_policy_digests() {
        // Reference values from tpm2-tools 5.4 trial sessions on a fresh
        // swtpm (all PCRs zero): `tpm2_policycommandcode 0x15e` and
        // `tpm2_policypcr -l sha256:7` / `-l sha256:0,7`.
        assert_eq!(
            hex::encode(policy_unseal_only()),
            "e613137076524bde487533865884e9732ebee3aacb095d94a6de492ec06c46fa"
        );
        let zero = [0u8; 32];
        let s7 = PcrSelection::new(Bank::Sha256, &[7]).unwrap();
        assert_eq!(
            hex::encode(policy_pcr(&s7, &[&zero])),
            "8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b"
        );
        let s07 = PcrSelection::new(Bank::Sha256, &[7, 0]).unwrap();
        assert_eq!(
            hex::encode(policy_pcr(&s07, &[&zero, &zero])),
            "02e3642b3e29eeccfffd8031c00a6f0a0febe5ceea2f6ef6b0322fe81598cf31"
        );
    }

    #[test]
    fn banks() {
        for b in [Bank::Sha1, Bank::Sha256, Bank::Sha384, Bank::Sha512] {
            assert_eq!(Bank::parse(b.name()), Some(b));
        }
        assert_eq!(Bank::parse("SHA256"), Some(Bank::Sha256));
        assert_eq!(Bank::parse("sm3"), None);
    }
}
