//! The `depin-analytics` binary: `serve`, `demo`, `simulate`, `query`, `bench`.

use clap::Parser;

/// mimalloc instead of glibc malloc: ingest allocates a few strings per event across threads,
/// and glibc's fastbin consolidation over a large heap was ~40 % of the node's CPU (README,
/// BENCHMARKS).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Called by a runtime worker about to idle: at most once a second per worker, mimalloc
/// collects this thread's heap — takes in the blocks other threads freed into it, gives the
/// pages left empty back to its arena — and purges the arena ranges empty for longer than
/// its purge delay (1 s), returning them to the OS. Without it an idle node keeps much of
/// what its parked providers' actors freed: mimalloc otherwise collects only on a thread's
/// later allocations. `bench --quick`, every provider parked: 17.8–29.7 KiB a provider
/// without, 9.2–11.3 with this collect, 12.1–14.6 with a forced one (which also purges
/// what was freed a moment ago and is soon taken again); at 20k × 168 h: 14.0 →
/// 12.0–12.4 KiB (README, BENCHMARKS, session 12). Once a second a worker costs ingest
/// nothing measurable. It runs only when a worker goes idle after some work, so a node that
/// has gone quiet returns its memory at the next thing that wakes a worker: a shard's
/// parking timer (every quarter of `PASSIVATE_AFTER`), the coordinator's cycle, a call, an
/// etcd keep-alive.
fn return_freed_memory() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    let now = Instant::now();
    if LAST
        .get()
        .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
    {
        return;
    }
    LAST.set(Some(now));
    // SAFETY: mi_collect takes no pointers; it walks this thread's mimalloc heap and the
    // (thread-safe) arenas.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

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
        .on_thread_park(return_freed_memory)
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
