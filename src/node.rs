//! A node: the shard actors, the coordinator and the gRPC server, wired together.
//!
//! `Node::start` spawns everything and binds the gRPC listener; `Node::shutdown` stops
//! accepting, lets in-flight calls finish and stops the actors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod handoff;

use anyhow::Context;
use ractor::{Actor, ActorRef};
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::cluster::member::{Membership, MembershipConfig};
use crate::cluster::{EtcdBackend, Keys, NodeInfo};
use crate::model::NodeId;
use crate::storage::wal::WalOptions;
use crate::storage::{self, DirLock, StorageCtl, WalHandle, snapshot};

use crate::actors::coordinator::CoordinatorArgs;
use crate::actors::provider::CapturedState;
use crate::actors::shard::ShardArgs;
use crate::actors::{
    CoordinatorActor, CoordinatorMsg, NodeShared, ShardActor, ShardMode, ShardMsg,
};
use crate::analytics::view::AnalyticsSnapshot;
use crate::config::AnalyticsConfig;
use crate::gateway::route::{INTERNAL_MESSAGE_LIMIT, Peers};
use crate::gateway::{Gateway, Limits};
use crate::model::ShardId;
use crate::proto::internal::node_service_server::NodeServiceServer;
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
    /// Acknowledge ingest before the log is fsynced (a machine crash loses recent events).
    pub unsafe_no_fsync: bool,
    /// A checkpoint (snapshots + log truncation) runs when the log has grown by this much.
    pub checkpoint_bytes: u64,
    /// Join an etcd cluster (membership, election, shard map); `None` is standalone.
    pub cluster: Option<ClusterConfig>,
    /// TLS, tokens, the plaintext rule (`security.rs`).
    pub security: crate::security::SecurityConfig,
}

/// How a node joins an etcd cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    /// Where other nodes reach this one; the gRPC listen address when empty.
    pub advertise_addr: String,
    pub region: Option<String>,
    pub lease_ttl: std::time::Duration,
    /// A dead node's shards wait this long for it before they are reassigned.
    pub dead_node_grace: std::time::Duration,
    /// The longest a SIGTERM handoff may take.
    pub handoff_timeout: std::time::Duration,
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
            unsafe_no_fsync: false,
            checkpoint_bytes: 256 << 20,
            cluster: None,
            security: Default::default(),
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
    checkpointer: Option<(Arc<Checkpointer>, JoinHandle<()>)>,
    /// Left last: the lease ends (and other nodes see this one leave) after the data is safe.
    membership: Option<Membership>,
    handoff: Vec<JoinHandle<()>>,
    handoff_timeout: Duration,
    /// `grpc.health.v1`: NOT_SERVING from the start of shutdown, so probes and balancers
    /// stop sending new work while the shards are handed off.
    health: tonic_health::server::HealthReporter,
}

