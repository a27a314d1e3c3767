//! The `sesame` command: a thin layer over the library.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // Before anything secret is in memory: a crash must not write a core file.
    if let Err(e) = sesame::harden::disable_core_dumps() {
        eprintln!("sesame: cannot disable core dumps: {e} (refusing to handle secrets)");
        return ExitCode::from(cli::exit::SOFTWARE);
    }
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                // `sesame` or `sesame pkcs11` alone: the help is the answer.
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(cli::exit::USAGE)
                }
                // Errors are one line like every other sesame error; clap's
                // first line says what was wrong, the rest is usage help.
                _ => {
                    let rendered = e.render().to_string();
                    let message: Vec<&str> = rendered
                        .lines()
                        .take_while(|l| !l.trim().is_empty())
                        .map(str::trim)
                        .collect();
                    let message = message.join(" ");
                    let why = message.strip_prefix("error: ").unwrap_or(&message);
                    eprintln!("sesame: usage: {why} (see sesame --help)");
                    ExitCode::from(cli::exit::USAGE)
                }
            };
        }
    };
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_silent() {
                eprintln!("sesame: {e}");
            }
            ExitCode::from(e.code)
        }
    }
}
