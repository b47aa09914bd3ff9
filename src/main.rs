//! The `hotpair` binary: parse the arguments, hand them to the library — or, for `hotpair bench`,
//! to the measurements in `bench/`, which belong to this binary and not to the library (see
//! docs/architecture.md, "Layout").

use clap::{CommandFactory, FromArgMatches, Subcommand};

mod bench;

/// Records are built on the data port's threads and freed on the applier's; glibc's malloc
/// made that cross-thread traffic about 7% of a loaded primary's CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let bench = clap::Command::new("bench")
        .about("Benchmarks, each against a baseline measured in the same run")
        .subcommand_required(true)
        .arg_required_else_help(true);
    let matches = hotpair::cli::Cli::command().subcommand(bench::BenchWhich::augment_subcommands(bench)).get_matches();
    match matches.subcommand() {
        Some(("bench", which)) => {
            let which = bench::BenchWhich::from_arg_matches(which).unwrap_or_else(|err| err.exit());
            hotpair::cli::run_with(|| bench::run(which))
        }
        _ => hotpair::cli::run(hotpair::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())),
    }
}
