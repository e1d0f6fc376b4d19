//! The `depin-analytics` binary: `serve`, `demo`, `simulate`, `query`, `bench`.

use clap::Parser;

/// mimalloc instead of glibc malloc: ingest allocates a few strings per event across threads,
/// and glibc's fastbin consolidation over a large heap was ~40 % of the node's CPU (README,
/// BENCHMARKS).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = depin_analytics::cli::Cli::parse();
    if matches!(cli.command, depin_analytics::cli::Command::Query(_)) {
        // `query ... | head` ends quietly, as Unix tools do, instead of panicking on EPIPE.
        // SAFETY: resetting a signal disposition to its default before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(depin_analytics::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
