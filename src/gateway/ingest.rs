//! `IngestService`: a stream of event batches, each answered with accepted, duplicate and
//! rejected counts and a reason for every rejected event.

use std::pin::Pin;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use std::collections::HashMap;

use crate::actors::ShardMsg;
use crate::actors::provider::EventResult;
use crate::actors::shard::Refused;
use crate::analytics::state::EventError;
use crate::cluster::NodeId;
use crate::gateway::internal;
use crate::gateway::route::{PeerClient, Route};
use crate::gateway::{Gateway, GatewayError, validate};
use crate::model::TelemetryEvent;
use crate::proto::internal::ForwardedEvents;
use crate::proto::v1::ingest_service_server::IngestService;
use crate::proto::v1::{IngestAck, IngestBatch, RejectedEvent};

pub fn wall_clock_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Gateway {
    /// Validate, route and apply one batch; the answer names every rejected event.
    pub async fn ingest_batch(&self, batch: IngestBatch) -> Result<IngestAck, GatewayError> {
        let started = Instant::now();
        let n = batch.events.len();
        if n > self.limits.max_batch_events {
            return Err(GatewayError::invalid(
                "events",
                format!(
                    "a batch holds at most {} events, got {n}",
                    self.limits.max_batch_events
                ),
            ));
        }
        let permits_guard = tokio::time::timeout(
            self.limits.busy_timeout,
            self.inflight.clone().acquire_many_owned(n.max(1) as u32),
        )
        .await
        .map_err(|_| {
            GatewayError::Busy(format!(
                "{} events in flight",
                self.limits.max_inflight_events
            ))
        })?
        .map_err(|_| GatewayError::Unavailable("node is shutting down".into()))?;

        let wall_now = wall_clock_seconds();
        let (reference, window) = (
            self.shared.reference_time(),
            self.shared.config.window_hours(),
        );
        let mut ack = IngestAck {
            batch_id: batch.batch_id,
            ..Default::default()
        };
        let mut ids = Vec::with_capacity(n);
        // Event kind of each position, for the per-type counters.
        let mut kinds: Vec<Kind> = Vec::with_capacity(n);
        let mut accepted_by_kind = [0u64; KINDS.len()];
        let mut valid: Vec<(u32, TelemetryEvent)> = Vec::with_capacity(n);
        for (i, ev) in batch.events.into_iter().enumerate() {
            ids.push(ev.event_id.clone());
            kinds.push(Kind::of(&ev));
            let previous = valid.last().map(|(_, e)| &e.provider_id);
            match validate::event(ev, wall_now, self.limits.max_future_skew_seconds, previous)
                .and_then(|e| validate::in_window(e, reference, window))
            {
                Ok(e) => valid.push((i as u32, e)),
                Err(v) => {
                    metrics::counter!("depin_events_rejected_total", "type" => kinds[i].name(), "reason" => v.reason)
                        .increment(1);
                    ack.rejections.push(RejectedEvent {
                        index: i as u32,
                        event_id: ids[i].clone(),
                        field: format!("events[{i}].{}", v.field),
                        reason: v.reason.to_string(),
                        description: v.description,
                    });
                }
            }
        }
        // Route to the owners; events whose shard is moving or away are retried (the batch is
        // answered UNAVAILABLE if they cannot be placed within the retry budget: the client
        // sends it again and what was applied comes back as duplicates).
        let since = Instant::now();
        let mut results = Vec::with_capacity(valid.len());
        loop {
            let (done, retry, why) = self.apply(std::mem::take(&mut valid), true).await?;
            results.extend(done);
            if retry.is_empty() {
                break;
            }
            valid = retry;
            self.backoff(since.into(), &why).await?;
        }
        {
            for (i, r) in results {
                match r {
                    EventResult::Accepted => {
                        ack.accepted += 1;
                        accepted_by_kind[kinds[i as usize] as usize] += 1;
                    }
                    EventResult::Duplicate => ack.duplicates += 1,
                    EventResult::Rejected(e) => {
                        let reason = match e {
                            EventError::TooOld { .. } => "too_old",
                            EventError::TooFarInFuture { .. } => "in_future",
                            EventError::Duplicate => "duplicate",
                        };
                        metrics::counter!("depin_events_rejected_total", "type" => kinds[i as usize].name(), "reason" => reason)
                            .increment(1);
                        ack.rejections.push(RejectedEvent {
                            index: i,
                            event_id: ids[i as usize].clone(),
                            field: format!("events[{i}].timestamp"),
                            reason: reason.to_string(),
                            description: e.to_string(),
                        });
                    }
                }
            }
        }
        drop(permits_guard);
        for (kind, n) in KINDS.iter().zip(accepted_by_kind) {
            if n > 0 {
                metrics::counter!("depin_events_ingested_total", "type" => kind.name())
                    .increment(n);
            }
        }
        metrics::gauge!("depin_ingest_inflight_events")
            .set((self.limits.max_inflight_events - self.inflight.available_permits()) as f64);
        ack.rejections.sort_by_key(|r| r.index);
        ack.rejected = ack.rejections.len() as u32;
        metrics::counter!("depin_events_duplicate_total").increment(u64::from(ack.duplicates));
        metrics::histogram!("depin_ingest_batch_seconds").record(started.elapsed().as_secs_f64());
        debug!(
            batch = ack.batch_id,
            accepted = ack.accepted,
            rejected = ack.rejected,
            "batch ingested"
        );
        Ok(ack)
    }
}

/// Events applied, events to retry, and why they must be retried.
type Applied = (Vec<(u32, EventResult)>, Vec<(u32, TelemetryEvent)>, String);

