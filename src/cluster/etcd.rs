//! The etcd backend (etcd-client 0.21, etcd 3.4+).
//!
//! Registrations are keys under a lease, the coordinator is elected with etcd's election
//! API, and the shard map is one JSON key changed only by a transaction comparing its
//! `mod_revision`. Watches keep a local copy of a key range: they read it, watch from the
//! next revision, and read it again after any watch error, so they ride through etcd
//! restarts and compactions.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, ResignOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use tracing::{debug, warn};

use super::backend::{
    ClusterBackend, Leadership, Lease, OnceAction, Renewer, Watched, campaign_with,
};
use super::{ClusterError, Keys, LeaseId, NodeId, NodeInfo, ShardMap, Versioned};

/// The command line of a one-member etcd on loopback (`etcd` on PATH; Debian's
/// etcd-server), with its data in `data_dir`, for the bench and the tests that start their
/// own.
pub fn loopback_etcd(
    data_dir: &std::path::Path,
    client_port: u16,
    peer_port: u16,
) -> std::process::Command {
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = std::process::Command::new("etcd");
    cmd.args(["--name", "default"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")]);
    cmd
}

/// How long a watch waits before reading its range again after an error.
const RESYNC_DELAY: Duration = Duration::from_millis(500);

/// The etcd cluster backend. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct EtcdBackend {
    client: Client,
    keys: Keys,
}

/// A key as a watch keeps it.
#[derive(Clone, Debug)]
struct Entry {
    create_revision: i64,
    mod_revision: i64,
    value: Vec<u8>,
}

type Range = BTreeMap<String, Entry>;

impl EtcdBackend {
    /// Connects to etcd at `endpoints` (`http://host:port`), with every key under `keys`.
    pub async fn connect(endpoints: &[String], keys: Keys) -> Result<Self, ClusterError> {
        // http2 keep-alive notices a dead etcd within seconds instead of at the next call
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Self { client, keys })
    }

    /// The keys this backend uses.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn get_range(&self, key: &str, prefix: bool) -> Result<(Range, i64), ClusterError> {
        let options = prefix.then(|| GetOptions::new().with_prefix());
        let resp = self.client.kv_client().get(key, options).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let range = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                Some((
                    kv.key_str().ok()?.to_owned(),
                    Entry {
                        create_revision: kv.create_revision(),
                        mod_revision: kv.mod_revision(),
                        value: kv.value().to_vec(),
                    },
                ))
            })
            .collect();
        Ok((range, revision))
    }

    /// Keeps `view(range)` current in the background for the key (or prefix) `key`.
    async fn watch_range<T>(
        &self,
        key: String,
        prefix: bool,
        view: fn(&Keys, &Range) -> T,
    ) -> Result<Watched<T>, ClusterError>
    where
        T: Clone + PartialEq + Send + Sync + 'static,
    {
        let (mut range, mut revision) = self.get_range(&key, prefix).await?;
        let (tx, rx) = watch::channel(view(&self.keys, &range));
        let this = self.clone();
        let task = tokio::spawn(async move {
            loop {
                match this
                    .follow(&key, prefix, revision + 1, &mut range, view, &tx)
                    .await
                {
                    Ok(()) => debug!(key, "watch ended, resyncing"),
                    Err(e) => debug!(key, error = %e, "watch failed, resyncing"),
                }
                if tx.is_closed() {
                    return;
                }
                loop {
                    sleep(RESYNC_DELAY).await;
                    match this.get_range(&key, prefix).await {
                        Ok((r, rev)) => {
                            (range, revision) = (r, rev);
                            let v = view(&this.keys, &range);
                            tx.send_if_modified(|cur| replace_if_ne(cur, v));
                            break;
                        }
                        Err(e) => debug!(key, error = %e, "resync failed"),
                    }
                }
            }
        });
        Ok(Watched::new(rx, Some(task)))
    }

    /// Applies watch events from `start` to `range` until the watch fails or ends.
    async fn follow<T: PartialEq>(
        &self,
        key: &str,
        prefix: bool,
        start: i64,
        range: &mut Range,
        view: fn(&Keys, &Range) -> T,
        tx: &watch::Sender<T>,
    ) -> Result<(), ClusterError> {
        let mut options = WatchOptions::new().with_start_revision(start);
        if prefix {
            options = options.with_prefix();
        }
        let mut stream = self.client.watch_client().watch(key, Some(options)).await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                // e.g. the start revision was compacted: read the range again
                return Ok(());
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(k) = kv.key_str() else { continue };
                match event.event_type() {
                    EventType::Put => {
                        range.insert(
                            k.to_owned(),
                            Entry {
                                create_revision: kv.create_revision(),
                                mod_revision: kv.mod_revision(),
                                value: kv.value().to_vec(),
                            },
                        );
                    }
                    EventType::Delete => {
                        range.remove(k);
                    }
                }
            }
            let v = view(&self.keys, range);
            tx.send_if_modified(|cur| replace_if_ne(cur, v));
            if tx.is_closed() {
                return Ok(());
            }
        }
        Ok(())
    }
}

