//! Fuzz targets (proptest, stable Rust): event validation, WAL record decoding and snapshot
//! decoding must never panic on any input, and decoding must never allocate more than a
//! bounded multiple of its input (a damaged length field cannot ask for gigabytes).
//!
//! A normal `cargo test` runs each target for a few hundred cases. The extended mode runs
//! each target for a bounded time and prints the executions done:
//!
//! ```sh
//! FUZZ_SECONDS=60 cargo test --release --test fuzz -- --nocapture --test-threads 1
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use depin_analytics::gateway::validate;
use depin_analytics::proto::v1 as pb;
use depin_analytics::storage::{snapshot, wal};
use pb::telemetry_event::Payload;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;

// ------------------------------------------------------------------ allocation watch

/// Tracks the largest single allocation of the current thread.
struct Watch;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|c| c.set(c.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|c| c.set(c.get().max(layout.size())));
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|c| c.set(c.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Watch = Watch;

/// Runs `f` and fails the case when it allocated more than 64 × `input_len` + 2 MiB at once
/// (the bounded decoder's limit plus serde's capped pre-allocation).
fn bounded_alloc<T>(input_len: usize, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    LARGEST.with(|c| c.set(0));
    let out = f();
    let largest = LARGEST.with(|c| c.get());
    let bound = input_len.saturating_mul(64) + (2 << 20);
    if largest > bound {
        return Err(TestCaseError::fail(format!(
            "allocated {largest} bytes at once decoding {input_len} bytes (bound {bound})"
        )));
    }
    Ok(out)
}

// ------------------------------------------------------------------ runner

/// Runs a target: a few hundred cases, or with `FUZZ_SECONDS` set, batches of cases until
/// that many seconds have passed; prints the executions done.
fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let seconds: Option<u64> = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds.unwrap_or(0));
    let mut total = 0u64;
    // Per target (targets run on parallel threads).
    let executions = AtomicU64::new(0);
    loop {
        let mut runner = TestRunner::new(Config {
            cases: if seconds.is_some() { 2000 } else { cases },
            failure_persistence: None,
            max_shrink_iters: 2000,
            ..Config::default()
        });
        executions.store(0, Ordering::Relaxed);
        let result = runner.run(&strategy, |v| {
            executions.fetch_add(1, Ordering::Relaxed);
            test(v)
        });
        total += executions.load(Ordering::Relaxed);
        if let Err(e) = result {
            panic!("fuzz target {name} failed after {total} executions: {e}");
        }
        if seconds.is_none() || Instant::now() >= deadline {
            break;
        }
    }
    println!(
        "fuzz {name}: {total} executions in {:.1} s, no failure",
        started.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------ strategies

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        proptest::num::f64::ANY,
        -2.0..2.0f64,
        0.0..1e7f64,
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-0.0),
        Just(f64::MAX),
    ]
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._:-]{0,20}",
        "[A-Za-z0-9._:-]{120,140}",
        any::<String>(),
        "[ -~]{0,70}",
        Just(String::new()),
    ]
}

fn any_enum() -> impl Strategy<Value = i32> {
    prop_oneof![0..6i32, any::<i32>()]
}

fn any_spec() -> impl Strategy<Value = pb::ProviderSpec> {
    (
        any_text(),
        any::<u32>(),
        any_f64(),
        proptest::collection::vec(
            (any_text(), any::<u32>(), any_f64()).prop_map(|(model, count, vram_gb)| pb::GpuSpec {
                model,
                count,
                vram_gb,
            }),
            0..20,
        ),
        any_f64(),
        any_f64(),
    )
        .prop_map(
            |(region, cpu_cores, memory_gb, gpus, storage_gb, price_per_hour)| pb::ProviderSpec {
                region,
                cpu_cores,
                memory_gb,
                gpus,
                storage_gb,
                price_per_hour,
            },
        )
}