impl Node {
    pub async fn start(cfg: NodeConfig) -> anyhow::Result<Node> {
        let security = crate::security::ServerSecurity::load(cfg.grpc_addr, &cfg.security)?;
        let listener = TcpListener::bind(cfg.grpc_addr)
            .await
            .with_context(|| format!("binding the grpc port {}", cfg.grpc_addr))?;
        let local_addr = listener.local_addr()?;
        let params = crate::analytics::state::StateParams {
            window_hours: cfg.analytics.window_hours(),
            max_future_skew_seconds: i64::MAX,
            ..Default::default()
        };
        // In a cluster, join first: shards start inactive and the map says which to serve.
        let peers = match &cfg.cluster {
            Some(_) => Some(Arc::new(Peers::from_config(
                NodeId(cfg.node_id.clone()),
                &cfg.security,
            )?)),
            None => None,
        };
        let membership = match (&cfg.cluster, &peers) {
            (Some(c), Some(p)) => Some(join_cluster(&cfg, c, local_addr, p.clone()).await?),
            _ => None,
        };
        let (storage, mut restored) = match &cfg.data_dir {
            Some(dir) => {
                let lock = DirLock::acquire(dir)?;
                let recovered = storage::recover(dir, cfg.shard_count, &params)?;
                let wal = WalHandle::open(WalOptions {
                    dir: dir.join("wal"),
                    first_segment: recovered.next_segment,
                    fsync: !cfg.unsafe_no_fsync,
                })?;
                if cfg.unsafe_no_fsync {
                    warn!(
                        "--unsafe-no-fsync: ingest is acknowledged before the log reaches disk; a machine crash loses recent acknowledged events"
                    );
                }
                (Some((lock, wal, dir.clone())), recovered.shards)
            }
            None => (None, Default::default()),
        };
        let seed = match &cfg.data_dir {
            Some(dir) => snapshot::read_tiers(&dir.join("snapshots"))?
                .map(AnalyticsSnapshot::from_seed)
                .unwrap_or_default(),
            None => AnalyticsSnapshot::default(),
        };
        let (publish, snapshot_rx) = watch::channel(Arc::new(seed));
        let shared = NodeShared::new(
            cfg.analytics.clone(),
            snapshot_rx,
            storage.as_ref().map(|s| s.1.clone()),
            cfg.shard_count,
            membership.as_ref().map(|m| m.view.clone()),
        );
        let storage = storage
            .map(|(lock, wal, dir)| Arc::new(StorageCtl::new(lock, wal, dir, cfg.shard_count)));
        let initial_mode = if membership.is_some() {
            ShardMode::Inactive
        } else {
            ShardMode::Active
        };
        for states in restored.values() {
            for st in states {
                shared
                    .events_ingested
                    .fetch_add(st.lifetime.events_ingested, Ordering::Relaxed);
                if let Some(t) = st.last_seen() {
                    shared.observe_event_time(t);
                }
            }
        }

        let mut shards = Vec::with_capacity(cfg.shard_count as usize);
        for s in 0..cfg.shard_count {
            let restored = restored.remove(&ShardId(s)).unwrap_or_default();
            let args = ShardArgs {
                id: ShardId(s),
                shared: shared.clone(),
                restored,
                mode: initial_mode,
            };
            let (shard, _) = Actor::spawn(None, ShardActor, args)
                .await
                .context("spawning a shard actor")?;
            shards.push(shard);
        }
        metrics::gauge!("depin_shards").set(f64::from(cfg.shard_count));
        let (coordinator, _) = Actor::spawn(
            None,
            CoordinatorActor,
            CoordinatorArgs {
                shards: shards.clone(),
                shared: shared.clone(),
                publish,
            },
        )
        .await
        .context("spawning the coordinator")?;

        let gateway = Gateway {
            cluster: membership.as_ref().map(|m| m.view.clone()),
            shared: shared.clone(),
            shards: Arc::new(shards.clone()),
            coordinator: coordinator.clone(),
            inflight: Arc::new(Semaphore::new(cfg.limits.max_inflight_events)),
            limits: cfg.limits.clone(),
            node_id: cfg.node_id.clone(),
            guards: Arc::new(crate::gateway::limits::Guards::new(&cfg.limits)),
            peers,
            storage: storage.clone(),
        };
        let _ = coordinator.cast(CoordinatorMsg::Attach(Box::new(gateway.clone())));
        let handoff = match &membership {
            Some(m) => handoff::spawn(gateway.clone(), m.backend.clone()),
            None => Vec::new(),
        };

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<ReputationServiceServer<Gateway>>()
            .await;
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
        // TCP_NODELAY on every accepted connection: `serve_with_incoming` ignores the
        // builder's setting, and without it a small answer waits for the client's delayed
        // ACK (Nagle), about 40 ms a unary call on Linux.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        // Security (security.rs): TLS, tokens checked by path, message and stream caps.
        let mut builder =
            Server::builder().max_concurrent_streams(cfg.limits.max_concurrent_streams);
        if let Some(tls) = security.tls {
            builder = builder.tls_config(tls).context("configuring TLS")?;
        }
        let max_msg = cfg.limits.max_message_bytes;
        let router = builder
            .layer(crate::security::AuthLayer::new(security.auth))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                ReputationServiceServer::new(gateway.clone()).max_decoding_message_size(max_msg),
            )
            .add_service(
                IngestServiceServer::new(gateway.clone()).max_decoding_message_size(max_msg),
            )
            .add_service(
                ClusterServiceServer::new(gateway.clone()).max_decoding_message_size(max_msg),
            )
            .add_service(
                NodeServiceServer::new(gateway.clone())
                    .max_decoding_message_size(INTERNAL_MESSAGE_LIMIT)
                    .max_encoding_message_size(INTERNAL_MESSAGE_LIMIT),
            );
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        }));
        info!(addr = %local_addr, shards = cfg.shard_count, node = %cfg.node_id, "node serving");
        // Rankings and tiers as soon as the node is up, not one interval later.
        let _ = coordinator.cast(CoordinatorMsg::Tick);
        let checkpointer = storage.map(|storage| {
            let cp = Checkpointer {
                storage,
                shards: shards.clone(),
                inflight: gateway.inflight.clone(),
                max_inflight: cfg.limits.max_inflight_events,
                shared: shared.clone(),
            };
            let every = cfg.checkpoint_bytes;
            let cp = Arc::new(cp);
            let task_cp = cp.clone();
            let task = tokio::spawn(async move { task_cp.run(every).await });
            (cp, task)
        });
        Ok(Node {
            gateway,
            local_addr,
            stop_server: Some(stop_tx),
            server: Some(server),
            coordinator,
            shards,
            checkpointer,
            membership,
            handoff,
            health,
            handoff_timeout: cfg
                .cluster
                .as_ref()
                .map_or(Duration::ZERO, |c| c.handoff_timeout),
        })
    }

    /// Run a coordinator cycle now (rankings, tiers and network analytics up to date).
    pub async fn refresh(&self) -> anyhow::Result<Arc<AnalyticsSnapshot>> {
        Ok(ractor::call!(self.coordinator, CoordinatorMsg::Refresh)?)
    }

    /// Stop accepting calls, let in-flight ones finish, stop the actors. In a cluster, first
    /// hand every shard to the other nodes (bounded by the handoff timeout).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<ReputationServiceServer<Gateway>>()
            .await;
        self.health
            .set_not_serving::<IngestServiceServer<Gateway>>()
            .await;
        self.health
            .set_not_serving::<ClusterServiceServer<Gateway>>()
            .await;
        if let Some(m) = &self.membership {
            drain(m, self.handoff_timeout).await;
        }
        for t in self.handoff.drain(..) {
            t.abort();
        }
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            // Streams a client keeps open (WatchAlerts) must not hold the node forever.
            match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
                Ok(r) => r??,
                Err(_) => warn!("in-flight calls did not finish within 5 s; stopping anyway"),
            }
        }
        if let Some((cp, task)) = self.checkpointer.take() {
            task.abort();
            // A checkpoint at shutdown makes the next start a snapshot load, not a long replay.
            if let Err(e) = cp.checkpoint().await {
                warn!(error = %e, "final checkpoint failed; the log will be replayed at start");
            }
        }
        if let Some(m) = self.membership.take() {
            m.leave().await;
        }
        self.coordinator.stop(None);
        for s in &self.shards {
            s.stop(None);
        }
        info!("node stopped");
        Ok(())
    }
}

