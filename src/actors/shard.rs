//! `ShardActor`: supervises the provider actors of one logical shard, routes their events,
//! and keeps the shard's candidate index for rankings and job matching.
//!
//! Passivation: a provider that has had no event and no read for `passivate_after`
//! (PASSIVATE_AFTER) is parked — its actor hands its state over encoded ([`Parked`]) and
//! stops — and woken by the next event for it. Reads, summaries and snapshots decode a
//! parked provider in the shard's task and leave it parked.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::warn;

use crate::actors::provider::{
    CapturedState, EventResult, Parked, ProviderActor, ProviderArgs, ProviderMsg, ReadFn,
};
use crate::actors::{NodeShared, ShardMode};
use crate::analytics::network::ProviderSummary;
use crate::analytics::recommend::CandidateIndex;
use crate::analytics::state::ProviderState;
use crate::analytics::view::{self, AnalyticsSnapshot, RegionHourly, ShardSummaries};
use crate::config::AnalyticsConfig;
use crate::model::{ProviderId, ShardId, TelemetryEvent};

/// Writes this shard does not take now (not owned here, or in motion), handed back: retry
/// them where the shard map says the shard is.
#[derive(Debug)]
pub struct Refused {
    pub why: String,
    pub events: Vec<(u32, TelemetryEvent)>,
}

pub enum ShardMsg {
    /// Events of one batch that belong to this shard, with their batch indexes.
    Ingest(
        Vec<(u32, TelemetryEvent)>,
        RpcReplyPort<Result<Vec<(u32, EventResult)>, Refused>>,
    ),
    /// Stop taking writes: the shard is being handed off.
    Freeze(RpcReplyPort<()>),
    /// Take writes again after a handoff that did not happen (only from frozen).
    Unfreeze(RpcReplyPort<bool>),
    /// Start serving (only from inactive, and only if the map held now names this node).
    Activate(RpcReplyPort<bool>),
    /// Replace every provider with these states (a shard arriving in a handoff); the mode
    /// stays as it is. Answers the number of providers.
    Install(Vec<ProviderState>, RpcReplyPort<usize>),
    /// Drop every provider and become inactive, unless the map held now gives the shard to
    /// this node or moves it here (a release decided on an older map must not drop a shard
    /// that arrived since). Answers the number of providers dropped, `None` if kept.
    Release(RpcReplyPort<Option<usize>>),
    /// Run a read over a provider's state: inside its actor if live, here over a decoded
    /// copy if parked (a read does not wake it). Answers whether this shard knows the
    /// provider (if not, the read is dropped unrun), or why its actor cannot take it.
    Read(ProviderId, ReadFn, RpcReplyPort<Result<bool, String>>),
    /// Park every provider idle for at least this long; answers how many were parked.
    /// Sent by the shard's own timer (no reply) and by tests and benches.
    ParkIdle(Duration, Option<RpcReplyPort<usize>>),
    /// Summaries of every provider (for the coordinator); refreshes the candidate index.
    Summaries(RpcReplyPort<ShardSummaries>),
    /// Every provider's state (snapshots, handoff): copies of the live ones, the parked ones'
    /// bytes shared, to be decoded by the caller.
    States(RpcReplyPort<Vec<CapturedState>>),
    /// Providers in this shard.
    ProviderCount(RpcReplyPort<usize>),
}

impl std::fmt::Debug for ShardMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardMsg")
    }
}

pub struct ShardActor;

/// Hours of utilization history each provider contributes to the regional series.
const REGION_HOURS: usize = 72;

pub struct ShardArgs {
    pub id: ShardId,
    pub shared: Arc<NodeShared>,
    pub restored: Vec<ProviderState>,
    pub mode: ShardMode,
}

pub struct ShardState {
    id: ShardId,
    mode: ShardMode,
    shared: Arc<NodeShared>,
    providers: HashMap<ProviderId, Slot>,
    /// The parked providers' share of the regional utilization sums, and the sorted serials
    /// of the parked states it was gathered from: reused while those are the same, so a
    /// cycle over a parked shard decodes nothing.
    parked_regions: Option<(Vec<u64>, RegionHourly)>,
}

