//! Where a provider's memory goes (issue 7): live heap bytes, counted by the allocator, per
//! provider with a full week (168 h) of history, taken apart piece by piece.
//!
//! A simulated fleet (seed 42) runs a week through `ProviderState::apply` as in the
//! analytics bench; then, on a counting wrapper around mimalloc (the node's allocator):
//! the states alone, the states inside one shard actor's provider actors, the shard's
//! candidate index and summaries after one `Summaries` call, and the shard after its
//! providers are parked (no actor, the state encoded). Heap bytes, not RSS: allocator slack
//! and the process's fixed cost are left out (the `bench` command reports RSS).
//!
//! Run: `cargo bench --bench memory`.

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use depin_analytics::actors::provider::{CapturedState, Parked};
use depin_analytics::actors::shard::{ShardActor, ShardArgs, ShardMsg};
use depin_analytics::actors::{NodeShared, ShardMode};
use depin_analytics::analytics::state::ProviderState;
use depin_analytics::analytics::view::AnalyticsSnapshot;
use depin_analytics::config::AnalyticsConfig;
use depin_analytics::model::ShardId;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const PROVIDERS: usize = 2_000;
const HOURS: u32 = 168;

fn per(bytes: isize) -> String {
    format!("{:>8.0} B", bytes as f64 / PROVIDERS as f64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cfg = AnalyticsConfig::default();
    let states = common::simulate(&cfg, PROVIDERS, HOURS).states;
    let full = states
        .iter()
        .filter(|s| s.window.len() == HOURS as usize)
        .count();
    println!(
        "{PROVIDERS} simulated providers x {HOURS} h ({full} with a full window); heap bytes per provider:"
    );

    // The states alone, each a fresh deep copy (no spare capacity from the simulation).
    let before = live();
    let copies: Vec<ProviderState> = states.to_vec();
    let state_bytes = live() - before;
    println!(
        "  state (ProviderState, in memory)        {}",
        per(state_bytes)
    );
    drop(copies);

    let (_snap_tx, snapshot) = tokio::sync::watch::channel(Arc::new(AnalyticsSnapshot::default()));
    // Passivation off, so the restored states start live; parking is asked for below.
    let live_cfg = AnalyticsConfig {
        passivate_after: Duration::ZERO,
        ..cfg.clone()
    };
    let shared = NodeShared::new(live_cfg, snapshot, None, 1, None);
    let before = live();
    let args = ShardArgs {
        id: ShardId(0),
        shared: shared.clone(),
        restored: states.clone(),
        mode: ShardMode::Active,
    };
    let (shard, handle) = ractor::Actor::spawn(None, ShardActor, args)
        .await
        .expect("spawn");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let live_shard = live() - before;
    println!(
        "  live: state + provider actor + map       {}  (actor and map: {})",
        per(live_shard),
        per(live_shard - state_bytes)
    );

    let before = live();
    let summaries = ractor::call!(shard, ShardMsg::Summaries).expect("summaries");
    let with_index = live() - before;
    let before = live();
    drop(summaries);
    let summaries_bytes = before - live();
    println!(
        "  one cycle's summaries (to the coordinator) {}",
        per(summaries_bytes)
    );
    println!(
        "  the shard's candidate index              {}",
        per(with_index - summaries_bytes)
    );

    let before = live();
    let parked =
        ractor::call!(shard, |r| ShardMsg::ParkIdle(Duration::ZERO, Some(r))).expect("park");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let delta = live() - before;
    println!(
        "  parked {parked}: state encoded, no actor        {}  (change {})",
        per(live_shard + delta),
        per(delta)
    );

    let before = live();
    let woken = CapturedState::decode_all(ractor::call!(shard, ShardMsg::States).expect("states"));
    assert_eq!(woken.len(), PROVIDERS);
    let mut a = woken.clone();
    a.sort_by(|x, y| x.id.cmp(&y.id));
    let mut b = states.clone();
    b.sort_by(|x, y| x.id.cmp(&y.id));
    let bits = |s: &[ProviderState]| {
        bincode::serde::encode_to_vec(s, bincode::config::standard()).expect("encodes")
    };
    assert!(
        bits(&a) == bits(&b),
        "parked states read back differ from the originals"
    );
    drop((a, b, woken));
    println!(
        "  (states read back from parked providers equal the originals; {} B moved)",
        live() - before
    );
    shard.stop(None);
    let _ = handle.await;

    // What parking and a read of a parked provider cost in time (one thread).
    let copies = states.clone();
    let t = Instant::now();
    let parked: Vec<Parked> = copies
        .into_iter()
        .map(|s| Parked::new(s, Vec::new()))
        .collect();
    let encode = t.elapsed();
    let t = Instant::now();
    let mut events = 0;
    for p in &parked {
        events += std::hint::black_box(p.state()).lifetime.events_ingested;
    }
    let decode = t.elapsed();
    assert!(events > 0);
    let full_week = parked.iter().map(Parked::encoded_len).sum::<usize>() / parked.len();
    println!(
        "encode (park) {:.1} µs, decode (a read or a summary of a parked provider) {:.1} µs per provider; {full_week} B encoded",
        encode.as_secs_f64() * 1e6 / PROVIDERS as f64,
        decode.as_secs_f64() * 1e6 / PROVIDERS as f64,
    );
}