/// Connects to etcd and registers this node.
async fn join_cluster(
    cfg: &NodeConfig,
    c: &ClusterConfig,
    local_addr: SocketAddr,
    peers: Arc<Peers>,
) -> anyhow::Result<Membership> {
    let backend = EtcdBackend::connect(&c.etcd_endpoints, Keys::new(c.etcd_prefix.clone()))
        .await
        .with_context(|| format!("connecting to etcd at {}", c.etcd_endpoints.join(",")))?;
    check_credentials(&backend, &peers, &cfg.node_id, cfg.shard_count).await?;
    let node = NodeInfo {
        id: NodeId(cfg.node_id.clone()),
        advertise_addr: if c.advertise_addr.is_empty() {
            local_addr.to_string()
        } else {
            c.advertise_addr.clone()
        },
        region: c.region.clone(),
        draining: false,
    };
    Membership::start(
        Arc::new(backend),
        MembershipConfig {
            node,
            shard_count: cfg.shard_count,
            lease_ttl: c.lease_ttl,
            dead_node_grace: c.dead_node_grace,
            vetter: Some(peers),
        },
    )
    .await
    .context("joining the cluster")
}

/// Before joining, asks the registered nodes (`Hello`) whether they and this node share the
/// cluster's credentials and shard count. One that vouches is enough; if the only answers are
/// refusals, the node stops with the reason instead of joining a cluster that would give it
/// no shards. Nodes that cannot be reached prove nothing either way (the coordinator checks
/// again before it gives this node shards).
async fn check_credentials(
    backend: &EtcdBackend,
    peers: &Peers,
    me: &str,
    shard_count: u32,
) -> anyhow::Result<()> {
    use crate::cluster::ClusterBackend;
    use crate::cluster::member::Vetting;
    let others: Vec<NodeInfo> = backend
        .members()
        .await
        .context("reading the cluster's members")?
        .into_iter()
        .filter(|n| n.id.0 != me && !n.advertise_addr.is_empty())
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let answers = futures::future::join_all(others.iter().map(|n| async move {
        let r = tokio::time::timeout(Duration::from_secs(5), peers.hello(n, shard_count))
            .await
            .unwrap_or_else(|_| Err(Vetting::Unreachable("no answer within 5 s".into())));
        (n, r)
    }))
    .await;
    if answers.iter().any(|(_, r)| r.is_ok()) {
        return Ok(());
    }
    let refusals: Vec<String> = answers
        .iter()
        .filter_map(|(n, r)| match r {
            Err(Vetting::Refused(why)) => {
                Some(format!("node {} ({}): {why}", n.id, n.advertise_addr))
            }
            _ => None,
        })
        .collect();
    if !refusals.is_empty() {
        anyhow::bail!(
            "the cluster's nodes refuse this node's credentials, so it cannot join: {}. \
             Check --cluster-token-file (CLUSTER_TOKEN_FILE), the TLS flags and --shard-count \
             against the other nodes'",
            refusals.join("; ")
        );
    }
    for (n, r) in answers {
        if let Err(Vetting::Unreachable(why)) = r {
            warn!(node = %n.id, addr = %n.advertise_addr, reason = %why, "could not check the cluster's credentials with this node");
        }
    }
    Ok(())
}

