//! The `hotpair` binary: parse the arguments, hand them to the library.

use clap::Parser;

/// Records are built on the data port's threads and freed on the applier's; glibc's malloc
/// made that cross-thread traffic about 7% of a loaded primary's CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hotpair::cli::run(hotpair::cli::Cli::parse())
}