fn replace_if_ne<T: PartialEq>(slot: &mut T, new: T) -> bool {
    if *slot == new {
        return false;
    }
    *slot = new;
    true
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, ClusterError> {
    serde_json::from_slice(value).map_err(|e| ClusterError::Decode {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn members_view(keys: &Keys, range: &Range) -> Vec<NodeInfo> {
    range
        .iter()
        .filter(|(k, _)| keys.parse_node(k).is_some())
        .filter_map(|(k, e)| match decode::<NodeInfo>(k, &e.value) {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(error = %e, "ignoring a malformed node registration");
                None
            }
        })
        .collect()
}

/// The leader is the campaigner with the oldest key (etcd's election rule).
fn leader_view(_: &Keys, range: &Range) -> Option<NodeId> {
    range
        .values()
        .min_by_key(|e| e.create_revision)
        .and_then(|e| String::from_utf8(e.value.clone()).ok())
        .map(NodeId)
}

fn shard_map_view(keys: &Keys, range: &Range) -> Option<Versioned<ShardMap>> {
    let key = keys.shard_map();
    let e = range.get(&key)?;
    match decode(&key, &e.value) {
        Ok(value) => Some(Versioned {
            revision: e.mod_revision as u64,
            value,
        }),
        Err(e) => {
            warn!(error = %e, "ignoring a malformed shard map");
            None
        }
    }
}

/// True for etcd's "not found" answers about a lease (it expired or was revoked).
fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("lease not found"))
}

struct EtcdRenewer {
    client: Client,
    id: i64,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

impl Renewer for EtcdRenewer {
    async fn renew(&mut self) -> Result<Option<Duration>, ClusterError> {
        if self.stream.is_none() {
            self.stream = Some(self.client.lease_client().keep_alive(self.id).await?);
        }
        let (keeper, stream) = self.stream.as_mut().expect("opened above");
        let answer = async {
            keeper.keep_alive().await?;
            stream.message().await
        }
        .await;
        match answer {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(Some(Duration::from_secs(resp.ttl() as u64))),
            Ok(Some(_)) => Ok(None),
            Ok(None) => {
                self.stream = None;
                Err(ClusterError::Closed)
            }
            Err(e) if is_lease_not_found(&e) => Ok(None),
            Err(e) => {
                // a broken stream is reopened on the next try
                self.stream = None;
                Err(e.into())
            }
        }
    }
}

impl ClusterBackend for EtcdBackend {
    fn register(
        &self,
        node: NodeInfo,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Lease, ClusterError>> {
        async move {
            let granted_at = Instant::now();
            let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
            let grant = self.client.lease_client().grant(secs, None).await?;
            let id = grant.id();
            let granted = Duration::from_secs(grant.ttl().max(1) as u64);
            let value = serde_json::to_vec(&node).expect("node info serializes");
            let put = self
                .client
                .kv_client()
                .put(
                    self.keys.node(&node.id),
                    value,
                    Some(PutOptions::new().with_lease(id)),
                )
                .await;
            if let Err(e) = put {
                let _ = self.client.lease_client().revoke(id).await;
                return Err(e.into());
            }
            let client = self.client.clone();
            let revoke: OnceAction = Box::new(move || {
                async move {
                    match client.lease_client().revoke(id).await {
                        Ok(_) => Ok(()),
                        Err(e) if is_lease_not_found(&e) => Ok(()),
                        Err(e) => Err(e.into()),
                    }
                }
                .boxed()
            });
            let renewer = EtcdRenewer {
                client: self.client.clone(),
                id,
                stream: None,
            };
            Ok(Lease::start(
                LeaseId(id),
                granted,
                granted_at,
                renewer,
                revoke,
            ))
        }
        .boxed()
    }

    fn update_member(
        &self,
        lease: LeaseId,
        node: NodeInfo,
    ) -> BoxFuture<'_, Result<(), ClusterError>> {
        async move {
            let value = serde_json::to_vec(&node).expect("node info serializes");
            self.client
                .kv_client()
                .put(
                    self.keys.node(&node.id),
                    value,
                    Some(PutOptions::new().with_lease(lease.0)),
                )
                .await
                .map_err(|e| {
                    if is_lease_not_found(&e) {
                        ClusterError::LeaseLost(lease)
                    } else {
                        e.into()
                    }
                })?;
            Ok(())
        }
        .boxed()
    }

    fn members(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, ClusterError>> {
        async move {
            let (range, _) = self.get_range(&self.keys.nodes_prefix(), true).await?;
            Ok(members_view(&self.keys, &range))
        }
        .boxed()
    }

    fn watch_members(&self) -> BoxFuture<'_, Result<Watched<Vec<NodeInfo>>, ClusterError>> {
        self.watch_range(self.keys.nodes_prefix(), true, members_view)
            .boxed()
    }

    fn campaign<'a>(
        &'a self,
        lease: &'a Lease,
        node: &'a NodeId,
    ) -> BoxFuture<'a, Result<Leadership, ClusterError>> {
        let raw = async move {
            let mut election = self.client.election_client();
            let resp = election
                .campaign(self.keys.election(), node.0.as_bytes(), lease.id().0)
                .await
                .map_err(|e| {
                    if is_lease_not_found(&e) {
                        ClusterError::LeaseLost(lease.id())
                    } else {
                        e.into()
                    }
                })?;
            let key = resp.leader().cloned().ok_or_else(|| ClusterError::Decode {
                key: self.keys.election(),
                reason: "campaign answer without a leader key".into(),
            })?;
            let resign: OnceAction = Box::new(move || {
                async move {
                    election
                        .resign(Some(ResignOptions::new().with_leader(key)))
                        .await?;
                    Ok(())
                }
                .boxed()
            });
            Ok(resign)
        };
        campaign_with(lease, node, raw).boxed()
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<NodeId>, ClusterError>> {
        async move {
            match self
                .client
                .election_client()
                .leader(self.keys.election())
                .await
            {
                Ok(resp) => Ok(resp
                    .kv()
                    .and_then(|kv| kv.value_str().ok())
                    .map(|v| NodeId(v.to_owned()))),
                Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => {
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }

    fn watch_leader(&self) -> BoxFuture<'_, Result<Watched<Option<NodeId>>, ClusterError>> {
        self.watch_range(self.keys.election_candidates_prefix(), true, leader_view)
            .boxed()
    }

    fn shard_map(&self) -> BoxFuture<'_, Result<Option<Versioned<ShardMap>>, ClusterError>> {
        async move {
            let key = self.keys.shard_map();
            let (range, _) = self.get_range(&key, false).await?;
            match range.get(&key) {
                None => Ok(None),
                Some(e) => Ok(Some(Versioned {
                    revision: e.mod_revision as u64,
                    value: decode(&key, &e.value)?,
                })),
            }
        }
        .boxed()
    }

    fn compare_and_set_shard_map<'a>(
        &'a self,
        expected: Option<u64>,
        map: &'a ShardMap,
    ) -> BoxFuture<'a, Result<u64, ClusterError>> {
        async move {
            let key = self.keys.shard_map();
            let value = serde_json::to_vec(map).expect("shard map serializes");
            let compare = match expected {
                // version 0 is how etcd compares a key that does not exist
                None => Compare::version(key.as_str(), CompareOp::Equal, 0),
                Some(r) => Compare::mod_revision(key.as_str(), CompareOp::Equal, r as i64),
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([
                    TxnOp::put(key.as_str(), value.clone(), None),
                    TxnOp::put(self.keys.shard_map_history(map.epoch), value, None),
                ])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = self.client.kv_client().txn(txn).await?;
            if resp.succeeded() {
                // the transaction's revision is the new mod_revision of the key
                return Ok(resp.header().map_or(0, |h| h.revision()) as u64);
            }
            let current = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision() as u64),
                _ => None,
            });
            Err(ClusterError::StaleRevision { expected, current })
        }
        .boxed()
    }

    fn watch_shard_map(
        &self,
    ) -> BoxFuture<'_, Result<Watched<Option<Versioned<ShardMap>>>, ClusterError>> {
        self.watch_range(self.keys.shard_map(), false, shard_map_view)
            .boxed()
    }
}