/// A provider of this shard: running, or parked.
enum Slot {
    /// Its actor, and when the shard last sent it an event or a read.
    Live(ActorRef<ProviderMsg>, Instant),
    Parked(Parked),
}

/// Runs a read of a parked provider in the shard's task. A panic in it is a bug in that
/// read: logged and its answer dropped (the caller sees the provider as unavailable), as a
/// live provider's actor failing would, instead of taking the whole shard down.
fn contained<T>(f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(t) => Some(t),
        Err(_) => {
            tracing::error!("a read of a parked provider panicked; its answer is dropped");
            None
        }
    }
}

/// Parked providers decoded between two yields to the runtime (about 0.5–1 ms of work), so
/// that a cycle over many parked providers never holds a worker thread for long.
const DECODE_CHUNK: usize = 32;

/// Parked providers' summaries composed between two yields (well under 1 ms of work).
const COMPOSE_CHUNK: usize = 1024;

/// Runs `f` over every live provider's state, inside its actor (parked providers are left
/// to the caller). The answers of the providers still there, in no particular order.
fn read_live<T, F>(
    providers: &HashMap<ProviderId, Slot>,
    f: F,
) -> impl std::future::Future<Output = Vec<T>> + use<T, F>
where
    T: Send + 'static,
    F: Fn(&ProviderState) -> T + Clone + Send + 'static,
{
    let reads: Vec<_> = providers
        .values()
        .filter_map(|slot| match slot {
            Slot::Live(a, _) => Some(a),
            Slot::Parked(_) => None,
        })
        .map(|a| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let f = f.clone();
            let sent = a.cast(ProviderMsg::Read(Box::new(move |s: &ProviderState| {
                let _ = tx.send(f(s));
            })));
            async move { if sent.is_err() { None } else { rx.await.ok() } }
        })
        .collect();
    async move { join_all(reads).await.into_iter().flatten().collect() }
}

impl ShardState {
    /// The parked providers' summaries, each composed from its [`Parked::basis`] (a decode
    /// only where the basis cannot answer), and their regional utilization sums: the ones
    /// gathered before while the same parked states are here, else decoded again.
    async fn summarize_parked(
        &mut self,
        snapshot: &AnalyticsSnapshot,
        config: &AnalyticsConfig,
        reference: i64,
    ) -> (Vec<ProviderSummary>, RegionHourly) {
        let parked: Vec<Parked> = self
            .providers
            .values()
            .filter_map(|slot| match slot {
                Slot::Parked(p) => Some(p.clone()),
                Slot::Live(..) => None,
            })
            .collect();
        let mut summaries = Vec::with_capacity(parked.len());
        for (i, p) in parked.iter().enumerate() {
            let summary = contained(|| {
                view::parked_summary(p.basis(), snapshot, config, reference).unwrap_or_else(|| {
                    view::summary(&p.state_for_reading(), snapshot, config, reference)
                })
            });
            summaries.extend(summary);
            if i % COMPOSE_CHUNK == COMPOSE_CHUNK - 1 {
                tokio::task::yield_now().await;
            }
        }
        let mut serials: Vec<u64> = parked.iter().map(Parked::serial).collect();
        serials.sort_unstable();
        if let Some((cached, regions)) = &self.parked_regions
            && *cached == serials
        {
            return (summaries, regions.clone());
        }
        let mut regions = RegionHourly::default();
        for chunk in parked.chunks(DECODE_CHUNK) {
            for p in chunk {
                if let Some(hours) =
                    contained(|| view::utilization_hours(&p.state_for_reading(), REGION_HOURS))
                {
                    regions.add_hours(p.basis().region(), &hours);
                }
            }
            tokio::task::yield_now().await;
        }
        self.parked_regions = Some((serials, regions.clone()));
        (summaries, regions)
    }

