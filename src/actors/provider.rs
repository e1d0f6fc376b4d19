//! `ProviderActor`: owns one provider's [`ProviderState`] and applies its events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::actors::NodeShared;
use crate::analytics::network::SummaryBasis;
use crate::analytics::state::{EventError, ProviderState};
use crate::analytics::view;
use crate::config::AnalyticsConfig;
use crate::model::{ProviderId, ShardId, TelemetryEvent};
use crate::storage::WalRecord;

/// The outcome of one event of a batch, by its index in the batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum EventResult {
    Accepted,
    Duplicate,
    Rejected(EventError),
}

/// A read of the provider's state: runs inside the actor (or, if the provider is parked, in
/// its shard over a decoded copy without the recent event ids, which only the duplicate
/// check of new events uses: [`Parked::state_for_reading`]), answers through its own channel.
pub type ReadFn = Box<dyn FnOnce(&ProviderState) + Send>;

/// What a provider answers for one batch: each event's result, and when events were
/// accepted and the node is durable, a receiver that answers once they are on disk.
pub struct ApplyOutcome {
    pub results: Vec<(u32, EventResult)>,
    pub durable: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
}

pub enum ProviderMsg {
    /// The events of one batch for this provider, in batch order, with their batch indexes.
    Apply(Vec<(u32, TelemetryEvent)>, RpcReplyPort<ApplyOutcome>),
    /// Run a read-only computation over the state.
    Read(ReadFn),
    /// Hand the state over, encoded, and stop (the provider is idle: see [`Parked`]).
    Park(RpcReplyPort<Parked>),
}

/// A provider without an actor: its state and the alert keys it has raised, in the compact
/// encoding of [`crate::analytics::parked`] (the buckets packed by column). The shard holds
/// it until an event for the provider comes, then starts an actor from it again; reads, the
/// coordinator's summaries and the snapshots decode it in place. Encoding is lossless: a
/// parked provider answers exactly as it did live. Beside the bytes it keeps its
/// [`SummaryBasis`], so a coordinator cycle summarises it without decoding anything.
#[derive(Clone)]
pub struct Parked(Arc<ParkedBytes>);

struct ParkedBytes {
    /// Unique to this parking of this provider (a parked state never changes).
    serial: u64,
    basis: SummaryBasis,
    bytes: Box<[u8]>,
}

/// A provider's state as its shard hands it out for a snapshot or a handoff: a live
/// provider's copied, a parked provider's bytes shared, decoded by the caller with
/// [`CapturedState::into_state`] after the shard has answered (a checkpoint does that after
/// ingest resumes: with most of a large fleet parked, decoding was most of its pause).
pub enum CapturedState {
    Live(Box<ProviderState>),
    Parked(Parked),
}

impl CapturedState {
    pub fn into_state(self) -> ProviderState {
        match self {
            CapturedState::Live(s) => *s,
            CapturedState::Parked(p) => p.state(),
        }
    }

    /// Every captured state, decoded.
    pub fn decode_all(captured: Vec<CapturedState>) -> Vec<ProviderState> {
        captured
            .into_iter()
            .map(CapturedState::into_state)
            .collect()
    }
}

impl Parked {
    pub fn new(state: ProviderState, alerted: Vec<String>, cfg: &AnalyticsConfig) -> Self {
        let declining = view::trend_signal(&state).declining;
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        Self(Arc::new(ParkedBytes {
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            basis: SummaryBasis::of(&state, cfg, declining),
            // copied into a block of its own size: the encoder's vector grew by doubling, and
            // shrinking it in place keeps its block (mimalloc keeps a block shrunk by up to
            // half): 12.5 KB of blocks a provider instead of 8.4 KB
            bytes: Box::from(crate::analytics::parked::encode(&state, &alerted).as_slice()),
        }))
    }

    /// Tells this parked state from every other one made by this process: its copies share
    /// it, a provider parked again gets a new one.
    pub fn serial(&self) -> u64 {
        self.0.serial
    }

    /// What the provider's summary is composed from at any `now`.
    pub fn basis(&self) -> &SummaryBasis {
        &self.0.basis
    }

    /// The state and the alert keys. Only this node encodes what it decodes, in memory, so a
    /// failure is a bug, not bad input.
    pub fn open(&self) -> (ProviderState, Vec<String>) {
        crate::analytics::parked::decode(&self.0.bytes).expect("a parked provider state decodes")
    }

    pub fn state(&self) -> ProviderState {
        self.open().0
    }

    /// The state without its recent event ids (empty), decoded from the head of the bytes
    /// ([`crate::analytics::parked::decode_head`]): what reads and summaries need; it skips
    /// the ids and the alert keys (a small part of a decode's time: `cargo bench --bench
    /// memory`).
    pub fn state_for_reading(&self) -> ProviderState {
        crate::analytics::parked::decode_head(&self.0.bytes)
            .expect("a parked provider state decodes")
    }

