//! A cluster node's side of shard ownership: serve the shards the map gives it, release the
//! ones it no longer has, and hand off the ones the map moves away.
//!
//! A handoff of shard `s` from this node to `t` (the map says `pending[s] = t`):
//! 1. freeze `s` here: writes are refused with a retryable status (the gateways retry);
//! 2. read every provider's state (everything applied, so the log tail is included) and
//!    stream it to `t`, which checks the map, makes it durable and holds it inactive;
//! 3. flip the map (`t` owns `s`) in one compare-and-set transaction, only if the map still
//!    holds the very move the transfer was for: the same target *and* the epoch that planned
//!    it (`ShardMap::pending_since`);
//! 4. `t` starts serving `s` when it sees the flip; this node releases `s` when it does.
//!
//! Why the epoch: a target drops the copy it took as soon as its map moves the shard
//! elsewhere. When nodes leave together the plan can move a shard to `t`, away, and back
//! to `t` while a transfer to `t` is in flight; flipping on the target alone would then
//! put `t` in service with the copy it had dropped, an empty shard, and everything the
//! shard held would be gone (seen as a rare loss in a cluster test). The move planned
//! again has a new epoch, so the old flip is refused and the handoff starts over.
//!
//! A failed transfer unfreezes the shard and is retried; a flip whose outcome is unknown
//! keeps the shard frozen and is retried (the target replaces what it held).
//!
//! A transfer lands only on a shard the target holds inactive. A target that still serves a
//! stale copy of the shard (it owned it, was frozen or cut off past its lease, and the shard
//! was reassigned; now it comes back) drops that copy at its next reconcile, and the
//! sender's retry gets in. The shard's lock (`StorageCtl::lock_shard`) orders the release's
//! empty snapshot before the arriving states' snapshot.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::actors::provider::CapturedState;
use crate::actors::{ShardMode, ShardMsg};
use crate::cluster::member::{ClusterView, flip_shard};
use crate::cluster::{ClusterBackend, Epoch, NodeId};
use crate::gateway::{Gateway, internal};
use crate::model::ShardId;
use crate::proto::internal::ShardChunk;

/// Providers per transfer chunk (a chunk stays well under the internal message limit).
const CHUNK_PROVIDERS: usize = 1000;

/// Starts the reconciler and the mover; both stop when the handles are aborted.
pub fn spawn(gw: Gateway, backend: Arc<dyn ClusterBackend>) -> Vec<JoinHandle<()>> {
    let view = gw.cluster.clone().expect("cluster mode");
    vec![
        tokio::spawn(reconcile_loop(gw.clone(), view.clone())),
        tokio::spawn(mover_loop(gw, backend, view)),
    ]
}

