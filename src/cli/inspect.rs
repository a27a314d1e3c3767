//! `sesame inspect`: the header, without hardware.

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Map, Value};
use sesame::backend::tpm2;
use sesame::format::{self, Header, Stanza};
use sesame::fsio;

use super::backends::Tpm2DeviceArg;
use super::{CliError, Context};

/// `sesame inspect FILE [--json]`
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The sealed file.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Check TPM2 stanzas against this TPM (pre-flight: would unseal succeed
    /// now?). Without it, the configured device or /dev/tpmrm0 is checked
    /// when present; the header alone needs no hardware.
    #[command(flatten)]
    tpm2: Tpm2DeviceArg,
}

/// Fields longer than this are summarised in text output (wrapped blobs).
const LONG_VALUE: usize = 72;

pub fn run(ctx: &Context, args: InspectArgs) -> Result<(), CliError> {
    let what = format!("inspect {}", args.file.display());
    let bytes =
        fsio::read_bounded(&args.file, format::MAX_FILE_LEN).map_err(|e| CliError::io(&what, e))?;
    // The whole file is parsed (not just the header) so that a truncated body
    // is reported here, before anyone relies on the file at boot.
    let header = format::parse(&bytes)
        .map_err(|e| CliError::unseal(&what, sesame::envelope::UnsealError::Format(e)))?
        .header;
    let device = preflight_device(ctx, &args.tpm2);
    let notes: Vec<Option<Tpm2Notes>> = header
        .stanzas
        .iter()
        .map(|s| (s.kind == tpm2::KIND).then(|| tpm2_notes(s, device.as_deref())))
        .collect();
    if args.json {
        let mut value = to_json(&args.file, &header);
        if let Some(stanzas) = value.get_mut("stanzas").and_then(Value::as_array_mut) {
            for (stanza, note) in stanzas.iter_mut().zip(&notes) {
                if let (Some(obj), Some(note)) = (stanza.as_object_mut(), note) {
                    obj.insert("binding".into(), note.binding_json.clone());
                    obj.insert("preflight".into(), note.preflight_json.clone());
                }
            }
        }
        println!("{value}");
    } else {
        let mut text = to_text(&args.file, &header);
        for (i, note) in notes.iter().enumerate() {
            if let Some(note) = note {
                text.push_str(&format!(
                    "stanza {} ({}): {}\n",
                    i + 1,
                    tpm2::KIND,
                    note.binding_text
                ));
                text.push_str(&format!(
                    "stanza {} ({}): pre-flight: {}\n",
                    i + 1,
                    tpm2::KIND,
                    note.preflight_text
                ));
            }
        }
        print!("{text}");
    }
    Ok(())
}

/// The TPM to pre-flight against: flag or environment, config, else the
/// default device if this machine has one. `None`: no TPM to check.
fn preflight_device(ctx: &Context, arg: &Tpm2DeviceArg) -> Option<String> {
    arg.tpm2_device
        .clone()
        .or_else(|| ctx.config.tpm2_device.clone())
        .or_else(|| {
            let default = tpm2::DEFAULT_DEVICE.trim_start_matches("device:");
            std::path::Path::new(default)
                .exists()
                .then(|| tpm2::DEFAULT_DEVICE.to_owned())
        })
}

struct Tpm2Notes {
    binding_text: String,
    binding_json: Value,
    preflight_text: String,
    preflight_json: Value,
}

/// The binding of a TPM2 stanza and, with a device, whether it would unseal
/// now. Never fails `inspect`: problems become text.
fn tpm2_notes(stanza: &Stanza, device: Option<&str>) -> Tpm2Notes {
    let binding = tpm2::binding(stanza);
    let (binding_text, binding_json) = match &binding {
        Ok(b) => {
            let srk = hex::encode(&b.srk_name);
            match &b.pcrs {
                None => (
                    format!("bound to the TPM alone (no PCRs), SRK name {srk}"),
                    json!({ "pcrs": "none", "srk_name": srk }),
                ),
                Some((sel, _)) => (
                    format!(
                        "bound to {} PCRs {} and the TPM, SRK name {srk}",
                        sel.bank(),
                        sel.list()
                    ),
                    json!({ "pcrs": sel.list(), "bank": sel.bank().name(), "srk_name": srk }),
                ),
            }
        }
        Err(e) => (
            format!("unreadable: {e}"),
            json!({ "error": e.to_string() }),
        ),
    };
    let (preflight_text, preflight_json) = match device {
        None => (
            "not checked (no TPM here; pass --tpm2-device)".to_owned(),
            json!({ "checked": false }),
        ),
        Some(device) => match binding.and_then(|b| tpm2::preflight(&b, device)) {
            Ok(r) if !r.same_tpm => (
                format!("WOULD FAIL: sealed to a different TPM than {device}"),
                json!({ "checked": true, "device": device, "ok": false, "same_tpm": false, "changed_pcrs": [] }),
            ),
            Ok(r) => {
                let changed = r.changed();
                let text = if r.would_unseal() {
                    format!("ok: {device} would unseal it now (same TPM, PCRs unchanged)")
                } else {
                    let list: Vec<String> = changed.iter().map(u8::to_string).collect();
                    format!(
                        "WOULD FAIL: {} PCR {} changed since sealing (TPM {device})",
                        r.bank.map_or("", |b| b.name()),
                        list.join(",")
                    )
                };
                (
                    text,
                    json!({ "checked": true, "device": device, "ok": r.would_unseal(), "same_tpm": true, "changed_pcrs": changed }),
                )
            }
            Err(e) => (
                format!("not checked: {e}"),
                json!({ "checked": false, "device": device, "error": e.to_string() }),
            ),
        },
    };
    Tpm2Notes {
        binding_text,
        binding_json,
        preflight_text,
        preflight_json,
    }
}

fn to_json(path: &std::path::Path, header: &Header) -> Value {
    let stanzas: Vec<Value> = header
        .stanzas
        .iter()
        .map(|s| {
            let fields: Map<String, Value> = s
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({ "type": s.kind, "fields": fields })
        })
        .collect();
    json!({
        "file": path.display().to_string(),
        "version": format::VERSION,
        "created": header.created,
        "generation": header.generation,
        "name": header.name,
        "aead": header.aead.id(),
        "stanzas": stanzas,
    })
}

fn to_text(path: &std::path::Path, header: &Header) -> String {
    let mut out = String::new();
    out.push_str(&format!("file: {}\n", path.display()));
    out.push_str(&format!("format: {} v{}\n", format::MAGIC, format::VERSION));
    out.push_str(&format!("created: {}\n", header.created));
    out.push_str(&format!("generation: {}\n", header.generation));
    if let Some(name) = &header.name {
        out.push_str(&format!("name: {name}\n"));
    }
    out.push_str(&format!("aead: {}\n", header.aead.id()));
    for (i, stanza) in header.stanzas.iter().enumerate() {
        out.push_str(&format!("stanza {}: {}\n", i + 1, stanza.kind));
        for (key, value) in &stanza.fields {
            if value.len() > LONG_VALUE {
                out.push_str(&format!("  {key}: <{} characters>\n", value.len()));
            } else {
                out.push_str(&format!("  {key}: {value}\n"));
            }
        }
    }
    out
}
