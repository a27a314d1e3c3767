//! `sesame tpm2 info` and `sesame tpm2 persist-srk`.

use clap::{Args, Subcommand};
use serde_json::json;
use sesame::backend::tpm2::{self, PcrSelection, PersistOutcome, SrkStatus, TpmInfo};
use sesame::backend::BackendError;

use super::backends::Tpm2DeviceArg;
use super::{CliError, Context};

/// `sesame tpm2 …`
#[derive(Debug, Args)]
pub struct Tpm2Args {
    #[command(subcommand)]
    command: Tpm2Command,
}

#[derive(Debug, Subcommand)]
enum Tpm2Command {
    /// Show the TPM: manufacturer, firmware, SRK, lockout, PCR values.
    Info(InfoArgs),
    /// Make the standard SRK persistent at 0x81000001 (admin, once per
    /// machine): every later unseal skips CreatePrimary. Exits 73 if the
    /// handle holds another key; succeeds if the standard SRK is already there.
    PersistSrk(PersistArgs),
}

#[derive(Debug, Args)]
struct InfoArgs {
    #[command(flatten)]
    device: Tpm2DeviceArg,
    /// PCRs to show (`none` for none).
    #[arg(long, value_name = "LIST", default_value = "0-7")]
    pcrs: String,
    /// PCR bank.
    #[arg(long, value_name = "BANK", default_value = "sha256")]
    pcr_bank: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PersistArgs {
    #[command(flatten)]
    device: Tpm2DeviceArg,
}

pub fn run(ctx: &Context, args: Tpm2Args) -> Result<(), CliError> {
    match args.command {
        Tpm2Command::Info(a) => info(ctx, a),
        Tpm2Command::PersistSrk(a) => persist(ctx, a),
    }
}

fn info(ctx: &Context, args: InfoArgs) -> Result<(), CliError> {
    let device = args.device.resolve(ctx);
    let what = format!("tpm2 info {device}");
    let bank = tpm2::Bank::parse(&args.pcr_bank).ok_or_else(|| {
        CliError::usage(
            &what,
            format!(
                "--pcr-bank {:?} is not sha1, sha256, sha384 or sha512",
                args.pcr_bank
            ),
            None,
        )
    })?;
    let selection = tpm2::parse_pcr_list(&args.pcrs)
        .and_then(|list| list.map(|l| PcrSelection::new(bank, &l)).transpose())
        .map_err(|e| CliError::usage(&what, format!("--pcrs: {e}"), None))?;
    let info = tpm2::info(&device, selection.as_ref()).map_err(|e| CliError::backend(&what, e))?;
    if args.json {
        println!("{}", info_json(&info));
    } else {
        print!("{}", info_text(&info));
    }
    Ok(())
}

fn srk_text(srk: &SrkStatus) -> (&'static str, Option<String>) {
    match srk {
        SrkStatus::Absent => ("absent", None),
        SrkStatus::Standard(name) => ("standard", Some(hex::encode(name))),
        SrkStatus::Other(name) => ("other-key", Some(hex::encode(name))),
    }
}

fn info_text(info: &TpmInfo) -> String {
    let mut out = String::new();
    out.push_str(&format!("device: {}\n", info.device));
    out.push_str(&format!("manufacturer: {}\n", info.manufacturer));
    out.push_str(&format!("vendor: {}\n", info.vendor));
    // The split of the two version words is vendor-specific: show them raw.
    out.push_str(&format!(
        "firmware: {:08x}.{:08x}\n",
        info.firmware.0, info.firmware.1
    ));
    out.push_str(&format!("spec: {}\n", info.spec));
    let (state, name) = srk_text(&info.srk);
    let srk = match (&info.srk, name) {
        (SrkStatus::Absent, _) => "srk: not persistent (each use creates it; `sesame tpm2 persist-srk` makes unseal cheaper)".to_owned(),
        (_, Some(name)) => format!("srk: persistent at {:#x} ({state}), name {name}", tpm2::SRK_HANDLE),
        (_, None) => format!("srk: {state}"),
    };
    out.push_str(&srk);
    out.push('\n');
    out.push_str(&format!("owner-auth-set: {}\n", info.owner_auth_set));
    out.push_str(&format!("lockout: {}\n", info.in_lockout));
    if let Some((sel, values)) = &info.pcrs {
        out.push_str(&format!("pcrs ({}):\n", sel.bank()));
        for (i, v) in sel.pcrs().iter().zip(values) {
            out.push_str(&format!("  {i:>2}: {}\n", hex::encode(v)));
        }
    }
    out
}

fn info_json(info: &TpmInfo) -> serde_json::Value {
    let (state, name) = srk_text(&info.srk);
    let pcrs = info.pcrs.as_ref().map(|(sel, values)| {
        let map: serde_json::Map<String, serde_json::Value> = sel
            .pcrs()
            .iter()
            .zip(values)
            .map(|(i, v)| (i.to_string(), json!(hex::encode(v))))
            .collect();
        json!({ "bank": sel.bank().name(), "values": map })
    });
    json!({
        "device": info.device,
        "manufacturer": info.manufacturer,
        "vendor": info.vendor,
        "firmware": [info.firmware.0, info.firmware.1],
        "spec": info.spec,
        "srk": { "handle": format!("{:#x}", tpm2::SRK_HANDLE), "state": state, "name": name },
        "owner_auth_set": info.owner_auth_set,
        "lockout": info.in_lockout,
        "pcrs": pcrs,
    })
}

fn persist(ctx: &Context, args: PersistArgs) -> Result<(), CliError> {
    let device = args.device.resolve(ctx);
    let what = format!("tpm2 persist-srk {device}");
    match tpm2::persist_srk(&device).map_err(|e: BackendError| CliError::backend(&what, e))? {
        PersistOutcome::Created(name) => println!(
            "persisted the standard SRK at {:#x} (name {})",
            tpm2::SRK_HANDLE,
            hex::encode(&name)
        ),
        PersistOutcome::AlreadyPresent(name) => println!(
            "the standard SRK is already persistent at {:#x} (name {}); nothing to do",
            tpm2::SRK_HANDLE,
            hex::encode(&name)
        ),
    }
    Ok(())
}