fn any_payload() -> impl Strategy<Value = Option<Payload>> {
    prop_oneof![
        Just(None),
        (
            any_enum(),
            any_f64(),
            any::<bool>(),
            any::<u32>(),
            any_f64()
        )
            .prop_map(|(status, duration_seconds, sla_met, error_code, cost)| {
                Some(Payload::JobOutcome(pb::JobOutcome {
                    status,
                    duration_seconds,
                    sla_met,
                    error_code,
                    cost,
                }))
            }),
        any_enum().prop_map(|status| Some(Payload::Heartbeat(pb::Heartbeat { status }))),
        (any_f64(), any::<bool>()).prop_map(|(response_time_ms, is_error)| {
            Some(Payload::ResponseTime(pb::ResponseTimeSample {
                response_time_ms,
                is_error,
            }))
        }),
        (any_f64(), any_f64(), any_f64()).prop_map(|(cpu, gpu, memory)| {
            Some(Payload::Utilization(pb::UtilizationSample {
                cpu,
                gpu,
                memory,
            }))
        }),
        any_spec().prop_map(|s| Some(Payload::Spec(s))),
    ]
}

fn any_seconds() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        1_600_000_000..1_900_000_000i64,
        Just(i64::MAX),
        Just(i64::MIN),
    ]
}

fn any_event() -> impl Strategy<Value = pb::TelemetryEvent> {
    (
        any_text(),
        any_text(),
        proptest::option::of((any_seconds(), any::<i32>())),
        any_payload(),
    )
        .prop_map(|(event_id, provider_id, ts, payload)| pb::TelemetryEvent {
            event_id,
            provider_id,
            timestamp: ts.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
            payload,
        })
}

/// What an accepted event must satisfy.
fn check_accepted(e: &depin_analytics::model::TelemetryEvent) -> Result<(), TestCaseError> {
    use depin_analytics::model::EventPayload as P;
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    prop_assert!(e.timestamp >= 0);
    prop_assert!(!e.event_id.is_empty() && e.event_id.len() <= validate::MAX_ID_LEN);
    match &e.payload {
        P::Utilization(u) => {
            for v in [u.cpu, u.gpu, u.memory] {
                prop_assert!(ok(v) && v <= 1.0, "{u:?}");
            }
        }
        P::ResponseTime(r) => prop_assert!(ok(r.response_time_ms)),
        P::JobOutcome(j) => prop_assert!(ok(j.duration_seconds) && ok(j.cost)),
        P::Spec(s) => {
            prop_assert!(ok(s.memory_gb) && ok(s.storage_gb) && ok(s.price_per_hour));
            for g in &s.gpus {
                prop_assert!(g.count >= 1 && ok(g.vram_gb) && !g.model.is_empty());
            }
        }
        P::Heartbeat(_) => {}
    }
    Ok(())
}

// ------------------------------------------------------------------ targets