    async fn provider(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        id: &ProviderId,
        restored: Option<ProviderState>,
    ) -> Result<ActorRef<ProviderMsg>, ActorProcessingErr> {
        let (state, alerted, woken) = match self.providers.get_mut(id) {
            Some(Slot::Live(a, used)) => {
                *used = Instant::now();
                return Ok(a.clone());
            }
            Some(Slot::Parked(p)) => {
                let (state, alerted) = p.open();
                (Some(state), alerted, true)
            }
            None => (restored, Vec::new(), false),
        };
        let args = ProviderArgs {
            id: id.clone(),
            shard: self.id,
            shared: self.shared.clone(),
            state,
            alerted,
        };
        let (actor, _) = Actor::spawn_linked(None, ProviderActor, args, myself.get_cell()).await?;
        if woken {
            self.shared.count_parked(-1);
        } else {
            self.shared.providers.fetch_add(1, Ordering::Relaxed);
        }
        self.providers
            .insert(id.clone(), Slot::Live(actor.clone(), Instant::now()));
        Ok(actor)
    }

    /// Takes in restored states (recovery, a handoff): parked straight away when passivation
    /// is on — a node that fits in memory because its idle providers are parked must also
    /// fit right after a restart — else each with its actor.
    async fn adopt(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        states: Vec<ProviderState>,
    ) -> Result<(), ActorProcessingErr> {
        if self.shared.passivate_after.is_zero() {
            for state in states {
                let id = state.id.clone();
                self.provider(myself, &id, Some(state)).await?;
            }
            return Ok(());
        }
        let mut added = 0;
        for (i, state) in states.into_iter().enumerate() {
            let id = state.id.clone();
            if self
                .providers
                .insert(
                    id,
                    Slot::Parked(Parked::new(state, Vec::new(), &self.shared.config)),
                )
                .is_none()
            {
                added += 1;
            }
            if i % DECODE_CHUNK == DECODE_CHUNK - 1 {
                tokio::task::yield_now().await;
            }
        }
        self.shared.providers.fetch_add(added, Ordering::Relaxed);
        self.shared.count_parked(added as i64);
        Ok(())
    }

