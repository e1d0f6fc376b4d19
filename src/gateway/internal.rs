//! `NodeService`: the node-to-node side of a cluster (proto `depin.analytics.internal.v1`).
//!
//! Every handler answers from this node's own shards and never forwards again: a call that
//! reaches a node which does not serve the shard (its map is newer or older than the
//! caller's) is answered with a retryable status or a `retry` list, and the calling gateway
//! routes again.

use std::time::Duration;

use futures::future::join_all;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, warn};

use crate::actors::provider::EventResult;
use crate::actors::{CoordinatorMsg, ShardMode, ShardMsg};
use crate::analytics::ranking::RankingContext;
use crate::analytics::recommend::{CandidateIndex, JobRequirements};
use crate::analytics::state::ProviderState;
use crate::analytics::view::{RecommendQuery, ShardRecommendations, ShardSummaries, SnapshotWire};
use crate::gateway::route::Route;
use crate::gateway::{Gateway, GatewayError};
use crate::model::{ShardId, TelemetryEvent};
use crate::proto::internal as ipb;
use crate::proto::internal::node_service_server::NodeService;

/// Largest blob a node decodes (matches the internal message size limit).
const MAX_BLOB: usize = super::route::INTERNAL_MESSAGE_LIMIT;

fn blob_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BLOB>()
}

/// Encodes an engine value for the internal service.
pub fn to_blob<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, blob_config()).expect("engine values encode")
}

/// Decodes an engine value sent by another node.
pub fn from_blob<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(b, blob_config())
        .map(|(v, _)| v)
        .map_err(|e| format!("undecodable internal payload: {e}"))
}

fn bad_blob(e: String) -> Status {
    Status::invalid_argument(e)
}

/// One pass over `indexes` for `query` ([`shortlist`](crate::analytics::recommend::shortlist)).
fn shortlist_of(
    indexes: &[std::sync::Arc<CandidateIndex>],
    query: &RecommendQuery,
) -> ShardRecommendations {
    let segments: Vec<_> = indexes.iter().map(|x| x.segment()).collect();
    crate::analytics::recommend::shortlist(
        &segments,
        &query.requirements,
        &query.context,
        &query.config,
    )
}

/// A recommendation query as it travels between nodes: each node adds its own config.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct WireRecommend {
    pub requirements: JobRequirements,
    pub context: RankingContext,
}

impl Gateway {
    /// The shards this node serves now (all of them, standalone).
    pub fn served_shards(&self) -> Vec<ShardId> {
        (0..self.shard_count())
            .map(ShardId)
            .filter(|s| matches!(self.route(*s), Route::Local))
            .collect()
    }

    /// Summaries of every shard this node serves.
    pub async fn local_summaries(&self) -> Result<Vec<ShardSummaries>, GatewayError> {
        let calls = self.served_shards().into_iter().map(|s| {
            let shard = self.shards[s.0 as usize].clone();
            async move { ractor::call!(shard, ShardMsg::Summaries) }
        });
        let mut out = Vec::new();
        for r in join_all(calls).await {
            out.push(r?);
        }
        Ok(out)
    }

    /// This node's candidates for a job: a pass over the candidate indexes its served shards
    /// published at the last coordinator cycle (two passes at once, over two halves of the
    /// shards, from [`Limits::parallel_scan_min`](crate::gateway::Limits) candidates), merged
    /// into one shortlist: a node sends the gateway at most `max_results` picks plus its
    /// exploration candidates, and no shard actor is asked.
    pub async fn local_recommend(
        &self,
        query: &RecommendQuery,
    ) -> Result<Vec<ShardRecommendations>, GatewayError> {
        let mut indexes: Vec<_> = self
            .served_shards()
            .into_iter()
            .map(|s| self.shared.candidate_index(s))
            .collect();
        let sizes: Vec<usize> = indexes.iter().map(|x| x.candidates.len()).collect();
        if sizes.iter().sum::<usize>() < self.limits.parallel_scan_min || indexes.len() < 2 {
            return Ok(vec![shortlist_of(&indexes, query)]);
        }
        // Two halves, one on a blocking-pool thread while this one scans the other: a call
        // uses both cores of a small machine. Merging the two shortlists is exact.
        let mid = crate::analytics::recommend::halfway(&sizes);
        let second = indexes.split_off(mid);
        let query2 = query.clone();
        let other = tokio::task::spawn_blocking(move || shortlist_of(&second, &query2));
        let first = shortlist_of(&indexes, query);
        let second = other.await.map_err(|e| {
            error!(error = %e, "the recommendation scan's second half failed");
            GatewayError::Internal("the recommendation scan failed".into())
        })?;
        Ok(vec![crate::analytics::recommend::merge_shortlists(
            vec![first, second],
            query.requirements.max_results,
            &query.config,
        )])
    }

