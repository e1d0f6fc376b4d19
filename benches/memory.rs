//! Where a provider's memory goes (issue 7): live heap bytes, counted by the allocator, per
//! provider with a full week (168 h) of history, taken apart piece by piece.
//!
//! A simulated fleet (seed 42) runs a week through `ProviderState::apply` as in the
//! analytics bench; then, on a counting wrapper around mimalloc (the node's allocator):
//! the states alone, the states inside one shard actor's provider actors, the shard's
//! candidate index and summaries after one `Summaries` call, the coordinator's snapshot
//! built from them (two cycles, as a node holds it), and the shard after its providers are
//! parked (no actor, the state encoded). Each as bytes asked for and as bytes of mimalloc's
//! blocks (its size classes). Heap, not RSS: pages the allocator keeps and the process's
//! fixed cost are left out (the `bench` command reports RSS).
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
use depin_analytics::analytics::view::{self, AnalyticsSnapshot};
use depin_analytics::config::AnalyticsConfig;
use depin_analytics::model::ShardId;

struct Counting;

/// Live heap bytes, as asked for.
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Live heap bytes in the blocks mimalloc gave for them (its size classes).
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

fn block(p: *mut u8) -> isize {
    // SAFETY: `p` is a live block of mimalloc's (or null, for which it answers 0).
    unsafe { libmimalloc_sys::mi_usable_size(p.cast()) as isize }
}

fn count(asked: isize, p: *mut u8, sign: isize) {
    LIVE.fetch_add(sign * asked, Ordering::Relaxed);
    BLOCKS.fetch_add(sign * block(p), Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc(l) };
        count(l.size() as isize, p, 1);
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(l.size() as isize, p, -1);
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(l) };
        count(l.size() as isize, p, 1);
        p
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(l.size() as isize, p, -1);
        let q = unsafe { mimalloc::MiMalloc.realloc(p, l, new) };
        if q.is_null() {
            count(l.size() as isize, p, 1);
        } else {
            count(new as isize, q, 1);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Live heap: (bytes asked for, bytes in mimalloc's blocks).
#[derive(Clone, Copy)]
struct Heap(isize, isize);

impl std::ops::Sub for Heap {
    type Output = Heap;
    fn sub(self, o: Heap) -> Heap {
        Heap(self.0 - o.0, self.1 - o.1)
    }
}

impl std::ops::Add for Heap {
    type Output = Heap;
    fn add(self, o: Heap) -> Heap {
        Heap(self.0 + o.0, self.1 + o.1)
    }
}

fn live() -> Heap {
    Heap(LIVE.load(Ordering::Relaxed), BLOCKS.load(Ordering::Relaxed))
}

const PROVIDERS: usize = 2_000;
const HOURS: u32 = 168;

fn per(h: Heap) -> String {
    let p = |b: isize| b as f64 / PROVIDERS as f64;
    format!("{:>8.0} B {:>8.0} B", p(h.0), p(h.1))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cfg = AnalyticsConfig::default();
    let sim = common::simulate(&cfg, PROVIDERS, HOURS);
    let (states, now) = (sim.states, sim.now);
    let full = states
        .iter()
        .filter(|s| s.window.len() == HOURS as usize)
        .count();
    println!(
        "{PROVIDERS} simulated providers x {HOURS} h ({full} with a full window); heap bytes per provider,\n\
         asked for and in mimalloc's blocks (its size classes):"
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
    let for_cycles = summaries.clone();
    let before = live();
    drop(summaries);
    let summaries_bytes = before - live();
    println!(
        "  one cycle's summaries (to the coordinator) {}",
        per(summaries_bytes)
    );
    // What the coordinator publishes and every node holds: a cycle's summaries, tiers and
    // rank orders, with the previous cycle's orders kept for rank changes.
    let before = live();
    let first = view::cycle(
        vec![for_cycles.clone()],
        &AnalyticsSnapshot::default(),
        &cfg,
        now,
        0,
    );
    let second = view::cycle(vec![for_cycles.clone()], &first, &cfg, now, 0);
    drop(first);
    let snapshot_bytes = live() - before;
    println!(
        "  the coordinator's published snapshot      {}",
        per(snapshot_bytes)
    );
    drop((second, for_cycles));
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
    println!(
        "  a parked provider in all (parked + index + snapshot) {}",
        per(live_shard + delta + with_index - summaries_bytes + snapshot_bytes)
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
        (live() - before).0
    );
    shard.stop(None);
    let _ = handle.await;

    // What parking and a read of a parked provider cost in time (one thread).
    let copies = states.clone();
    let t = Instant::now();
    let parked: Vec<Parked> = copies
        .into_iter()
        .map(|s| Parked::new(s, Vec::new(), &cfg))
        .collect();
    let encode = t.elapsed();
    let timed = |decode: fn(&Parked) -> ProviderState| {
        let t = Instant::now();
        let mut events = 0;
        for p in &parked {
            events += std::hint::black_box(decode(p)).lifetime.events_ingested;
        }
        assert!(events > 0);
        t.elapsed()
    };
    // each once untimed first (warm caches and allocator), then timed in turn
    timed(Parked::state);
    timed(Parked::state_for_reading);
    let decode = timed(Parked::state);
    let head = timed(Parked::state_for_reading);
    let full_week = parked.iter().map(Parked::encoded_len).sum::<usize>() / parked.len();
    println!(
        "encode (park) {:.1} µs, decode (a wake, a snapshot, a handoff) {:.1} µs, decode without the event ids (a read, a summary) {:.1} µs per provider; {full_week} B encoded",
        encode.as_secs_f64() * 1e6 / PROVIDERS as f64,
        decode.as_secs_f64() * 1e6 / PROVIDERS as f64,
        head.as_secs_f64() * 1e6 / PROVIDERS as f64,
    );
}