    /// Encoded bytes.
    pub fn encoded_len(&self) -> usize {
        self.0.bytes.len()
    }
}

impl std::fmt::Debug for ProviderMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderMsg")
    }
}

pub struct ProviderActor;

pub struct ProviderArgs {
    pub id: ProviderId,
    pub shard: ShardId,
    pub shared: Arc<NodeShared>,
    /// Restored state (recovery, handoff, a parked provider woken), or a fresh one.
    pub state: Option<ProviderState>,
    /// Alert keys already raised (a parked provider woken).
    pub alerted: Vec<String>,
}

pub struct ProviderActorState {
    pub state: ProviderState,
    shard: ShardId,
    shared: Arc<NodeShared>,
    /// The newest hour whose score has been recorded.
    scored_through: Option<i64>,
    /// Keys of the alerts already raised.
    alerted: std::collections::HashSet<String>,
}

impl Actor for ProviderActor {
    type Msg = ProviderMsg;
    type State = ProviderActorState;
    type Arguments = ProviderArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ProviderArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let state = args
            .state
            .unwrap_or_else(|| ProviderState::new(args.id, &args.shared.params));
        let scored_through = state.window.newest_hour().map(|h| h - 1);
        Ok(ProviderActorState {
            state,
            shard: args.shard,
            shared: args.shared,
            scored_through,
            alerted: args.alerted.into_iter().collect(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ProviderMsg,
        st: &mut ProviderActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProviderMsg::Apply(events, reply) => {
                let results = st.apply(events);
                let _ = reply.send(results);
            }
            ProviderMsg::Read(f) => f(&st.state),
            ProviderMsg::Park(reply) => {
                // `scored_through` is always the newest hour but one after a batch, which is
                // what a restart derives from the window: only the alert keys need keeping.
                let empty = ProviderState::new(st.state.id.clone(), &st.shared.params);
                let state = std::mem::replace(&mut st.state, empty);
                let parked = Parked::new(state, st.alerted.drain().collect(), &st.shared.config);
                // The shard sends nothing to this actor once it asked it to park.
                let _ = reply.send(parked);
                myself.stop(None);
            }
        }
        Ok(())
    }
}

impl ProviderActorState {
    fn apply(&mut self, events: Vec<(u32, TelemetryEvent)>) -> ApplyOutcome {
        let shared = &self.shared;
        let reference = shared.reference_time();
        let mut results = Vec::with_capacity(events.len());
        let mut accepted = Vec::with_capacity(events.len());
        let mut newest = i64::MIN;
        for (i, ev) in events {
            let r = match self.state.apply(&ev, reference, &shared.params) {
                Ok(()) => {
                    newest = newest.max(ev.timestamp);
                    accepted.push(ev);
                    EventResult::Accepted
                }
                Err(EventError::Duplicate) => EventResult::Duplicate,
                Err(e) => EventResult::Rejected(e),
            };
            results.push((i, r));
        }
        // once a batch: the node-wide maximum is one cache line every core writes
        if newest != i64::MIN {
            shared.observe_event_time(newest);
        }
        // Logged in this actor's order, so a provider's events replay in the order applied.
        let durable = match (&shared.wal, accepted.is_empty()) {
            (Some(wal), false) => Some(wal.append(&WalRecord {
                shard: self.shard.0,
                events: accepted,
            })),
            _ => None,
        };
        self.close_hours();
        ApplyOutcome { results, durable }
    }

    /// Score every hour that closed since the last batch and raise the alerts they show.
    fn close_hours(&mut self) {
        let Some(newest) = self.state.window.newest_hour() else {
            return;
        };
        let from = self
            .scored_through
            .map_or(newest - 1, |h| h + 1)
            .max(newest - i64::from(self.shared.params.window_hours) + 1);
        if from > newest - 1 {
            return;
        }
        let snapshot = self.shared.snapshot();
        for hour in from..newest {
            view::record_hour_score(&mut self.state, hour, &snapshot, &self.shared.config);
            for alert in view::closed_hour_alerts(&self.state, hour, &self.shared.config) {
                if self.alerted.insert(alert.key.clone()) {
                    metrics::counter!("depin_alerts_total", "kind" => alert.kind.as_str())
                        .increment(1);
                    let region = self
                        .state
                        .spec
                        .as_ref()
                        .map(|s| s.region.clone())
                        .unwrap_or_default();
                    let _ = self
                        .shared
                        .alerts
                        .send(crate::actors::NodeAlert { alert, region });
                }
            }
        }
        // Keys are per episode or per day: a small set, trimmed so it cannot grow forever.
        if self.alerted.len() > 64 {
            self.alerted.clear();
        }
        self.scored_through = Some(newest - 1);
    }
}