async fn reconcile_loop(gw: Gateway, mut view: watch::Receiver<ClusterView>) {
    loop {
        let v = view.borrow_and_update().clone();
        if let Err(e) = reconcile(&gw, &v).await {
            warn!(error = %e, "reconciling shard ownership failed; retrying");
        }
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Serves what the map gives this node, releases what it no longer has.
async fn reconcile(gw: &Gateway, v: &ClusterView) -> anyhow::Result<()> {
    let (Some(me), Some(map)) = (&v.me, &v.map) else {
        return Ok(());
    };
    let map = &map.value;
    let members: BTreeSet<&NodeId> = v.members.iter().map(|m| &m.id).collect();
    metrics::gauge!("depin_cluster_nodes").set(members.len() as f64);
    metrics::gauge!("depin_cluster_is_leader").set(if v.is_leader() { 1.0 } else { 0.0 });
    metrics::gauge!("depin_shards_in_motion").set(map.pending.len() as f64);
    metrics::gauge!("depin_shards_unassigned").set(
        map.assignments
            .iter()
            .filter(|o| !members.contains(o))
            .count() as f64,
    );
    if !v.registered {
        return Ok(());
    }
    let mut owned = 0;
    let mut released = Vec::new();
    // each released shard's lock is held until its empty snapshot is written
    let mut held = Vec::new();
    for s in (0..map.shard_count()).map(ShardId) {
        let shard = &gw.shards[s.0 as usize];
        let mode = gw.shared.shard_mode(s);
        if map.owner(s) == Some(me) {
            owned += 1;
            if mode == ShardMode::Inactive && ractor::call!(shard, ShardMsg::Activate)? {
                info!(node = %me, shard = %s, epoch = %map.epoch, "serving shard");
            }
        } else if map.moving_to(s) != Some(me) || mode != ShardMode::Inactive {
            // not ours: drop whatever is held (a shard handed off, data recovered from disk
            // for a shard reassigned while this node was away, or a stale copy of a shard
            // now arriving from its new owner; the shard actor decides, see Release)
            let lock = gw.lock_shard_storage(s).await;
            let Some(n) = ractor::call!(shard, ShardMsg::Release)? else {
                continue;
            };
            if n > 0 || mode != ShardMode::Inactive {
                info!(node = %me, shard = %s, owner = ?map.owner(s).map(|o| &o.0), providers = n, "released shard");
                released.push((s, Default::default()));
                held.extend(lock);
            }
        }
    }
    metrics::gauge!("depin_shards_owned").set(f64::from(owned));
    if !released.is_empty()
        && let Some(storage) = &gw.storage
    {
        storage.persist_shards(released).await?;
    }
    drop(held);
    Ok(())
}

async fn mover_loop(
    gw: Gateway,
    backend: Arc<dyn ClusterBackend>,
    mut view: watch::Receiver<ClusterView>,
) {
    loop {
        let v = view.borrow_and_update().clone();
        let jobs: Vec<(ShardId, NodeId, Epoch)> = match (&v.me, &v.map) {
            (Some(me), Some(map)) if v.registered => map
                .value
                .pending
                .keys()
                .map(|s| ShardId(*s))
                .filter(|s| map.value.owner(*s) == Some(me))
                .filter_map(|s| {
                    let (t, since) = map.value.move_of(s)?;
                    Some((s, t.clone(), since))
                })
                .collect(),
            _ => Vec::new(),
        };
        for (s, t, since) in &jobs {
            if let Err(e) = hand_off(&gw, &*backend, *s, t, *since).await {
                warn!(node = ?v.me.as_ref().map(|m| &m.0), shard = %s, to = %t, error = %e, "shard handoff failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
        }
        if jobs.is_empty() {
            tokio::select! {
                r = view.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Moves shard `s` from this node to `to`, the move the map of epoch `planned_at` planned
/// (module docs).
async fn hand_off(
    gw: &Gateway,
    backend: &dyn ClusterBackend,
    s: ShardId,
    to: &NodeId,
    planned_at: Epoch,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let peers = gw.peers.as_ref().expect("cluster mode");
    let me = peers.me.clone();
    let addr = gw
        .cluster
        .as_ref()
        .and_then(|v| v.borrow().member(to).map(|m| m.advertise_addr.clone()))
        .ok_or_else(|| anyhow::anyhow!("target node {to} is not registered"))?;
    let shard = &gw.shards[s.0 as usize];
    ractor::call!(shard, ShardMsg::Freeze)?;
    let mut read_ms = 0;
    let transferred = async {
        let states = CapturedState::decode_all(ractor::call!(shard, ShardMsg::States)?);
        read_ms = started.elapsed().as_millis() as u64;
        let n = states.len();
        // encoded as the stream is polled: the receiver decodes one chunk while the next is
        // encoded here (an empty shard still sends one, empty, chunk)
        let states = Arc::new(states);
        let from = me.0.clone();
        let chunks = (0..n.div_ceil(CHUNK_PROVIDERS).max(1)).map(move |i| {
            let part = &states[(i * CHUNK_PROVIDERS).min(n)..((i + 1) * CHUNK_PROVIDERS).min(n)];
            ShardChunk {
                shard_id: s.0,
                from_node: from.clone(),
                states: internal::to_blob(&part),
                move_planned_at: planned_at.0,
            }
        });
        let mut client = peers.client(to, &addr)?;
        let ack = client
            .transfer_shard(tokio_stream::iter(chunks))
            .await
            .map_err(|e| anyhow::anyhow!("node {to}: {}", e.message()))?
            .into_inner();
        anyhow::ensure!(
            ack.providers == n as u64,
            "node {to} took {} of {n} providers",
            ack.providers
        );
        anyhow::Ok(n)
    }
    .await;
    let n = match transferred {
        Ok(n) => n,
        Err(e) => {
            ractor::call!(shard, ShardMsg::Unfreeze)?;
            return Err(e);
        }
    };
    let transfer_ms = started.elapsed().as_millis() as u64 - read_ms;
    // an unknown outcome keeps the shard frozen: the next round transfers and flips again
    if !flip_shard(backend, s, &me, to, planned_at).await? {
        info!(node = %me, shard = %s, to = %to, "handoff cancelled: the map no longer moves this shard");
        ractor::call!(shard, ShardMsg::Unfreeze)?;
        return Ok(());
    }
    let took = started.elapsed();
    metrics::counter!("depin_shard_handoffs_total").increment(1);
    metrics::histogram!("depin_shard_handoff_seconds").record(took.as_secs_f64());
    // where the time went: freezing and reading the states, streaming them (the receiver
    // makes them durable and spawns their actors before it answers), flipping the map
    info!(
        node = %me,
        shard = %s,
        to = %to,
        providers = n,
        ms = took.as_millis() as u64,
        read_ms,
        transfer_ms,
        flip_ms = took.as_millis() as u64 - read_ms - transfer_ms,
        "shard handed off"
    );
    Ok(())
}