#[test]
fn fuzz_event_validation() {
    fuzz(
        "event_validation",
        512,
        (
            any_event(),
            any_seconds(),
            any_seconds(),
            any_seconds(),
            any::<u32>(),
        ),
        |(ev, wall_now, skew, reference, window)| {
            if let Ok(e) = validate::event(ev, wall_now, skew, None) {
                check_accepted(&e)?;
                let _ = validate::in_window(e, reference, window);
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_event_decoding_and_validation_from_bytes() {
    fuzz(
        "ingest_batch_bytes",
        512,
        proptest::collection::vec(any::<u8>(), 0..512),
        |bytes| {
            if let Ok(batch) = pb::IngestBatch::decode(bytes.as_slice()) {
                for ev in batch.events {
                    if let Ok(e) = validate::event(ev, 1_800_000_000, 300, None) {
                        check_accepted(&e)?;
                    }
                }
            }
            Ok(())
        },
    );
}

/// A frame around `payload` with a correct length and checksum, so the decoder behind the
/// checksum is what gets fuzzed.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn sample_record() -> Vec<u8> {
    use depin_analytics::model::{EventPayload, Heartbeat, HeartbeatStatus, ProviderId};
    let rec = wal::WalRecord {
        shard: 3,
        events: (0..4)
            .map(|i| depin_analytics::model::TelemetryEvent {
                event_id: format!("e-{i}"),
                provider_id: ProviderId::new("prov-1"),
                timestamp: 1_700_000_000 + i,
                payload: EventPayload::Heartbeat(Heartbeat {
                    status: HeartbeatStatus::Online,
                }),
            })
            .collect(),
    };
    wal::encode(&rec)
}

/// Flips bytes of `base` at the given positions.
fn mutate(base: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
    let mut b = base.to_vec();
    if b.is_empty() {
        return b;
    }
    for (pos, x) in edits {
        let n = b.len();
        b[pos % n] ^= x;
    }
    b
}

#[test]
fn fuzz_wal_decoding() {
    let record = sample_record();
    let payload = record[8..].to_vec();
    let strategy = prop_oneof![
        // Raw bytes.
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|b| b),
        // A valid frame around arbitrary bytes.
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|p| frame(&p)),
        // A real record with bytes changed, checksum fixed.
        proptest::collection::vec((any::<usize>(), 1..=255u8), 1..6)
            .prop_map(move |edits| frame(&mutate(&payload, &edits))),
        // Real records with a damaged header or tail.
        (
            proptest::collection::vec((any::<usize>(), 1..=255u8), 0..3),
            0..64usize
        )
            .prop_map({
                let record = record.clone();
                move |(edits, cut)| {
                    let mut two = record.clone();
                    two.extend_from_slice(&record);
                    let mut b = mutate(&two, &edits);
                    b.truncate(b.len().saturating_sub(cut));
                    b
                }
            }),
    ];
    fuzz("wal_decoding", 512, strategy, |bytes| {
        let (records, err) = bounded_alloc(bytes.len(), || wal::decode_segment(&bytes))?;
        prop_assert!(records.len() <= bytes.len() / 8 + 1);
        if let Some((off, _)) = err {
            prop_assert!(off <= bytes.len());
        }
        Ok(())
    });
}

fn sample_snapshot() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        use depin_analytics::analytics::state::{ProviderState, StateParams};
        use depin_analytics::model::{EventPayload, JobOutcome, JobStatus, ShardId};
        let p = StateParams::default();
        let states: Vec<ProviderState> = (0..2)
            .map(|i| {
                let mut s = ProviderState::new(format!("p{i}").as_str().into(), &p);
                for t in 0..4 {
                    let ev = depin_analytics::model::TelemetryEvent {
                        event_id: format!("e{i}-{t}"),
                        provider_id: s.id.clone(),
                        timestamp: 3600 * 1000 + t * 600,
                        payload: EventPayload::JobOutcome(JobOutcome {
                            status: JobStatus::Completed,
                            duration_seconds: 60.0,
                            sla_met: true,
                            error_code: 0,
                            cost: 1.0,
                        }),
                    };
                    s.apply(&ev, ev.timestamp, &p).unwrap();
                }
                s
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        snapshot::write(dir.path(), ShardId(1), 7, &states).unwrap();
        std::fs::read(snapshot::path(dir.path(), ShardId(1))).unwrap()
    })
}

/// A version-2 header around `body` with the right length and checksum.
fn snapshot_v2(body: &[u8]) -> Vec<u8> {
    let mut b = snapshot::MAGIC.to_vec();
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&5u32.to_le_bytes());
    b.extend_from_slice(&9u64.to_le_bytes());
    b.extend_from_slice(&(body.len() as u64).to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    b.extend_from_slice(body);
    b
}

#[test]
fn fuzz_snapshot_decoding() {
    let real = sample_snapshot();
    let body = real[34..].to_vec();
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        // Magic and a version, then anything (version 1 has no checksum).
        (0..4u16, proptest::collection::vec(any::<u8>(), 0..256)).prop_map(|(v, rest)| {
            let mut b = snapshot::MAGIC.to_vec();
            b.extend_from_slice(&v.to_le_bytes());
            b.extend_from_slice(&rest);
            b
        }),
        // A valid version-2 header around arbitrary bytes.
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(|b| snapshot_v2(&b)),
        // A real snapshot's body with bytes changed, checksum fixed.
        proptest::collection::vec((any::<usize>(), 1..=255u8), 1..6)
            .prop_map(move |edits| snapshot_v2(&mutate(&body, &edits))),
    ];
    fuzz("snapshot_decoding", 256, strategy, |bytes| {
        let r = bounded_alloc(bytes.len(), || {
            snapshot::decode(Path::new("fuzz.snap"), &bytes)
        })?;
        if let Ok(s) = r {
            prop_assert!(s.version == 1 || s.version == 2);
        }
        Ok(())
    });
}

#[test]
fn the_real_samples_decode() {
    let (records, err) = wal::decode_segment(&sample_record());
    assert_eq!((records.len(), err), (1, None));
    let s = snapshot::decode(Path::new("x"), sample_snapshot()).unwrap();
    assert_eq!(s.providers.len(), 2);
}
