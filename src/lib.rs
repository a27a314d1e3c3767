//! sesame seals small secrets (AWS SES SMTP credentials first) to a machine's
//! hardware root: a TPM 2.0 or a PKCS#11 HSM.
//!
//! A fresh 256-bit data key encrypts the secret document with AES-256-GCM, the
//! file's header bound in as associated data ([`envelope`]). The data key is
//! wrapped by one or more [`backend::KeyBackend`]s, one stanza each, in the
//! sealed-file format ([`format`], specified in `docs/FORMAT.md`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backend;
pub mod config;
pub mod envelope;
pub mod format;
pub mod fsio;
pub mod harden;
pub mod output;
pub mod pin;
pub mod secret;
pub mod ses;
pub mod status;
pub mod systemd;
