//! Backend flags shared by the commands, and building backends from them.

use std::io::IsTerminal as _;

use clap::{Args, ValueEnum};
use sesame::backend::pkcs11::{OaepHash, PinPrompt, PinSources, Pkcs11Backend};
use sesame::backend::tpm2::{self, Tpm2Backend};
use sesame::backend::KeyBackend;
use sesame::pin::{PinError, PinSource};

use super::{CliError, Context};

/// Backend options of `seal` (repeatable: every backend wraps the same key).
#[derive(Debug, Args)]
pub struct SealBackendArgs {
    /// Seal to the TPM 2.0.
    #[arg(long)]
    pub tpm2: bool,
    #[command(flatten)]
    pub tpm2_device: Tpm2DeviceArg,
    /// PCRs the TPM policy binds to: `none` (this TPM alone), or a list like `7` or `0,7`
    /// [default: none].
    #[arg(long, value_name = "LIST", requires = "tpm2")]
    pub tpm2_pcrs: Option<String>,
    /// PCR bank for --tpm2-pcrs [default: sha256].
    #[arg(long, value_name = "BANK", requires = "tpm2")]
    pub tpm2_pcr_bank: Option<String>,
    /// Seal to the key named by this RFC 7512 PKCS#11 URI (repeatable), e.g.
    /// `pkcs11:token=sesame;object=ses-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sesame/hsm.pin`.
    #[arg(long = "pkcs11", value_name = "URI")]
    pub pkcs11: Vec<String>,
    /// RSA-OAEP hash for --pkcs11 keys that are RSA [default: sha256]. SoftHSM 2.6
    /// supports only sha1.
    #[arg(long, value_name = "HASH", value_parser = parse_oaep_hash, requires = "pkcs11")]
    pub pkcs11_oaep_hash: Option<OaepHash>,
    /// Read the PKCS#11 PIN from here instead of the URI's pin-source (`file:PATH`;
    /// not recorded in the sealed file) [default: the URI's pin-source, else
    /// pkcs11_pin_source from the config file, else a prompt on a terminal].
    #[arg(long, value_name = "SOURCE", requires = "pkcs11")]
    pub pkcs11_pin_source: Option<String>,
}

/// `--tpm2-device`, shared by every command that talks to a TPM.
#[derive(Debug, Args)]
pub struct Tpm2DeviceArg {
    /// TPM TCTI, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`
    /// [default: device:/dev/tpmrm0].
    #[arg(long = "tpm2-device", env = "SESAME_TPM2_DEVICE", value_name = "TCTI")]
    pub tpm2_device: Option<String>,
}

impl Tpm2DeviceArg {
    /// Flag or environment, then the config file, then the default.
    pub fn resolve(&self, ctx: &Context) -> String {
        self.tpm2_device
            .clone()
            .or_else(|| ctx.config.tpm2_device.clone())
            .unwrap_or_else(|| tpm2::DEFAULT_DEVICE.to_owned())
    }
}

/// The backend types `unseal --backend` can restrict to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Only TPM 2.0 stanzas.
    Tpm2,
    /// Only PKCS#11 stanzas.
    Pkcs11,
}

/// Backend options of `unseal` and friends.
#[derive(Debug, Args)]
pub struct UnsealBackendArgs {
    #[command(flatten)]
    pub tpm2_device: Tpm2DeviceArg,
    /// Read the PKCS#11 PIN from here instead of the URI's pin-source (`file:PATH`)
    /// [default: the URI's pin-source, else pkcs11_pin_source from the config
    /// file, else a prompt on a terminal].
    #[arg(long, value_name = "SOURCE")]
    pub pkcs11_pin_source: Option<String>,
    /// Try only this backend's stanzas (default: every stanza, in file order).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
}

impl UnsealBackendArgs {
    /// Where PKCS#11 PINs come from: see [`pkcs11_pins`].
    ///
    /// # Errors
    /// A malformed `--pkcs11-pin-source` or config `pkcs11_pin_source`.
    pub fn pkcs11_pins(&self, ctx: &Context) -> Result<PinSources, CliError> {
        pkcs11_pins(ctx, self.pkcs11_pin_source.as_deref())
    }
}