impl Gateway {
    /// Applies `events` on the shards this node serves and, with `forward`, sends the others
    /// to their owners. Events that found their shard unavailable come back for a retry.
    pub async fn apply(
        &self,
        events: Vec<(u32, TelemetryEvent)>,
        forward: bool,
    ) -> Result<Applied, GatewayError> {
        let mut local: Vec<Vec<(u32, TelemetryEvent)>> = vec![Vec::new(); self.shards.len()];
        let mut remote: HashMap<NodeId, (PeerClient, Vec<(u32, TelemetryEvent)>)> = HashMap::new();
        let mut retry = Vec::new();
        let mut why = String::new();
        for (i, e) in events {
            let shard = self.shard_of(&e.provider_id);
            match self.route(shard) {
                Route::Local => local[shard.0 as usize].push((i, e)),
                Route::Remote(node, client) if forward => remote
                    .entry(node)
                    .or_insert_with(|| (*client, Vec::new()))
                    .1
                    .push((i, e)),
                Route::Remote(node, _) => {
                    why = format!("shard {shard} is owned by node {node}");
                    retry.push((i, e));
                }
                Route::Unavailable(w) => {
                    why = w;
                    retry.push((i, e));
                }
            }
        }
        let local_calls = local
            .into_iter()
            .enumerate()
            .filter(|(_, evs)| !evs.is_empty())
            .map(|(s, evs)| {
                let shard = self.shards[s].clone();
                async move { ractor::call!(shard, ShardMsg::Ingest, evs) }
            });
        let remote_calls = remote
            .into_iter()
            .map(|(node, (mut client, evs))| async move {
                let payload = internal::to_blob(&evs);
                let r = client
                    .ingest(ForwardedEvents { events: payload })
                    .await
                    .map_err(|s| format!("node {node}: {}", s.message()))
                    .and_then(|r| {
                        let r = r.into_inner();
                        let done: Vec<(u32, EventResult)> = internal::from_blob(&r.results)
                            .map_err(|e| format!("node {node}: {e}"))?;
                        Ok((done, r.retry, r.retry_reason))
                    });
                (evs, r)
            });
        let (local_done, remote_done) =
            futures::join!(join_all(local_calls), join_all(remote_calls));
        let mut done = Vec::new();
        for r in local_done {
            match r? {
                Ok(results) => {
                    let accepted = results
                        .iter()
                        .filter(|(_, r)| *r == EventResult::Accepted)
                        .count() as u64;
                    self.shared
                        .events_ingested
                        .fetch_add(accepted, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!("depin_events_applied_total").increment(accepted);
                    done.extend(results);
                }
                Err(Refused { why: w, events }) => {
                    why = w;
                    retry.extend(events);
                }
            }
        }
        for (evs, r) in remote_done {
            match r {
                Ok((results, again, w)) => {
                    done.extend(results);
                    if !again.is_empty() {
                        why = w;
                        let again: std::collections::HashSet<u32> = again.into_iter().collect();
                        retry.extend(evs.into_iter().filter(|(i, _)| again.contains(i)));
                    }
                }
                Err(w) => {
                    why = w;
                    retry.extend(evs);
                }
            }
        }
        Ok((done, retry, why))
    }
}

/// The payload kind of a proto event, for metric labels (its `type` label: the one place these
/// names are spelled).
#[derive(Clone, Copy)]
enum Kind {
    JobOutcome,
    Heartbeat,
    ResponseTime,
    Utilization,
    Spec,
    None,
}

const KINDS: [Kind; 6] = [
    Kind::JobOutcome,
    Kind::Heartbeat,
    Kind::ResponseTime,
    Kind::Utilization,
    Kind::Spec,
    Kind::None,
];

impl Kind {
    fn of(ev: &crate::proto::v1::TelemetryEvent) -> Self {
        use crate::proto::v1::telemetry_event::Payload;
        match ev.payload {
            Some(Payload::JobOutcome(_)) => Self::JobOutcome,
            Some(Payload::Heartbeat(_)) => Self::Heartbeat,
            Some(Payload::ResponseTime(_)) => Self::ResponseTime,
            Some(Payload::Utilization(_)) => Self::Utilization,
            Some(Payload::Spec(_)) => Self::Spec,
            None => Self::None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::JobOutcome => "job_outcome",
            Self::Heartbeat => "heartbeat",
            Self::ResponseTime => "response_time",
            Self::Utilization => "utilization",
            Self::Spec => "spec",
            Self::None => "none",
        }
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<IngestAck, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for Gateway {
    type IngestStream = AckStream;

    async fn ingest(
        &self,
        request: Request<Streaming<IngestBatch>>,
    ) -> Result<Response<Self::IngestStream>, Status> {
        // Limits (limits.rs): a cap on open streams, a rate per client (token or peer).
        let stream_permit = self.guards.ingest_stream()?;
        let client = crate::gateway::limits::ClientKey::of(&request);
        let mut input = request.into_inner();
        let gw = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        // Batches of one stream are applied in order and acked in order; a collector wanting
        // more throughput opens several streams.
        tokio::spawn(async move {
            let _stream_permit = stream_permit;
            while let Some(item) = input.next().await {
                let out = match item {
                    Ok(batch) => {
                        let n = batch.events.len();
                        // An oversized batch is refused by ingest_batch and costs nothing.
                        let charged = if n > gw.limits.max_batch_events {
                            Ok(())
                        } else {
                            gw.guards.charge(&client, n)
                        };
                        match charged {
                            Ok(()) => gw.ingest_batch(batch).await.map_err(Status::from),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                let stop = out.is_err();
                if tx.send(out).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