/// Hands every shard of this node to the others before it leaves: marks it draining (the
/// coordinator plans its shards away, the mover hands them off) and waits until the map
/// gives it none, or the timeout passes. The last node keeps its shards: they come back
/// with its disk.
async fn drain(m: &Membership, timeout: Duration) {
    let mut view = m.view.clone();
    let me = view.borrow().me.clone();
    let others = view
        .borrow()
        .members
        .iter()
        .any(|n| Some(&n.id) != me.as_ref() && !n.draining);
    if !others {
        info!("no other node to hand shards to: they stay assigned to this node");
        return;
    }
    if let Err(e) = m.set_draining().await {
        warn!(error = %e, "could not announce draining; shards wait out the grace period");
        return;
    }
    info!(timeout = ?timeout, "handing off shards before exit");
    let started = std::time::Instant::now();
    let done = tokio::time::timeout(
        timeout,
        view.wait_for(|v| {
            v.map.as_ref().is_some_and(|map| {
                me.as_ref()
                    .is_some_and(|me| map.value.shards_of(me).next().is_none())
            })
        }),
    )
    .await;
    match done {
        Ok(Ok(_)) => info!(
            seconds = started.elapsed().as_secs_f64(),
            "every shard handed off"
        ),
        _ => {
            let left = m.view.borrow().map.as_ref().map_or(0, |map| {
                me.as_ref().map_or(0, |me| map.value.shards_of(me).count())
            });
            warn!(
                shards = left,
                "handoff did not finish in time: these shards wait out the grace period"
            );
        }
    }
}

