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
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => cli::exit::USAGE,
                _ => cli::exit::USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
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
