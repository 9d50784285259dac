//! `continuum`: the one binary. Subcommands wire the crates together; all the
//! logic lives in `crates/`.

mod alloc;
mod appointments;
mod bench;
mod cli;
mod ivr;
mod plan;

use clap::Parser;

// glibc malloc showed up at ~7% of server CPU under append load (perf).
#[global_allocator]
static GLOBAL: alloc::Counting<mimalloc::MiMalloc> = alloc::Counting(mimalloc::MiMalloc);

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