    /// Parks every live provider idle for at least `idle`; answers how many it parked.
    async fn park_idle(&mut self, idle: Duration) -> usize {
        let now = Instant::now();
        let parking: Vec<_> = self
            .providers
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Live(a, used) if now.duration_since(*used) >= idle => {
                    let (tx, rx) = ractor::concurrency::oneshot();
                    a.cast(ProviderMsg::Park(tx.into())).ok()?;
                    Some((id.clone(), rx))
                }
                _ => None,
            })
            .map(|(id, rx)| async move { (id, rx.await) })
            .collect();
        let mut n = 0;
        for (id, parked) in join_all(parking).await {
            // An actor that failed instead is removed by its supervision event.
            if let Ok(p) = parked {
                self.providers.insert(id, Slot::Parked(p));
                n += 1;
            }
        }
        self.shared.count_parked(n as i64);
        n
    }

    /// What the map this node holds now says of this shard: (owned here, moving here).
    /// Standalone, every shard is owned.
    fn map_says(&self) -> (bool, bool) {
        let Some(view) = &self.shared.cluster else {
            return (true, false);
        };
        let v = view.borrow();
        let (Some(me), Some(map)) = (&v.me, &v.map) else {
            return (false, false);
        };
        (
            map.value.owner(self.id) == Some(me),
            map.value.moving_to(self.id) == Some(me),
        )
    }

    fn set_mode(&mut self, mode: ShardMode) {
        self.mode = mode;
        if let Some(m) = self.shared.shard_modes.get(self.id.0 as usize) {
            m.store(mode as u8, Ordering::Release);
        }
    }

    /// Stops every provider actor and drops the parked; answers how many there were.
    fn drop_providers(&mut self) -> usize {
        let n = self.providers.len();
        let mut parked = 0;
        for (_, slot) in self.providers.drain() {
            match slot {
                Slot::Live(a, _) => a.stop(None),
                Slot::Parked(_) => parked += 1,
            }
        }
        if parked > 0 {
            self.shared.count_parked(-parked);
        }
        self.shared
            .publish_candidate_index(self.id, CandidateIndex::default());
        self.shared.providers.fetch_sub(n as u64, Ordering::Relaxed);
        n
    }
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        let mut st = ShardState {
            id: args.id,
            mode: args.mode,
            shared: args.shared,
            providers: HashMap::new(),
            parked_regions: None,
        };
        st.adopt(&myself, args.restored).await?;
        st.set_mode(args.mode);
        let idle = st.shared.passivate_after;
        if !idle.is_zero() {
            // Checked a few times per idle period: a provider parks within 1.25 × idle (at
            // least 100 ms later for short periods).
            let every = (idle / 4).max(Duration::from_millis(100));
            myself.send_interval(every, move || ShardMsg::ParkIdle(idle, None));
        }
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Ingest(events, reply) => {
                // Fencing: checked here, in the shard's own order with freezes and releases.
                if st.mode != ShardMode::Active || !st.shared.may_write(st.id) {
                    let why = match st.mode {
                        ShardMode::Frozen => format!("shard {} is being handed off", st.id),
                        ShardMode::Inactive => {
                            format!("shard {} is not served by this node", st.id)
                        }
                        ShardMode::Active => format!(
                            "shard {} is not writable here under this node's shard map and lease",
                            st.id
                        ),
                    };
                    let _ = reply.send(Err(Refused { why, events }));
                    return Ok(());
                }
                // One message per provider per batch, answered together off the shard's loop
                // so the shard keeps routing while providers work.
                // Collectors send a provider's events together: a run of one provider's events
                // is hashed once.
                let mut by_provider: HashMap<ProviderId, Vec<(u32, TelemetryEvent)>> =
                    HashMap::new();
                let mut run: Option<(ProviderId, Vec<(u32, TelemetryEvent)>)> = None;
                for (i, ev) in events {
                    match &mut run {
                        Some((id, evs)) if *id == ev.provider_id => evs.push((i, ev)),
                        _ => {
                            let id = ev.provider_id.clone();
                            if let Some((id, evs)) = run.replace((id, vec![(i, ev)])) {
                                by_provider.entry(id).or_default().extend(evs);
                            }
                        }
                    }
                }
                if let Some((id, evs)) = run {
                    by_provider.entry(id).or_default().extend(evs);
                }
                let mut pending = Vec::with_capacity(by_provider.len());
                for (id, evs) in by_provider {
                    let actor = st.provider(&myself, &id, None).await?;
                    let (tx, rx) = ractor::concurrency::oneshot();
                    actor.cast(ProviderMsg::Apply(evs, tx.into()))?;
                    pending.push(rx);
                }
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut durable = Vec::new();
                    for r in join_all(pending).await {
                        match r {
                            Ok(o) => {
                                out.extend(o.results);
                                durable.extend(o.durable);
                            }
                            Err(_) => warn!("provider actor stopped before answering"),
                        }
                    }
                    // Answer only once every accepted event is on disk.
                    for d in join_all(durable).await {
                        let failed = match d {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(e),
                            Err(_) => Some("write-ahead log closed".to_string()),
                        };
                        if let Some(e) = failed {
                            // Memory now holds events the disk does not: fail-stop, so that
                            // recovery rebuilds exactly what is durable and nothing unlogged
                            // is ever acknowledged (as PostgreSQL does on an fsync failure).
                            tracing::error!(error = %e, "write-ahead log append failed: stopping the node");
                            std::process::abort();
                        }
                    }
                    let _ = reply.send(Ok(out));
                });
            }
            ShardMsg::Freeze(reply) => {
                st.set_mode(ShardMode::Frozen);
                let _ = reply.send(());
            }
            ShardMsg::Unfreeze(reply) => {
                let frozen = st.mode == ShardMode::Frozen;
                if frozen {
                    st.set_mode(ShardMode::Active);
                }
                let _ = reply.send(frozen);
            }
            ShardMsg::Activate(reply) => {
                let (owned, _) = st.map_says();
                let go = st.mode == ShardMode::Inactive && owned;
                if go {
                    st.set_mode(ShardMode::Active);
                }
                let _ = reply.send(go);
            }
            ShardMsg::Install(states, reply) => {
                st.drop_providers();
                st.adopt(&myself, states).await?;
                let _ = reply.send(st.providers.len());
            }
            ShardMsg::Release(reply) => {
                // Kept: a shard this node owns, and one arriving here that holds nothing but
                // what the transfer installed (it stays inactive until the map flips). A shard
                // arriving here while still active or frozen holds a stale copy (this node
                // served it before it was reassigned): dropped, so that the transfer, which
                // only lands on an inactive shard, can come in.
                let (owned, arriving) = st.map_says();
                if owned || (arriving && st.mode == ShardMode::Inactive) {
                    let _ = reply.send(None);
                } else {
                    st.set_mode(ShardMode::Inactive);
                    let _ = reply.send(Some(st.drop_providers()));
                }
            }
            ShardMsg::ProviderCount(reply) => {
                let _ = reply.send(st.providers.len());
            }
            ShardMsg::Read(id, f, reply) => {
                let answer = match st.providers.get_mut(&id) {
                    Some(Slot::Live(a, used)) => {
                        *used = Instant::now();
                        // An actor that just failed (its supervision event not yet here)
                        // refuses the message: retryable, and not the shard's failure.
                        a.cast(ProviderMsg::Read(f))
                            .map(|()| true)
                            .map_err(|e| format!("provider actor unavailable: {e}"))
                    }
                    // Decoded in place (tens of µs): cheaper than starting an actor, and a
                    // provider that is only read stays parked.
                    Some(Slot::Parked(p)) => {
                        contained(|| f(&p.state_for_reading()));
                        Ok(true)
                    }
                    None => Ok(false),
                };
                let _ = reply.send(answer);
            }
            ShardMsg::ParkIdle(idle, reply) => {
                let n = st.park_idle(idle).await;
                if let Some(reply) = reply {
                    let _ = reply.send(n);
                }
            }
            ShardMsg::Summaries(reply) if st.mode == ShardMode::Inactive => {
                let _ = reply.send(ShardSummaries::default());
            }
            ShardMsg::Summaries(reply) => {
                let snapshot = st.shared.snapshot();
                let config = Arc::new(st.shared.config.clone());
                let reference = st.shared.reference_time();
                // live providers answer in their actors meanwhile
                let live = read_live(&st.providers, {
                    let (snapshot, config) = (snapshot.clone(), config.clone());
                    move |s: &ProviderState| {
                        (
                            view::summary(s, &snapshot, &config, reference),
                            view::utilization_hours(s, REGION_HOURS),
                        )
                    }
                });
                let mut out = ShardSummaries::default();
                let (parked, regions) = st.summarize_parked(&snapshot, &config, reference).await;
                out.providers = parked;
                out.regions = regions;
                for (summary, hours) in live.await {
                    out.regions.add_hours(&summary.region, &hours);
                    out.providers.push(summary);
                }
                // sorted and keyed here, on the shards' threads, so that the coordinator's
                // single thread only merges the shards' lists
                out.sort_and_tier(Some(view::TierWalk::new(
                    &snapshot,
                    &snapshot.cutoffs,
                    &config,
                )));
                // summaries are the candidates recommendations scan
                st.shared
                    .publish_candidate_index(st.id, CandidateIndex::new(out.providers.clone()));
                let _ = reply.send(out);
            }
            ShardMsg::States(reply) => {
                let mut states: Vec<CapturedState> = st
                    .providers
                    .values()
                    .filter_map(|slot| match slot {
                        Slot::Parked(p) => Some(CapturedState::Parked(p.clone())),
                        Slot::Live(..) => None,
                    })
                    .collect();
                let live = read_live(&st.providers, |s: &ProviderState| {
                    CapturedState::Live(Box::new(s.clone()))
                });
                states.extend(live.await);
                let _ = reply.send(states);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ShardMsg>,
        evt: SupervisionEvent,
        st: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            warn!(shard = %st.id, actor = ?cell.get_id(), error = %err, "provider actor failed");
            let before = st.providers.len();
            st.providers.retain(|_, slot| match slot {
                Slot::Live(a, _) => a.get_id() != cell.get_id(),
                Slot::Parked(_) => true,
            });
            let gone = (before - st.providers.len()) as u64;
            st.shared.providers.fetch_sub(gone, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::member::ClusterView;
    use crate::cluster::{Epoch, NodeId, ShardMap, Versioned};
    use crate::config::AnalyticsConfig;
    use tokio::sync::watch;

    /// A map over two shards owned by `a`, shard 0 moving to `b`; this node is `b`.
    fn view_of_b_receiving_shard_0() -> ClusterView {
        let a = NodeId("a".into());
        let b = NodeId("b".into());
        ClusterView {
            me: Some(b.clone()),
            map: Some(Versioned {
                revision: 7,
                value: ShardMap {
                    format: ShardMap::FORMAT,
                    epoch: Epoch(3),
                    assignments: vec![a.clone(), a],
                    regions: Default::default(),
                    pending: [(0, b)].into_iter().collect(),
                    pending_since: Default::default(),
                    lost: Vec::new(),
                    refused: Default::default(),
                },
            }),
            registered: true,
            ..Default::default()
        }
    }

    /// The shard actor, its node's shared state, and the senders that keep its watches open.
    async fn shard_with(
        mode: ShardMode,
        providers: usize,
    ) -> (ActorRef<ShardMsg>, Arc<NodeShared>, impl Sized) {
        let (view_tx, view) = watch::channel(view_of_b_receiving_shard_0());
        let (snapshot_tx, snapshot) = watch::channel(Default::default());
        let shared = NodeShared::new(AnalyticsConfig::default(), snapshot, None, 2, Some(view));
        let actor = spawn_shard(&shared, mode, providers).await;
        (actor, shared, (view_tx, snapshot_tx))
    }

    /// Shard 0 of `shared`'s node in `mode`, restored with `providers` empty providers.
    async fn spawn_shard(
        shared: &Arc<NodeShared>,
        mode: ShardMode,
        providers: usize,
    ) -> ActorRef<ShardMsg> {
        let restored = (0..providers)
            .map(|i| ProviderState::new(ProviderId::new(format!("p{i}")), &shared.params))
            .collect();
        let args = ShardArgs {
            id: ShardId(0),
            shared: shared.clone(),
            restored,
            mode,
        };
        Actor::spawn(None, ShardActor, args).await.expect("spawn").0
    }

    /// A node that served a shard, lost it while away and now receives it back must drop its
    /// stale copy: the transfer only lands on an inactive shard, so keeping it would refuse
    /// the handoff forever.
    #[tokio::test]
    async fn a_stale_copy_of_an_arriving_shard_is_released() {
        for stale in [ShardMode::Active, ShardMode::Frozen] {
            let (shard, shared, _watches) = shard_with(stale, 3).await;
            let released = ractor::call!(shard, ShardMsg::Release).expect("release");
            assert_eq!(released, Some(3), "{stale:?}");
            assert_eq!(shared.shard_mode(ShardId(0)), ShardMode::Inactive);
            assert_eq!(ractor::call!(shard, ShardMsg::ProviderCount).unwrap(), 0);
            shard.stop(None);
        }
    }

    /// Idle providers park (the shard's timer, or on request) and are read back — by
    /// `States`, as a snapshot or a handoff does — exactly as they were, without waking.
    #[tokio::test]
    async fn parked_providers_are_read_back_exactly_without_waking() {
        let (shard, shared, _snapshot) = standalone_shard(Duration::ZERO, 0).await;
        ingest_fleet(&shard, 6, 30).await;
        let mut live = CapturedState::decode_all(ractor::call!(shard, ShardMsg::States).unwrap());
        live.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(live.len(), 6);

        let parked = ractor::call!(shard, |r| ShardMsg::ParkIdle(Duration::ZERO, Some(r)));
        assert_eq!(parked.unwrap(), 6);
        assert_eq!(shared.parked.load(Ordering::Relaxed), 6);
        let mut read = CapturedState::decode_all(ractor::call!(shard, ShardMsg::States).unwrap());
        read.sort_by(|a, b| a.id.cmp(&b.id));
        // Bit for bit (unscored hours hold NaN, which `==` would call different).
        let bits = |states: &[ProviderState]| {
            bincode::serde::encode_to_vec(states, bincode::config::standard()).unwrap()
        };
        assert!(bits(&read) == bits(&live), "parked states read back differ");
        assert_eq!(
            shared.parked.load(Ordering::Relaxed),
            6,
            "reading did not wake"
        );

        // A read answers from the parked state and leaves it parked; an event wakes it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let f: ReadFn = Box::new(move |s| {
            let _ = tx.send(s.lifetime.events_ingested);
        });
        let id = live[0].id.clone();
        assert!(
            ractor::call!(shard, ShardMsg::Read, id, f)
                .unwrap()
                .unwrap()
        );
        assert_eq!(rx.await.unwrap(), live[0].lifetime.events_ingested);
        assert_eq!(shared.parked.load(Ordering::Relaxed), 6);
        let mut event = live[0].clone();
        let last = crate::model::TelemetryEvent {
            event_id: "one-more".into(),
            provider_id: event.id.clone(),
            timestamp: event.last_seen().unwrap(),
            payload: crate::model::EventPayload::Heartbeat(crate::model::Heartbeat {
                status: crate::model::HeartbeatStatus::Online,
            }),
        };
        let r = ractor::call!(shard, ShardMsg::Ingest, vec![(0, last)])
            .unwrap()
            .unwrap();
        assert_eq!(r, vec![(0, EventResult::Accepted)]);
        assert_eq!(
            shared.parked.load(Ordering::Relaxed),
            5,
            "an event wakes it"
        );
        event.lifetime.events_ingested += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let f: ReadFn = Box::new(move |s| {
            let _ = tx.send(s.lifetime.events_ingested);
        });
        assert!(
            ractor::call!(shard, ShardMsg::Read, event.id.clone(), f)
                .unwrap()
                .unwrap()
        );
        assert_eq!(rx.await.unwrap(), event.lifetime.events_ingested);
        assert_eq!(ractor::call!(shard, ShardMsg::ProviderCount).unwrap(), 6);
        shard.stop(None);
    }

    /// `providers` of a simulated fleet, `hours` of their events ingested in one batch.
    async fn ingest_fleet(shard: &ActorRef<ShardMsg>, providers: usize, hours: u32) {
        let fleet = crate::sim::Fleet::new(crate::sim::FleetConfig {
            providers,
            hours,
            ..Default::default()
        });
        let mut events = Vec::new();
        for h in 0..hours {
            for i in 0..providers {
                fleet.generate_provider_hour(i, h, &mut events);
            }
        }
        let batch: Vec<_> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u32, e))
            .collect();
        let n = batch.len();
        let results = ractor::call!(shard, ShardMsg::Ingest, batch)
            .unwrap()
            .unwrap();
        assert_eq!(results.len(), n);
    }

    /// A parked provider is summarised from its basis, and the parked providers' regional
    /// sums are kept between cycles: a cycle over a parked shard must still answer exactly
    /// what the live shard did, and a provider that woke, took new utilization and parked
    /// again must be counted with its new hours, not the kept ones.
    #[tokio::test]
    async fn a_parked_shard_summarises_as_the_live_one_did() {
        let (shard, _shared, _snapshot) = standalone_shard(Duration::ZERO, 0).await;
        ingest_fleet(&shard, 8, 30).await;
        let summaries = || async { ractor::call!(shard, ShardMsg::Summaries).unwrap() };
        let park = || async {
            ractor::call!(shard, |r| ShardMsg::ParkIdle(Duration::ZERO, Some(r))).unwrap()
        };
        let live = summaries().await;
        assert_eq!(live.providers.len(), 8);
        assert!(!live.regions.sums.is_empty());
        assert_eq!(park().await, 8);
        let parked = summaries().await;
        assert_eq!(parked.providers, live.providers);
        assert_eq!(parked.regions, live.regions);
        let again = summaries().await;
        assert_eq!(again.providers, live.providers);
        assert_eq!(again.regions, live.regions);

        // one provider wakes with a new utilization sample in its newest hour, then parks
        let first = &live.providers[0];
        let newest = crate::model::TelemetryEvent {
            event_id: "new-utilization".into(),
            provider_id: first.id.clone(),
            timestamp: (live.regions.sums[&first.region].keys().max().unwrap() + 1)
                * crate::model::HOUR
                - 1,
            payload: crate::model::EventPayload::Utilization(crate::model::UtilizationSample {
                cpu: 0.99,
                gpu: 0.99,
                memory: 0.99,
            }),
        };
        let r = ractor::call!(shard, ShardMsg::Ingest, vec![(0, newest)])
            .unwrap()
            .unwrap();
        assert_eq!(r, vec![(0, EventResult::Accepted)]);
        let woken = summaries().await;
        assert_ne!(
            woken.regions, live.regions,
            "the new sample moved its region's sums"
        );
        assert_eq!(park().await, 1);
        let reparked = summaries().await;
        assert_eq!(reparked.providers, woken.providers);
        assert_eq!(reparked.regions, woken.regions);
        shard.stop(None);
    }

    /// The shard's timer parks what stays idle for PASSIVATE_AFTER.
    #[tokio::test]
    async fn the_timer_parks_idle_providers() {
        let (shard, shared, _snapshot) = standalone_shard(Duration::from_millis(200), 0).await;
        let events = (0..4)
            .map(|i| {
                let e = crate::model::TelemetryEvent {
                    event_id: format!("e{i}"),
                    provider_id: ProviderId::new(format!("p{i}")),
                    timestamp: 1_800_000_000,
                    payload: crate::model::EventPayload::Heartbeat(crate::model::Heartbeat {
                        status: crate::model::HeartbeatStatus::Online,
                    }),
                };
                (i, e)
            })
            .collect();
        ractor::call!(shard, ShardMsg::Ingest, events)
            .unwrap()
            .unwrap();
        assert_eq!(shared.providers.load(Ordering::Relaxed), 4);
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.parked.load(Ordering::Relaxed) < 4 {
            assert!(Instant::now() < deadline, "not parked within 5 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shard.stop(None);
    }

    /// Restored states (recovery, a handoff) are parked straight away when passivation is
    /// on, and read back as they were.
    #[tokio::test]
    async fn restored_states_start_parked() {
        let (shard, shared, _snapshot) = standalone_shard(Duration::from_secs(600), 5).await;
        assert_eq!(shared.providers.load(Ordering::Relaxed), 5);
        assert_eq!(shared.parked.load(Ordering::Relaxed), 5);
        let states = ractor::call!(shard, ShardMsg::States).unwrap();
        assert_eq!(states.len(), 5);
        shard.stop(None);
    }

    /// An active shard of a standalone node with `providers` empty providers, parking those
    /// idle for `passivate_after` (zero: only when asked).
    async fn standalone_shard(
        passivate_after: Duration,
        providers: usize,
    ) -> (ActorRef<ShardMsg>, Arc<NodeShared>, impl Sized) {
        let (snapshot_tx, snapshot) = watch::channel(Default::default());
        let config = AnalyticsConfig {
            passivate_after,
            ..Default::default()
        };
        let shared = NodeShared::new(config, snapshot, None, 1, None);
        let actor = spawn_shard(&shared, ShardMode::Active, providers).await;
        (actor, shared, snapshot_tx)
    }

    /// What a transfer installed on an inactive arriving shard stays until the map flips.
    #[tokio::test]
    async fn states_installed_on_an_arriving_shard_are_kept() {
        let (shard, shared, _watches) = shard_with(ShardMode::Inactive, 0).await;
        let states = (0..4)
            .map(|i| ProviderState::new(ProviderId::new(format!("q{i}")), &shared.params))
            .collect();
        assert_eq!(ractor::call!(shard, ShardMsg::Install, states).unwrap(), 4);
        assert_eq!(ractor::call!(shard, ShardMsg::Release).unwrap(), None);
        assert_eq!(ractor::call!(shard, ShardMsg::ProviderCount).unwrap(), 4);
        shard.stop(None);
    }
}
