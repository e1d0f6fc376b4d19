//! A node: the shard actors, the coordinator and the gRPC server, wired together.
//!
//! `Node::start` spawns everything and binds the gRPC listener; `Node::shutdown` stops
//! accepting, lets in-flight calls finish and stops the actors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ractor::{Actor, ActorRef};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tracing::info;

use crate::actors::coordinator::CoordinatorArgs;
use crate::actors::shard::ShardArgs;
use crate::actors::{CoordinatorActor, CoordinatorMsg, NodeShared, ShardActor, ShardMsg};
use crate::analytics::view::AnalyticsSnapshot;
use crate::config::AnalyticsConfig;
use crate::gateway::{Gateway, Limits};
use crate::model::ShardId;
use crate::proto::v1::cluster_service_server::ClusterServiceServer;
use crate::proto::v1::ingest_service_server::IngestServiceServer;
use crate::proto::v1::reputation_service_server::ReputationServiceServer;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    pub grpc_addr: SocketAddr,
    pub data_dir: Option<PathBuf>,
    pub shard_count: u32,
    pub analytics: AnalyticsConfig,
    pub limits: Limits,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: "node-0".into(),
            grpc_addr: ([127, 0, 0, 1], 9090).into(),
            data_dir: None,
            shard_count: 256,
            analytics: AnalyticsConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// A running node.
pub struct Node {
    pub gateway: Gateway,
    pub local_addr: SocketAddr,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    coordinator: ActorRef<CoordinatorMsg>,
    shards: Vec<ActorRef<ShardMsg>>,
}

impl Node {
    pub async fn start(cfg: NodeConfig) -> anyhow::Result<Node> {
        let listener = TcpListener::bind(cfg.grpc_addr)
            .await
            .with_context(|| format!("binding the grpc port {}", cfg.grpc_addr))?;
        let local_addr = listener.local_addr()?;
        let (publish, snapshot_rx) = watch::channel(Arc::new(AnalyticsSnapshot::default()));
        let shared = NodeShared::new(cfg.analytics.clone(), snapshot_rx);

        let mut shards = Vec::with_capacity(cfg.shard_count as usize);
        for s in 0..cfg.shard_count {
            let args = ShardArgs { id: ShardId(s), shared: shared.clone(), restored: Vec::new() };
            let (shard, _) = Actor::spawn(None, ShardActor, args).await.context("spawning a shard actor")?;
            shards.push(shard);
        }
        metrics::gauge!("depin_shards").set(f64::from(cfg.shard_count));
        let (coordinator, _) = Actor::spawn(
            None,
            CoordinatorActor,
            CoordinatorArgs { shards: shards.clone(), shared: shared.clone(), publish },
        )
        .await
        .context("spawning the coordinator")?;

        let gateway = Gateway {
            shared: shared.clone(),
            shards: Arc::new(shards.clone()),
            coordinator: coordinator.clone(),
            inflight: Arc::new(Semaphore::new(cfg.limits.max_inflight_events)),
            limits: cfg.limits.clone(),
            node_id: cfg.node_id.clone(),
        };

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ReputationServiceServer<Gateway>>().await;
        health.set_serving::<IngestServiceServer<Gateway>>().await;
        health.set_serving::<ClusterServiceServer<Gateway>>().await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let router = Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ReputationServiceServer::new(gateway.clone()))
            .add_service(IngestServiceServer::new(gateway.clone()))
            .add_service(ClusterServiceServer::new(gateway.clone()));
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        }));
        info!(addr = %local_addr, shards = cfg.shard_count, node = %cfg.node_id, "node serving");
        Ok(Node { gateway, local_addr, stop_server: Some(stop_tx), server: Some(server), coordinator, shards })
    }

    /// Run a coordinator cycle now (rankings, tiers and network analytics up to date).
    pub async fn refresh(&self) -> anyhow::Result<Arc<AnalyticsSnapshot>> {
        Ok(ractor::call!(self.coordinator, CoordinatorMsg::Refresh)?)
    }

    /// Stop accepting calls, let in-flight ones finish, stop the actors.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await??;
        }
        self.coordinator.stop(None);
        for s in &self.shards {
            s.stop(None);
        }
        info!("node stopped");
        Ok(())
    }
}
