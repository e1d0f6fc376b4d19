//! `ClusterService`: the cluster as this node sees it. Standalone, the node owns every shard.
//! In a cluster, provider counts per shard and per node come from the latest coordinator
//! results (every node holds the same), the rest from the shard map and membership.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use futures::future::join_all;
use tonic::{Request, Response, Status};

use crate::actors::ShardMsg;
use crate::gateway::Gateway;
use crate::model::ShardId;
use crate::proto::v1 as pb;
use crate::proto::v1::cluster_service_server::ClusterService;

#[tonic::async_trait]
impl ClusterService for Gateway {
    async fn get_cluster_status(
        &self,
        _request: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let local_providers = self.shared.providers.load(Ordering::Relaxed);
        let parked = self.shared.parked.load(Ordering::Relaxed);
        let snapshot = self.shared.snapshot();
        if let Some(view) = &self.cluster {
            let view = view.borrow().clone();
            let mut per_shard = vec![0u64; self.shard_count() as usize];
            for s in &snapshot.summaries {
                per_shard[self.shard_of(&s.id).0 as usize] += 1;
            }
            let map = view.map.as_ref();
            let mut nodes: BTreeMap<String, pb::NodeStatus> = BTreeMap::new();
            for n in &view.members {
                let refused = map.and_then(|m| m.value.refused.get(&n.id));
                nodes.insert(
                    n.id.0.clone(),
                    pb::NodeStatus {
                        node_id: n.id.0.clone(),
                        advertise_addr: n.advertise_addr.clone(),
                        region: n.region.clone().unwrap_or_default(),
                        healthy: true,
                        state: if refused.is_some() {
                            "refused"
                        } else if n.draining {
                            "draining"
                        } else {
                            "serving"
                        }
                        .into(),
                        refused_reason: refused.cloned().unwrap_or_default(),
                        ..Default::default()
                    },
                );
            }
            let mut shards = Vec::new();
            if let Some(m) = map {
                for (i, owner) in m.value.assignments.iter().enumerate() {
                    let node = nodes
                        .entry(owner.0.clone())
                        .or_insert_with(|| pb::NodeStatus {
                            node_id: owner.0.clone(),
                            region: m.value.regions.get(owner).cloned().unwrap_or_default(),
                            healthy: false,
                            state: "down".into(),
                            ..Default::default()
                        });
                    node.shard_count += 1;
                    node.provider_count += per_shard[i];
                    shards.push(pb::ShardAssignment {
                        shard_id: i as u32,
                        node_id: owner.0.clone(),
                        provider_count: per_shard[i],
                    });
                }
            }
            let shards_in_motion = map.map_or_else(Vec::new, |m| {
                m.value
                    .pending
                    .iter()
                    .map(|(s, to)| pb::ShardMove {
                        shard_id: *s,
                        from_node_id: m
                            .value
                            .owner(ShardId(*s))
                            .map(|o| o.0.clone())
                            .unwrap_or_default(),
                        to_node_id: to.0.clone(),
                        phase: "handing_off".into(),
                    })
                    .collect()
            });
            let lost: Vec<pb::LostShard> = map.map_or_else(Vec::new, |m| {
                m.value
                    .lost
                    .iter()
                    .map(|l| pb::LostShard {
                        shard_id: l.shard,
                        node_id: l.node.0.clone(),
                        reassigned_at: Some(prost_types::Timestamp {
                            seconds: l.at,
                            nanos: 0,
                        }),
                    })
                    .collect()
            });
            return Ok(Response::new(pb::ClusterStatus {
                mode: "etcd".into(),
                leader_node_id: view
                    .leader
                    .as_ref()
                    .map(|l| l.0.clone())
                    .unwrap_or_default(),
                nodes: nodes.into_values().collect(),
                shard_count: self.shard_count(),
                shard_map_revision: map.map_or(0, |m| m.revision),
                shard_map_epoch: map.map_or(0, |m| m.value.epoch.0),
                shards,
                shards_in_motion,
                provider_count: snapshot.summaries.len() as u64,
                live_provider_actors: local_providers.saturating_sub(parked),
                events_ingested: self.shared.events_ingested.load(Ordering::Relaxed),
                last_analytics_at: snapshot.computed_at_timestamp(),
                lost_shards: lost.iter().map(|l| l.shard_id).collect(),
                lost,
            }));
        }
        let counts = join_all(
            self.shards
                .iter()
                .map(|s| async move { ractor::call!(s, ShardMsg::ProviderCount) }),
        )
        .await;
        let mut shards = Vec::with_capacity(counts.len());
        for (i, c) in counts.into_iter().enumerate() {
            let n = c.map_err(|e| Status::unavailable(format!("shard {i} unavailable: {e}")))?;
            shards.push(pb::ShardAssignment {
                shard_id: i as u32,
                node_id: self.node_id.clone(),
                provider_count: n as u64,
            });
        }
        Ok(Response::new(pb::ClusterStatus {
            mode: "standalone".into(),
            leader_node_id: self.node_id.clone(),
            nodes: vec![pb::NodeStatus {
                node_id: self.node_id.clone(),
                advertise_addr: String::new(),
                region: String::new(),
                healthy: true,
                shard_count: self.shard_count(),
                provider_count: local_providers,
                state: "serving".into(),
                refused_reason: String::new(),
            }],
            shard_count: self.shard_count(),
            shard_map_revision: 0,
            shard_map_epoch: 0,
            shards,
            shards_in_motion: Vec::new(),
            provider_count: local_providers,
            live_provider_actors: local_providers.saturating_sub(parked),
            events_ingested: self.shared.events_ingested.load(Ordering::Relaxed),
            last_analytics_at: snapshot.computed_at_timestamp(),
            lost_shards: Vec::new(),
            lost: Vec::new(),
        }))
    }
}
