//! Routing in a cluster: which node serves a shard, the internal clients to the other nodes,
//! and the retry of calls that hit a shard in motion.
//!
//! A shard is served here when the map this node holds names it as owner and its actor is
//! not inactive; it is served by another node when the map names a registered member; else
//! (no map yet, owner down and waited for, shard being activated) the call is retried for up
//! to [`Limits::route_retry`](super::Limits) and then answered UNAVAILABLE with retry info.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::actors::ShardMode;
use crate::cluster::NodeId;
use crate::gateway::{Gateway, GatewayError};
use crate::model::ShardId;
use crate::proto::internal::node_service_client::NodeServiceClient;
use crate::proto::internal::provider_call_request::Call;
use crate::proto::internal::provider_call_response::Answer;
use crate::proto::internal::{ProviderCallRequest, ProviderCallResponse};

/// Internal messages can be large (a shard's states, a coordinator snapshot).
pub const INTERNAL_MESSAGE_LIMIT: usize = 512 << 20;

/// Adds the cluster's token (`--cluster-token-file`) to every node-to-node call.
pub type PeerAuth = crate::security::BearerInterceptor;

/// A transport failure's reason, with its sources (a TLS failure names the certificate
/// problem there).
fn transport_reason(st: &tonic::Status) -> String {
    let mut out = st.message().to_string();
    let mut src = std::error::Error::source(st);
    while let Some(e) = src {
        out.push_str(": ");
        out.push_str(&e.to_string());
        src = e.source();
    }
    out
}

impl crate::cluster::member::Vetter for Peers {
    fn vet<'a>(
        &'a self,
        node: &'a crate::cluster::NodeInfo,
        shard_count: u32,
    ) -> futures::future::BoxFuture<'a, Result<(), crate::cluster::member::Vetting>> {
        Box::pin(self.hello(node, shard_count))
    }
}

pub type PeerClient = NodeServiceClient<InterceptedService<Channel, PeerAuth>>;

/// Clients to the other nodes, by id, reconnected when a node's address changes.
pub struct Peers {
    pub me: NodeId,
    auth: PeerAuth,
    /// TLS to the other nodes, when this node serves TLS (they all do then).
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// HMAC key from the cluster token: proves this node holds it (`Hello`).
    proof_key: Option<ring::hmac::Key>,
    clients: Mutex<HashMap<NodeId, (String, PeerClient)>>,
}

