//! `sesame pkcs11 …`: token tools. The work is in
//! [`sesame::backend::pkcs11`]; this only parses flags and prints.

use clap::{Args, Subcommand, ValueEnum};
use sesame::backend::pkcs11::{self, NewKey};

use super::backends::{pkcs11_pins, terminal_pin_prompt};
use super::{CliError, Context};

/// `sesame pkcs11 <command>`
#[derive(Debug, Subcommand)]
pub enum Pkcs11Command {
    /// Create a non-extractable key to seal to, labelled with the URI's object=.
    ///
    /// Refuses (exit 73) if any object on the token already has that label.
    /// Prints a URI naming exactly the new key (with its id).
    CreateKey(CreateKeyArgs),
}

/// The key types `create-key` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyTypeArg {
    /// AES-256 secret key (seal uses AES-GCM; not on YubiHSM 2).
    Aes,
    /// RSA key pair (seal uses RSA-OAEP; sealing needs only the public key).
    Rsa,
}

/// `sesame pkcs11 create-key URI --type aes|rsa [--bits N]`
#[derive(Debug, Args)]
pub struct CreateKeyArgs {
    /// RFC 7512 URI naming the token, the new key's label (object=), the
    /// module-path and where the PIN is (pin-source=).
    #[arg(value_name = "URI")]
    uri: String,
    /// Key type.
    #[arg(long = "type", value_enum)]
    key_type: KeyTypeArg,
    /// RSA modulus size.
    #[arg(long, default_value_t = 3072, value_parser = parse_bits)]
    bits: u32,
    /// Read the PIN from here instead of the URI's pin-source (`file:PATH`)
    /// [default: the URI's pin-source, else pkcs11_pin_source from the config
    /// file, else a prompt on a terminal].
    // `--pin-source` was its name before it matched the other commands.
    #[arg(long, alias = "pin-source", value_name = "SOURCE")]
    pkcs11_pin_source: Option<String>,
}

fn parse_bits(text: &str) -> Result<u32, String> {
    match text {
        "2048" => Ok(2048),
        "3072" => Ok(3072),
        "4096" => Ok(4096),
        _ => Err("use 2048, 3072 or 4096".into()),
    }
}

pub fn run(ctx: &Context, cmd: Pkcs11Command) -> Result<(), CliError> {
    match cmd {
        Pkcs11Command::CreateKey(args) => create_key(ctx, args),
    }
}

fn create_key(ctx: &Context, args: CreateKeyArgs) -> Result<(), CliError> {
    let what = "pkcs11 create-key";
    let pins = pkcs11_pins(ctx, args.pkcs11_pin_source.as_deref())?;
    let new = match args.key_type {
        KeyTypeArg::Aes => NewKey::Aes,
        KeyTypeArg::Rsa => NewKey::Rsa { bits: args.bits },
    };
    let created = pkcs11::create_key(&args.uri, new, &pins, terminal_pin_prompt())
        .map_err(|e| CliError::backend(what, e))?;
    println!(
        "created {} key {:?} (id {}) on token {:?}",
        created.mechanism,
        created.label,
        hex::encode(&created.id),
        created.token
    );
    println!("uri: {}", created.uri);
    Ok(())
}