/// Where PKCS#11 PINs come from, for every command: the `--pkcs11-pin-source`
/// flag wins over a URI's own `pin-source`; the config file's
/// `pkcs11_pin_source` is only a default for URIs without one; after them, a
/// prompt on the terminal (see [`PinSources`]).
///
/// # Errors
/// A malformed flag or config value (exit 78).
pub fn pkcs11_pins(ctx: &Context, flag: Option<&str>) -> Result<PinSources, CliError> {
    let parse = |text: Option<&str>, what: &str| {
        text.map(PinSource::parse)
            .transpose()
            .map_err(|e| CliError::pin(what, e))
    };
    Ok(PinSources {
        overriding: parse(flag, "--pkcs11-pin-source")?,
        fallback: parse(
            ctx.config.pkcs11_pin_source.as_deref(),
            "pkcs11_pin_source in the config file",
        )?,
    })
}

/// A PIN prompt on the controlling terminal, if there is one. The backend
/// calls it only when no flag, URI or config setting names a PIN source.
pub fn terminal_pin_prompt() -> Option<PinPrompt> {
    if !std::io::stderr().is_terminal() || std::fs::File::open("/dev/tty").is_err() {
        return None;
    }
    Some(Box::new(|token: &str| {
        rpassword::prompt_password(format!("PIN for PKCS#11 token {token:?}: "))
            .map(sesame::secret::Pin::from)
            .map_err(|_| PinError::NoSource)
    }))
}

/// Builds the backends `seal` wraps with, in command-line order (TPM first).
/// `what` names the operation and file in errors (`seal /etc/sesame/x.sealed`);
/// the backend's own message names the backend.
///
/// # Errors
/// Usage or backend configuration errors.
pub fn for_sealing(
    ctx: &Context,
    args: &SealBackendArgs,
    what: &str,
) -> Result<Vec<Box<dyn KeyBackend>>, CliError> {
    let mut out: Vec<Box<dyn KeyBackend>> = Vec::new();
    if args.tpm2 {
        let device = args.tpm2_device.resolve(ctx);
        let pcrs = args
            .tpm2_pcrs
            .clone()
            .or_else(|| ctx.config.tpm2_pcrs.clone())
            .unwrap_or_else(|| "none".into());
        let bank = args
            .tpm2_pcr_bank
            .clone()
            .or_else(|| ctx.config.tpm2_pcr_bank.clone())
            .unwrap_or_else(|| "sha256".into());
        let backend = Tpm2Backend::for_sealing(&device, &pcrs, &bank)
            .map_err(|e| CliError::backend(what, e))?;
        out.push(Box::new(backend));
    }
    let oaep_hash = args.pkcs11_oaep_hash.unwrap_or(OaepHash::DEFAULT);
    let pins = if args.pkcs11.is_empty() {
        PinSources::default()
    } else {
        pkcs11_pins(ctx, args.pkcs11_pin_source.as_deref())?
    };
    for uri in &args.pkcs11 {
        let backend = Pkcs11Backend::for_sealing(uri, pins.clone(), terminal_pin_prompt())
            .map_err(|e| CliError::backend(what, e))?
            .with_oaep_hash(oaep_hash);
        out.push(Box::new(backend));
    }
    if out.is_empty() {
        return Err(CliError::usage(
            what,
            "no key backend given",
            Some("add --tpm2 and/or --pkcs11 URI"),
        ));
    }
    Ok(out)
}

/// Builds the backends `unseal` may try.
///
/// # Errors
/// A malformed `--pkcs11-pin-source` or config `pkcs11_pin_source`.
pub fn for_unsealing(
    ctx: &Context,
    args: &UnsealBackendArgs,
) -> Result<Vec<Box<dyn KeyBackend>>, CliError> {
    let mut out: Vec<Box<dyn KeyBackend>> = Vec::new();
    if args.backend.is_none_or(|b| b == BackendKind::Tpm2) {
        out.push(Box::new(Tpm2Backend::for_unsealing(
            &args.tpm2_device.resolve(ctx),
        )));
    }
    if args.backend.is_none_or(|b| b == BackendKind::Pkcs11) {
        out.push(Box::new(Pkcs11Backend::for_unsealing(
            args.pkcs11_pins(ctx)?,
            terminal_pin_prompt(),
        )));
    }
    Ok(out)
}

/// `--pkcs11-oaep-hash`: `sha1`, `sha256`, `sha384` or `sha512`.
pub fn parse_oaep_hash(text: &str) -> Result<OaepHash, String> {
    OaepHash::parse(text)
        .ok_or_else(|| format!("{text:?} is not one of sha1, sha256, sha384, sha512"))
}

/// The backends' stanza types joined with `,` (e.g. `tpm2,pkcs11`), for
/// audit records.
pub fn kinds(backends: &[Box<dyn KeyBackend>]) -> String {
    let kinds: Vec<&str> = backends.iter().map(|b| b.kind()).collect();
    kinds.join(",")
}