impl Peers {
    /// Plaintext clients without credentials (tests, loopback clusters).
    pub fn new(me: NodeId, auth: PeerAuth) -> Self {
        Self {
            me,
            auth,
            tls: None,
            proof_key: None,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Clients as the node's security settings say: the cluster token on every call, and
    /// when the node serves TLS, TLS to the others trusting `--tls-peer-ca` (default
    /// `--tls-client-ca`) and presenting the node's own certificate.
    pub fn from_config(me: NodeId, sec: &crate::security::SecurityConfig) -> anyhow::Result<Self> {
        let token = sec
            .cluster_token_file
            .as_deref()
            .map(crate::security::read_token_file)
            .transpose()?;
        let auth = crate::security::BearerInterceptor::new(token.as_deref())?;
        let proof_key = token
            .as_deref()
            .map(|t| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, t.as_bytes()));
        let tls = match &sec.tls {
            None => None,
            Some(files) => {
                let Some(ca) = sec.peer_ca.as_deref() else {
                    anyhow::bail!(
                        "a cluster node serving TLS calls the other nodes over TLS: give \
                         --tls-peer-ca (TLS_PEER_CA), the CA their certificates chain to"
                    );
                };
                Some(crate::tls::client_tls_config(
                    Some(ca),
                    Some((files.cert.as_path(), files.key.as_path())),
                )?)
            }
        };
        Ok(Self {
            tls,
            proof_key,
            ..Self::new(me, auth)
        })
    }

    /// The proof of holding the cluster token for `nonce` (empty without a token).
    pub fn prove(&self, nonce: &[u8]) -> Vec<u8> {
        self.proof_key
            .as_ref()
            .map(|k| ring::hmac::sign(k, nonce).as_ref().to_vec())
            .unwrap_or_default()
    }

    /// Asks `node` to prove it holds the cluster's credentials and runs with `shard_count`
    /// shards. Its server checks ours on the way in (the cluster token, and with TLS the
    /// certificates both ways).
    pub async fn hello(
        &self,
        node: &crate::cluster::NodeInfo,
        shard_count: u32,
    ) -> Result<(), crate::cluster::member::Vetting> {
        use crate::cluster::member::Vetting;
        let mut client = self
            .client(&node.id, &node.advertise_addr)
            .map_err(|e| Vetting::Unreachable(e.to_string()))?;
        let nonce: [u8; 32] = rand::random();
        let answer = client
            .hello(crate::proto::internal::HelloRequest {
                from: self.me.0.clone(),
                nonce: nonce.to_vec(),
                shard_count,
            })
            .await
            .map_err(|st| match st.code() {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Vetting::Refused(
                    format!("it refused this node's cluster token: {}", st.message()),
                ),
                // an older node without Hello: not the same build
                tonic::Code::Unimplemented => Vetting::Refused(
                    "it does not answer Hello (a different build of depin-analytics)".into(),
                ),
                _ => Vetting::Unreachable(transport_reason(&st)),
            })?
            .into_inner();
        if answer.shard_count != shard_count {
            return Err(Vetting::Refused(format!(
                "it runs with {} shards, this node with {shard_count}",
                answer.shard_count
            )));
        }
        match &self.proof_key {
            None => Ok(()),
            Some(k) => ring::hmac::verify(k, &nonce, &answer.proof).map_err(|_| {
                Vetting::Refused(
                    "it does not hold the cluster token (--cluster-token-file): its proof does \
                     not match"
                        .into(),
                )
            }),
        }
    }

    /// The client for `node` at `addr` (HOST:PORT).
    pub fn client(&self, node: &NodeId, addr: &str) -> Result<PeerClient, GatewayError> {
        let mut clients = self.clients.lock().expect("peer clients lock");
        if let Some((a, c)) = clients.get(node)
            && a == addr
        {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| GatewayError::Internal(format!("node {node} address {addr:?}: {e}")))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| GatewayError::Internal(format!("TLS to node {node}: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let client =
            NodeServiceClient::with_interceptor(endpoint.connect_lazy(), self.auth.clone())
                .max_decoding_message_size(INTERNAL_MESSAGE_LIMIT)
                .max_encoding_message_size(INTERNAL_MESSAGE_LIMIT);
        clients.insert(node.clone(), (addr.to_string(), client.clone()));
        Ok(client)
    }
}

/// Where a shard is served.
pub enum Route {
    Local,
    Remote(NodeId, Box<PeerClient>),
    /// Nowhere right now; the reason says why.
    Unavailable(String),
}

impl Gateway {
    /// Where `shard` is served, by the map this node holds.
    pub fn route(&self, shard: ShardId) -> Route {
        let (Some(view), Some(peers)) = (&self.cluster, &self.peers) else {
            return Route::Local;
        };
        let view = view.borrow();
        let Some(map) = &view.map else {
            return Route::Unavailable("the cluster has no shard map yet".into());
        };
        let Some(owner) = map.value.owner(shard) else {
            return Route::Unavailable(format!("shard {shard} is not in the shard map"));
        };
        if *owner == peers.me {
            return match self.shared.shard_mode(shard) {
                ShardMode::Inactive => {
                    Route::Unavailable(format!("shard {shard} is being activated on this node"))
                }
                _ => Route::Local,
            };
        }
        match view.member(owner) {
            Some(m) => match peers.client(owner, &m.advertise_addr) {
                Ok(c) => Route::Remote(owner.clone(), Box::new(c)),
                Err(e) => Route::Unavailable(e.to_string()),
            },
            None => Route::Unavailable(format!(
                "shard {shard}'s owner {owner} is down; its shards wait for it to return"
            )),
        }
    }

    /// Every other registered node, with its client.
    pub fn other_nodes(&self) -> Vec<(NodeId, PeerClient)> {
        let (Some(view), Some(peers)) = (&self.cluster, &self.peers) else {
            return Vec::new();
        };
        let members = view.borrow().members.clone();
        members
            .iter()
            .filter(|m| m.id != peers.me)
            .filter_map(|m| Some((m.id.clone(), peers.client(&m.id, &m.advertise_addr).ok()?)))
            .collect()
    }

    /// Waits a little before retrying a call that found its shard unavailable; `Err` once
    /// the retry budget that started at `since` is spent.
    pub async fn backoff(&self, since: Instant, why: &str) -> Result<(), GatewayError> {
        if since.elapsed() >= self.limits.route_retry {
            return Err(GatewayError::Unavailable(why.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }

    /// A provider-keyed query, answered by the provider's owner (here or over the internal
    /// service), retried while its shard is unavailable or moving.
    pub async fn provider_call(
        &self,
        provider_id: &str,
        call: Call,
    ) -> Result<Answer, GatewayError> {
        super::validate::check_id("provider_id", provider_id)
            .map_err(|v| GatewayError::invalid(v.field, v.description))?;
        let shard = self.shard_of(&crate::model::ProviderId::new(provider_id));
        let since = Instant::now();
        loop {
            let why = match self.route(shard) {
                Route::Local => match self.local_provider_call(call.clone()).await {
                    Err(GatewayError::Unavailable(why)) => why,
                    other => return other,
                },
                Route::Remote(node, mut client) => {
                    let req = ProviderCallRequest {
                        call: Some(call.clone()),
                    };
                    match client.provider_call(req).await {
                        Ok(r) => {
                            let ProviderCallResponse { answer } = r.into_inner();
                            return answer.ok_or_else(|| {
                                GatewayError::Internal(format!("node {node} answered nothing"))
                            });
                        }
                        Err(s) if s.code() == tonic::Code::Unavailable => {
                            format!("node {node}: {}", s.message())
                        }
                        Err(s) => return Err(GatewayError::Remote(s)),
                    }
                }
                Route::Unavailable(why) => why,
            };
            self.backoff(since, &why).await?;
        }
    }

    /// A provider-keyed query answered from this node's shards only.
    pub async fn local_provider_call(&self, call: Call) -> Result<Answer, GatewayError> {
        Ok(match call {
            Call::Profile(r) => Answer::Profile(self.profile(r.provider_id).await?),
            Call::Trend(r) => Answer::Trend(self.trend(r).await?),
            Call::Forecast(r) => Answer::Forecast(self.forecast(r).await?),
            Call::Pattern(r) => Answer::Pattern(self.patterns(r.provider_id).await?),
        })
    }
}