    /// The shard's storage lock ([`StorageCtl::lock_shard`](crate::storage::StorageCtl::lock_shard)),
    /// when this node keeps a data directory.
    pub async fn lock_shard_storage(
        &self,
        shard: ShardId,
    ) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.storage {
            Some(storage) => Some(storage.lock_shard(shard).await),
            None => None,
        }
    }

    /// A shard arriving in a handoff: checked against this node's map, made durable (its
    /// chunks written as received) while its actors start, then held inactive until the map
    /// flips it to this node. The sender flips only after this answers, so states installed
    /// but not made durable (a failed write) are never served: the retry replaces them.
    async fn receive_shard(
        &self,
        shard: ShardId,
        from: &str,
        planned_at: u64,
        states: Vec<ProviderState>,
        encoded: crate::storage::snapshot::EncodedStates,
    ) -> Result<usize, Status> {
        let (Some(view), Some(peers)) = (&self.cluster, &self.peers) else {
            return Err(Status::failed_precondition("this node is not in a cluster"));
        };
        if shard.0 >= self.shard_count() {
            return Err(Status::invalid_argument(format!(
                "shard_id {shard} is beyond the shard count {}",
                self.shard_count()
            )));
        }
        // fencing: only a move the map describes, from the node the map names, planned by
        // the epoch the sender names (0: a sender that names none)
        let me = peers.me.clone();
        let mut rx = view.clone();
        let expected = matches!(
            tokio::time::timeout(
                Duration::from_secs(5),
                rx.wait_for(|v| {
                    v.map.as_ref().is_some_and(|m| {
                        m.value.move_of(shard).is_some_and(|(to, since)| {
                            *to == me && (planned_at == 0 || since.0 == planned_at)
                        }) && m.value.owner(shard).is_some_and(|o| o.0 == from)
                    })
                }),
            )
            .await,
            Ok(Ok(_))
        );
        if !expected {
            return Err(Status::failed_precondition(format!(
                "the shard map does not move shard {shard} from {from} to {me} as planned at \
                 epoch {planned_at}"
            )));
        }
        // from the check to the install: a release of this shard's stale copy must not
        // write its empty snapshot after these states'
        let _lock = self.lock_shard_storage(shard).await;
        if self.shared.shard_mode(shard) != ShardMode::Inactive {
            return Err(Status::failed_precondition(format!(
                "shard {shard} still holds a copy on {me} that is being released; retry"
            )));
        }
        let n = states.len();
        if encoded.count() != n as u64 {
            return Err(Status::invalid_argument(format!(
                "the transfer of shard {shard} carries {n} states in chunks that count {}",
                encoded.count()
            )));
        }
        let started = std::time::Instant::now();
        let persist = async {
            match &self.storage {
                Some(storage) => {
                    storage
                        .persist_encoded(shard, encoded)
                        .await
                        .map_err(|e| Status::internal(format!("persisting shard {shard}: {e}")))?;
                    Ok::<_, Status>(started.elapsed().as_millis() as u64)
                }
                None => Ok(0),
            }
        };
        let install = async {
            let n = ractor::call!(self.shards[shard.0 as usize], ShardMsg::Install, states)
                .map_err(|e| Status::unavailable(format!("shard {shard} actor: {e}")))?;
            Ok::<_, Status>((n, started.elapsed().as_millis() as u64))
        };
        let (persist_ms, installed) = tokio::join!(persist, install);
        let (persist_ms, (installed, install_ms)) = (persist_ms?, installed?);
        debug_assert_eq!(installed, n);
        info!(
            shard = %shard,
            from,
            providers = n,
            persist_ms,
            install_ms,
            "shard received"
        );
        Ok(n)
    }
}

#[tonic::async_trait]
impl NodeService for Gateway {
    async fn ingest(
        &self,
        request: Request<ipb::ForwardedEvents>,
    ) -> Result<Response<ipb::ForwardedResults>, Status> {
        let events: Vec<(u32, TelemetryEvent)> =
            from_blob(&request.into_inner().events).map_err(bad_blob)?;
        let (done, retry, why): (Vec<(u32, EventResult)>, _, _) =
            self.apply(events, false).await.map_err(Status::from)?;
        Ok(Response::new(ipb::ForwardedResults {
            results: to_blob(&done),
            retry: retry.iter().map(|(i, _)| *i).collect(),
            retry_reason: why,
        }))
    }

