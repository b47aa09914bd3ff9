//! The `hotpair` binary: parse the arguments, hand them to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    hotpair::cli::run(hotpair::cli::Cli::parse())
}
