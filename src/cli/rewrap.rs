//! `sesame rewrap` (same secret, new backend set) and `sesame rotate` (new
//! secret, same backend set): the administrators' enrolment and rotation
//! commands. Both replace FILE atomically with generation + 1 and a fresh
//! data key; the old file is untouched on every failure.

use std::path::{Path, PathBuf};

use clap::Args;
use sesame::backend::{self, pkcs11, tpm2, KeyBackend, Local};
use sesame::envelope::{self, SealOptions, UnsealError};
use sesame::format::{self, Header};
use sesame::fsio::{self, IoError};

use super::audit::{Audit, Outcome};
use super::backends::{self, BackendKind, SealBackendArgs, Tpm2DeviceArg, UnsealBackendArgs};
use super::{exit, CliError, Context};

/// The backends `rewrap` adds. The same flags as `seal`, except
/// `--tpm2-device`, which is shared with unsealing (one TPM per machine).
#[derive(Debug, Args)]
pub struct NewBackendArgs {
    /// Seal to this machine's TPM 2.0 (replaces any kept tpm2 stanza).
    #[arg(long)]
    tpm2: bool,
    /// PCRs the new TPM policy binds to: `none`, or a list like `7` or `0,7` [default: none].
    #[arg(long, value_name = "LIST", requires = "tpm2")]
    tpm2_pcrs: Option<String>,
    /// PCR bank for --tpm2-pcrs [default: sha256].
    #[arg(long, value_name = "BANK", requires = "tpm2")]
    tpm2_pcr_bank: Option<String>,
    /// Seal to the key named by this RFC 7512 PKCS#11 URI (repeatable).
    #[arg(long = "pkcs11", value_name = "URI")]
    pkcs11: Vec<String>,
    /// RSA-OAEP hash for --pkcs11 keys that are RSA [default: sha256].
    #[arg(long, value_name = "HASH", value_parser = backends::parse_oaep_hash, requires = "pkcs11")]
    pkcs11_oaep_hash: Option<pkcs11::OaepHash>,
}

/// `sesame rewrap FILE [--tpm2 …] [--pkcs11 URI …] [--keep[=TYPES]]`
#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// The sealed file, replaced in place (atomically; mode and group kept).
    file: PathBuf,
    /// Also seal to the backends of the existing stanzas (all, or only the
    /// listed types: `--keep=pkcs11`, `--keep=tpm2,pkcs11`): PKCS#11 stanzas to their recorded
    /// URI and key, TPM2 stanzas to this TPM (--tpm2-device) with their
    /// recorded PCR selection and bank, against the PCR values now. A tpm2
    /// stanza of another TPM cannot be kept (exit 77). Without --keep, only
    /// the backends given on the command line wrap the new file.
    #[arg(long, value_enum, value_name = "TYPES", num_args = 0.., require_equals = true,
          value_delimiter = ',', hide_possible_values = true)]
    keep: Option<Vec<BackendKind>>,
    /// Replace the name stored in clear in the header (default: keep it).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    new: NewBackendArgs,
    #[command(flatten)]
    unseal: UnsealBackendArgs,
}

/// `sesame rotate FILE [--no-verify] < new secret`
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The sealed file, replaced in place (atomically; mode and group kept).
    file: PathBuf,
    /// Do not unseal the existing file first. By default rotate proves it runs
    /// where the file can be opened (the right machine, the right TPM, the
    /// PCRs the file expects) before sealing anything; skip that after a
    /// planned PCR change, when the old TPM stanza no longer unseals. The new
    /// file is then sealed against the PCR values now.
    #[arg(long, conflicts_with = "backend")]
    no_verify: bool,
    /// Replace the name stored in clear in the header (default: keep it).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    unseal: UnsealBackendArgs,
    #[command(flatten)]
    ses: super::ses::SesSealArgs,
}

/// What the audit event of a rewrap or rotation reports.
#[derive(Default)]
struct Done {
    generation: Option<u64>,
    backends: Option<String>,
    pcrs: Option<String>,
}

