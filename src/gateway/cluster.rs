//! `ClusterService`: what this node holds. In standalone mode the node owns every shard.

use std::sync::atomic::Ordering;

use futures::future::join_all;
use tonic::{Request, Response, Status};

use crate::actors::ShardMsg;
use crate::gateway::Gateway;
use crate::proto::v1 as pb;
use crate::proto::v1::cluster_service_server::ClusterService;

#[tonic::async_trait]
impl ClusterService for Gateway {
    async fn get_cluster_status(
        &self,
        _request: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
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
        let providers = self.shared.providers.load(Ordering::Relaxed);
        let snapshot = self.shared.snapshot();
        if let Some(view) = &self.cluster {
            let view = view.borrow().clone();
            let map = view.map.as_ref();
            let owned = |node: &crate::model::NodeId| {
                map.map_or(0, |m| m.value.shards_of(node).count() as u32)
            };
            return Ok(Response::new(pb::ClusterStatus {
                mode: "etcd".into(),
                leader_node_id: view
                    .leader
                    .as_ref()
                    .map(|l| l.0.clone())
                    .unwrap_or_default(),
                nodes: view
                    .members
                    .iter()
                    .map(|n| pb::NodeStatus {
                        node_id: n.id.0.clone(),
                        advertise_addr: n.advertise_addr.clone(),
                        region: n.region.clone().unwrap_or_default(),
                        healthy: true,
                        shard_count: owned(&n.id),
                        provider_count: if n.id.0 == self.node_id { providers } else { 0 },
                    })
                    .collect(),
                shard_count: self.shard_count(),
                shard_map_revision: map.map_or(0, |m| m.revision),
                shards: map.map_or_else(Vec::new, |m| {
                    m.value
                        .assignments
                        .iter()
                        .enumerate()
                        .map(|(i, n)| pb::ShardAssignment {
                            shard_id: i as u32,
                            node_id: n.0.clone(),
                            provider_count: if n.0 == self.node_id {
                                shards[i].provider_count
                            } else {
                                0
                            },
                        })
                        .collect()
                }),
                shards_in_motion: Vec::new(),
                provider_count: providers,
                live_provider_actors: providers,
                events_ingested: self.shared.events_ingested.load(Ordering::Relaxed),
                last_analytics_at: snapshot.computed_at_timestamp(),
                lost_shards: Vec::new(),
            }));
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
                provider_count: providers,
            }],
            shard_count: self.shard_count(),
            shard_map_revision: 0,
            shards,
            shards_in_motion: Vec::new(),
            provider_count: providers,
            live_provider_actors: providers,
            events_ingested: self.shared.events_ingested.load(Ordering::Relaxed),
            last_analytics_at: snapshot.computed_at_timestamp(),
            lost_shards: Vec::new(),
        }))
    }
}
