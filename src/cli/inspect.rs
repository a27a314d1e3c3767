//! `sesame inspect`: the header, without hardware.

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Map, Value};
use sesame::format::{self, Header};
use sesame::fsio;

use super::{CliError, Context};

/// `sesame inspect FILE [--json]`
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The sealed file.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Fields longer than this are summarised in text output (wrapped blobs).
const LONG_VALUE: usize = 72;

pub fn run(_ctx: &Context, args: InspectArgs) -> Result<(), CliError> {
    let what = format!("inspect {}", args.file.display());
    let bytes =
        fsio::read_bounded(&args.file, format::MAX_FILE_LEN).map_err(|e| CliError::io(&what, e))?;
    // The whole file is parsed (not just the header) so that a truncated body
    // is reported here, before anyone relies on the file at boot.
    let header = format::parse(&bytes)
        .map_err(|e| CliError::unseal(&what, sesame::envelope::UnsealError::Format(e)))?
        .header;
    if args.json {
        println!("{}", to_json(&args.file, &header));
    } else {
        print!("{}", to_text(&args.file, &header));
    }
    Ok(())
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