impl Done {
    fn emit(&self, event: &'static str, file: &Path, result: &Result<(), CliError>) {
        let reason = result.as_ref().err().map(ToString::to_string);
        Audit {
            file: Some(file),
            backend: self.backends.as_deref(),
            pcrs: self.pcrs.as_deref(),
            generation: self.generation,
            outcome: if result.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
            reason: reason.as_deref(),
            ..Audit::new(event, event)
        }
        .emit();
    }

    /// Records what was written.
    fn written(&mut self, sealed: &[u8]) {
        if let Ok(header) = format::parse_header_only(sealed) {
            self.generation = Some(header.generation);
            self.backends = Some(header.kinds());
            self.pcrs = header
                .stanzas
                .iter()
                .find(|s| s.kind == tpm2::KIND)
                .and_then(|s| s.field("pcrs"))
                .map(str::to_owned);
        }
    }
}

pub fn run_rewrap(ctx: &Context, args: RewrapArgs) -> Result<(), CliError> {
    let mut done = Done::default();
    let result = rewrap(ctx, &args, &mut done);
    done.emit("rewrap", &args.file, &result);
    result
}

pub fn run_rotate(ctx: &Context, args: RotateArgs) -> Result<(), CliError> {
    let mut done = Done::default();
    let result = rotate(ctx, &args, &mut done);
    done.emit("rotate", &args.file, &result);
    result
}

fn rewrap(ctx: &Context, args: &RewrapArgs, done: &mut Done) -> Result<(), CliError> {
    let what = format!("rewrap {}", args.file.display());
    let (path, bytes, header) = read_existing(&what, &args.file)?;
    done.generation = Some(header.generation);

    // Everything that can be checked without hardware, before touching any.
    let device = args.unseal.tpm2_device.resolve(ctx);
    let mut sealers: Vec<Box<dyn KeyBackend>> = Vec::new();
    if args.new.tpm2 || !args.new.pkcs11.is_empty() {
        let seal_args = SealBackendArgs {
            tpm2: args.new.tpm2,
            tpm2_device: Tpm2DeviceArg {
                tpm2_device: Some(device.clone()),
            },
            tpm2_pcrs: args.new.tpm2_pcrs.clone(),
            tpm2_pcr_bank: args.new.tpm2_pcr_bank.clone(),
            pkcs11: args.new.pkcs11.clone(),
            pkcs11_oaep_hash: args.new.pkcs11_oaep_hash,
            pkcs11_pin_source: args.unseal.pkcs11_pin_source.clone(),
        };
        sealers = backends::for_sealing(ctx, &seal_args, &what)?;
    }
    if let Some(keep) = &args.keep {
        let pins = args.unseal.pkcs11_pins(ctx)?;
        let local = Local {
            tpm2_device: &device,
            pkcs11_pins: &pins,
            pin_prompt: &backends::terminal_pin_prompt,
        };
        for stanza in &header.stanzas {
            let listed = keep.is_empty() || keep.iter().any(|k| stanza.kind == kind_name(*k));
            // A backend named on the command line supersedes the stanza it
            // would duplicate: --tpm2 (this TPM) any kept tpm2 stanza, --pkcs11
            // URI a kept stanza of the same key.
            let superseded = (stanza.kind == tpm2::KIND && args.new.tpm2)
                || (stanza.kind == pkcs11::KIND
                    && args
                        .new
                        .pkcs11
                        .iter()
                        .any(|uri| pkcs11::names_same_key(stanza, uri)));
            if listed && !superseded {
                sealers.push(
                    backend::sealer_for(stanza, &local)
                        .map_err(|e| CliError::backend(format!("{what}: keep"), e))?,
                );
            }
        }
    }
    if sealers.is_empty() {
        return Err(CliError::usage(
            &what,
            "no backend to seal to",
            Some("add --tpm2 and/or --pkcs11 URI, or --keep to keep the existing ones"),
        ));
    }
    // TPM first, as `seal` writes them: unseal tries stanzas in file order.
    sealers.sort_by_key(|b| b.kind() != tpm2::KIND);
    done.backends = Some(backends::kinds(&sealers));

    let unsealed =
        super::unseal::unseal_bytes_for(ctx, &args.file, &bytes, &args.unseal, "rewrap")?;
    let mut options =
        SealOptions::rewrap_of(&unsealed.header).map_err(|e| CliError::seal(&what, e))?;
    if args.name.is_some() {
        options.name.clone_from(&args.name);
    }
    let mut refs: Vec<&mut dyn KeyBackend> = sealers.iter_mut().map(|b| b.as_mut() as _).collect();
    let sealed = envelope::seal(&unsealed.document, &options, &mut refs)
        .map_err(|e| CliError::seal(&what, e))?;
    replace(&what, &path, &bytes, &sealed)?;
    done.written(&sealed);
    Ok(())
}