    async fn provider_call(
        &self,
        request: Request<ipb::ProviderCallRequest>,
    ) -> Result<Response<ipb::ProviderCallResponse>, Status> {
        let call = request
            .into_inner()
            .call
            .ok_or_else(|| Status::invalid_argument("call is required"))?;
        let answer = self.local_provider_call(call).await?;
        Ok(Response::new(ipb::ProviderCallResponse {
            answer: Some(answer),
        }))
    }

    async fn hello(
        &self,
        request: Request<ipb::HelloRequest>,
    ) -> Result<Response<ipb::HelloResponse>, Status> {
        let r = request.into_inner();
        if r.nonce.len() < 16 || r.nonce.len() > 64 {
            return Err(Status::invalid_argument("nonce: 16 to 64 bytes"));
        }
        let proof = self
            .peers
            .as_ref()
            .map(|p| p.prove(&r.nonce))
            .unwrap_or_default();
        Ok(Response::new(ipb::HelloResponse {
            node_id: self.node_id.clone(),
            proof,
            shard_count: self.shard_count(),
        }))
    }

    async fn summaries(
        &self,
        _request: Request<ipb::SummariesRequest>,
    ) -> Result<Response<ipb::Blob>, Status> {
        let s = self.local_summaries().await?;
        Ok(Response::new(ipb::Blob {
            bincode: to_blob(&s),
        }))
    }

    async fn recommend(&self, request: Request<ipb::Blob>) -> Result<Response<ipb::Blob>, Status> {
        let w: WireRecommend = from_blob(&request.into_inner().bincode).map_err(bad_blob)?;
        let query = RecommendQuery {
            requirements: w.requirements,
            context: w.context,
            config: self.shared.config.clone(),
        };
        let parts = self.local_recommend(&query).await?;
        Ok(Response::new(ipb::Blob {
            bincode: to_blob(&parts),
        }))
    }

    async fn publish(
        &self,
        request: Request<ipb::Blob>,
    ) -> Result<Response<ipb::PublishAck>, Status> {
        let wire: SnapshotWire = from_blob(&request.into_inner().bincode).map_err(bad_blob)?;
        self.coordinator
            .cast(CoordinatorMsg::Install(Box::new(wire)))
            .map_err(|e| Status::unavailable(format!("coordinator: {e}")))?;
        Ok(Response::new(ipb::PublishAck {}))
    }

    type AlertsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ipb::Blob, Status>> + Send>>;

    async fn alerts(
        &self,
        _request: Request<ipb::SummariesRequest>,
    ) -> Result<Response<Self::AlertsStream>, Status> {
        let mut rx = self.shared.alerts.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let item = match rx.recv().await {
                    Ok(a) => Ok(ipb::Blob {
                        bincode: to_blob(&(a.alert, a.region)),
                    }),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Err(
                        Status::data_loss(format!("subscriber fell behind: {n} alerts dropped")),
                    ),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn transfer_shard(
        &self,
        request: Request<Streaming<ipb::ShardChunk>>,
    ) -> Result<Response<ipb::TransferAck>, Status> {
        let mut stream = request.into_inner();
        let mut shard = None;
        let mut from = String::new();
        let mut planned_at = 0;
        let mut states: Vec<ProviderState> = Vec::new();
        let mut encoded = crate::storage::snapshot::EncodedStates::default();
        while let Some(chunk) = stream.message().await? {
            if shard.is_some_and(|s| s != chunk.shard_id) {
                return Err(Status::invalid_argument("one transfer carries one shard"));
            }
            shard = Some(chunk.shard_id);
            from = chunk.from_node;
            planned_at = chunk.move_planned_at;
            let part: Vec<ProviderState> = from_blob(&chunk.states).map_err(bad_blob)?;
            states.extend(part);
            encoded.push(chunk.states).map_err(bad_blob)?;
        }
        let shard = ShardId(shard.ok_or_else(|| Status::invalid_argument("empty transfer"))?);
        match self
            .receive_shard(shard, &from, planned_at, states, encoded)
            .await
        {
            Ok(n) => Ok(Response::new(ipb::TransferAck {
                providers: n as u64,
            })),
            // a map that moved on (the plan changed under the sender, or a stale copy here is
            // still being released) is a race the sender's retry settles, and the sender warns
            // of it already; anything else is worth a warning here too
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                info!(shard = %shard, from, reason = %e.message(), "refused a shard transfer; the sender retries");
                Err(e)
            }
            Err(e) => {
                warn!(shard = %shard, from, error = %e.message(), "refused a shard transfer");
                Err(e)
            }
        }
    }
}