/// Shard groups a checkpoint captures one after the other. Ingest pauses while a group's
/// states are captured (not while they are written), and a group's copies are the most a
/// checkpoint holds in memory at once: a sixteenth of the node's providers.
const CHECKPOINT_GROUPS: usize = 16;

/// Periodic checkpoints: for each group of shards, pause ingest, rotate the log and capture
/// the group's states; resume ingest and write their snapshots, stamped with that segment.
/// Then drop the segments before the first group's.
struct Checkpointer {
    storage: Arc<StorageCtl>,
    shards: Vec<ActorRef<ShardMsg>>,
    inflight: Arc<Semaphore>,
    max_inflight: usize,
    shared: Arc<NodeShared>,
}

impl Checkpointer {
    async fn run(&self, every_bytes: u64) {
        let mut last = metrics_wal_bytes();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let now = metrics_wal_bytes();
            if now.saturating_sub(last) >= every_bytes {
                if let Err(e) = self.checkpoint().await {
                    warn!(error = %e, "checkpoint failed");
                }
                last = metrics_wal_bytes();
            }
        }
    }

    async fn checkpoint(&self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let _writing = self.storage.writing.lock().await;
        let snap_dir = self.storage.dir.join("snapshots");
        let (mut bytes, mut providers, mut paused) = (0, 0, std::time::Duration::ZERO);
        let mut first_seq = None;
        let per_group = self.shards.len().div_ceil(CHECKPOINT_GROUPS).max(1);
        for (g, group) in self.shards.chunks(per_group).enumerate() {
            // Ingest pauses only while this group's states are captured: every permit held,
            // no batch is between apply and log, so the group's snapshots hold exactly the
            // records of the segments before `seq`. They are written after ingest resumes.
            let pause = self.inflight.acquire_many(self.max_inflight as u32).await?;
            let pause_started = std::time::Instant::now();
            let seq = self.storage.wal.rotate().await?;
            first_seq.get_or_insert(seq);
            let mut captured = Vec::with_capacity(group.len());
            for (k, shard) in group.iter().enumerate() {
                let states = ractor::call!(shard, ShardMsg::States)?;
                captured.push((ShardId((g * per_group + k) as u32), states));
            }
            drop(pause);
            paused += pause_started.elapsed();
            for (id, states) in captured {
                providers += states.len();
                let dir = snap_dir.clone();
                bytes += tokio::task::spawn_blocking(move || {
                    // parked providers decoded here, with ingest running
                    let states = CapturedState::decode_all(states);
                    snapshot::write(&dir, id, seq, &states)
                })
                .await??;
            }
        }
        let tiers = self.shared.snapshot().seed();
        let dir = snap_dir.clone();
        tokio::task::spawn_blocking(move || snapshot::write_tiers(&dir, &tiers)).await??;
        if let Some(seq) = first_seq {
            self.storage.wal.prune_before(seq).await?;
        }
        metrics::histogram!("depin_checkpoint_pause_seconds").record(paused.as_secs_f64());
        info!(
            segment = ?first_seq,
            providers,
            bytes,
            seconds = started.elapsed().as_secs_f64(),
            ingest_paused_seconds = paused.as_secs_f64(),
            "checkpoint written"
        );
        Ok(())
    }
}

/// Log bytes written by this process (the WAL writer counts them).
fn metrics_wal_bytes() -> u64 {
    crate::storage::wal::BYTES_WRITTEN.load(Ordering::Relaxed)
}