fn rotate(ctx: &Context, args: &RotateArgs, done: &mut Done) -> Result<(), CliError> {
    let what = format!("rotate {}", args.file.display());
    let (path, bytes, header) = read_existing(&what, &args.file)?;
    done.generation = Some(header.generation);
    done.backends = Some(header.kinds());

    let device = args.unseal.tpm2_device.resolve(ctx);
    let pins = args.unseal.pkcs11_pins(ctx)?;
    let local = Local {
        tpm2_device: &device,
        pkcs11_pins: &pins,
        pin_prompt: &backends::terminal_pin_prompt,
    };
    let mut sealers = header
        .stanzas
        .iter()
        .map(|stanza| backend::sealer_for(stanza, &local))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::backend(&what, e))?;
    let mut options = SealOptions::rotation_of(&header).map_err(|e| CliError::seal(&what, e))?;
    if args.name.is_some() {
        options.name.clone_from(&args.name);
    }

    if args.no_verify {
        tracing::warn!(file = %path.display(), "rotating without unsealing the existing file first (--no-verify)");
    } else {
        // Proves access before the new secret is even read; the old
        // document is dropped (and zeroized) at once.
        drop(super::unseal::unseal_bytes_for(
            ctx,
            &args.file,
            &bytes,
            &args.unseal,
            "rotate",
        )?);
    }
    let document =
        super::seal::read_secret(args.ses.prompt_fields()).map_err(|e| e.with_what(&what))?;
    let document = args
        .ses
        .finish(document, &options.created)
        .map_err(|e| e.with_what(&what))?;
    let mut refs: Vec<&mut dyn KeyBackend> = sealers.iter_mut().map(|b| b.as_mut() as _).collect();
    let sealed =
        envelope::seal(&document, &options, &mut refs).map_err(|e| CliError::seal(&what, e))?;
    replace(&what, &path, &bytes, &sealed)?;
    done.written(&sealed);
    Ok(())
}

/// Resolves `file` (a symlink is followed, so that the link stays a link),
/// reads it and parses its header. A missing file is 66, a malformed one 65.
fn read_existing(what: &str, file: &Path) -> Result<(PathBuf, Vec<u8>, Header), CliError> {
    let path = std::fs::canonicalize(file).map_err(|source| {
        CliError::io(
            what,
            IoError::Read {
                path: file.to_owned(),
                source,
            },
        )
    })?;
    let bytes =
        fsio::read_bounded(&path, format::MAX_FILE_LEN).map_err(|e| CliError::io(what, e))?;
    // The whole file, so that a truncated body is refused before any work.
    let header = format::parse(&bytes)
        .map_err(|e| CliError::unseal(what, UnsealError::Format(e)))?
        .header;
    Ok((path, bytes, header))
}

/// Atomically replaces `path` (read as `old`) with `new`, keeping its
/// permission bits and group. Refuses if the file changed in the meantime
/// (another admin's rewrap or rotation): that one would be lost.
fn replace(what: &str, path: &Path, old: &[u8], new: &[u8]) -> Result<(), CliError> {
    let (_, options) = fsio::options_to_replace(path).map_err(|e| CliError::io(what, e))?;
    let current =
        fsio::read_bounded(path, format::MAX_FILE_LEN).map_err(|e| CliError::io(what, e))?;
    if current != old {
        return Err(CliError::new(
            exit::TEMPFAIL,
            what,
            format!("{} changed while it was being re-sealed", path.display()),
            Some("run the command again"),
        ));
    }
    fsio::write_atomic(path, new, &options).map_err(|e| CliError::io(what, e))
}

fn kind_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Tpm2 => tpm2::KIND,
        BackendKind::Pkcs11 => pkcs11::KIND,
    }
}
