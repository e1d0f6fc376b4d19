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
