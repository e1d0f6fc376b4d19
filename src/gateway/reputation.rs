//! `ReputationService`: what the scheduler asks.

use std::pin::Pin;
use std::time::Instant;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::actors::NodeAlert;
use crate::analytics::alerts::Alert;
use crate::analytics::ranking::{RankingCategory, RankingFilter, RankingQuery};
use crate::analytics::recommend::JobRequirements;
use crate::analytics::view::{self, Metric, RecommendQuery};
use crate::gateway::{Gateway, GatewayError};
use crate::gateway::{convert, internal, validate};
use crate::proto::internal::provider_call_request::Call;
use crate::proto::internal::provider_call_response::Answer;
use crate::proto::v1 as pb;
use crate::proto::v1::reputation_service_server::ReputationService;

fn timed<T>(
    rpc: &'static str,
    started: Instant,
    r: Result<T, GatewayError>,
) -> Result<Response<T>, Status> {
    metrics::histogram!("depin_query_seconds", "rpc" => rpc)
        .record(started.elapsed().as_secs_f64());
    r.map(Response::new).map_err(Status::from)
}

fn metric(field: &str, s: &str) -> Result<Metric, GatewayError> {
    Metric::parse(s).ok_or_else(|| {
        GatewayError::invalid(
            field,
            format!("unknown metric {s:?}: one of {}", Metric::NAMES),
        )
    })
}

impl Gateway {
    pub(crate) async fn profile(
        &self,
        id: String,
    ) -> Result<pb::ProviderPerformanceProfile, GatewayError> {
        let snapshot = self.shared.snapshot();
        let shared = self.shared.clone();
        self.read(&id, move |s| {
            let now = view::provider_now(s, shared.reference_time());
            let p = view::profile(s, &snapshot, &shared.config, now);
            let trend = view::metric_trend(s, Metric::PerformanceScore);
            let ranking_score = snapshot
                .ranks
                .index
                .get(&s.id)
                .and_then(|i| {
                    snapshot
                        .ranks
                        .score_of
                        .get(&RankingCategory::Overall)
                        .map(|v| v[i])
                })
                .unwrap_or(0.0);
            convert::profile_to_proto(s, &p, &trend, ranking_score)
        })
        .await
    }

    async fn rankings(
        &self,
        req: pb::GetProviderRankingsRequest,
    ) -> Result<pb::GetProviderRankingsResponse, GatewayError> {
        let category = convert::category_from_proto(req.category)?;
        let page = req.page.unwrap_or_default();
        let limit = match page.page_size {
            0 => 20,
            n if n > self.limits.max_page_size => {
                return Err(GatewayError::invalid(
                    "page.page_size",
                    format!("at most {}, got {n}", self.limits.max_page_size),
                ));
            }
            n => n as usize,
        };
        let offset = if page.page_token.is_empty() {
            0
        } else {
            page.page_token.parse::<usize>().map_err(|_| {
                GatewayError::invalid("page.page_token", "not a token from a previous response")
            })?
        };
        let filter = RankingFilter {
            region: (!req.region.is_empty()).then_some(req.region),
            gpu_model: (!req.gpu_model.is_empty()).then_some(req.gpu_model),
            tier: None,
            min_tier: convert::tier_from_proto("min_tier", req.min_tier)?,
            min_data_points: (req.min_data_points > 0).then_some(req.min_data_points),
        };
        let snapshot = self.shared.snapshot();
        let query = RankingQuery {
            category,
            filter,
            limit,
        };
        let (lines, total) = view::rankings_page(&snapshot, &query, offset, &self.shared.config);
        let next = offset + lines.len();
        Ok(pb::GetProviderRankingsResponse {
            rankings: lines
                .iter()
                .map(|r| convert::ranking_to_proto(r, &snapshot))
                .collect(),
            total: total as u64,
            next_page_token: if next < total {
                next.to_string()
            } else {
                String::new()
            },
            computed_at: snapshot.computed_at_timestamp(),
            tier_cutoffs: Some(pb::TierCutoffs {
                platinum: snapshot.cutoffs.platinum,
                gold: snapshot.cutoffs.gold,
                silver: snapshot.cutoffs.silver,
                bronze: snapshot.cutoffs.bronze,
            }),
        })
    }

    async fn recommendations(
        &self,
        req: pb::GetProviderRecommendationsRequest,
    ) -> Result<pb::GetProviderRecommendationsResponse, GatewayError> {
        let mut requirements: JobRequirements =
            convert::requirements_from_proto(req.requirements.unwrap_or_default())?;
        requirements.max_results = match req.max_results {
            0 => 5,
            n if n > 100 => {
                return Err(GatewayError::invalid(
                    "max_results",
                    format!("at most 100, got {n}"),
                ));
            }
            n => n as usize,
        };
        let snapshot = self.shared.snapshot();
        let mut query = RecommendQuery {
            requirements,
            context: snapshot.ranking_context.clone(),
            config: self.shared.config.clone(),
        };
        let mut merged = view::merge_recommendations(self.scatter_recommend(&query).await?, &query);
        if merged.compatible == 0 {
            let relax = if req.allow_relaxed {
                view::relax_choice(&merged)
            } else {
                None
            };
            if let Some(c) = relax {
                query.requirements = view::without(&query.requirements, c);
                let mut relaxed =
                    view::merge_recommendations(self.scatter_recommend(&query).await?, &query);
                view::mark_relaxed(&mut relaxed.recommendations, c);
                merged.recommendations = relaxed.recommendations;
                merged.relaxed_constraint = Some(c);
            }
            merged.explanation = Some(view::explain_empty(&merged, relax, req.allow_relaxed));
        }
        Ok(convert::recommendations_to_proto(&merged))
    }

    /// Every node's candidates for a job: this node's shards and, in a cluster, each other
    /// node's over the internal service. An answer from every node is needed (a node that
    /// cannot answer is retried within the route budget, then the call is UNAVAILABLE):
    /// a partial merge would make the answer depend on which node was asked.
    async fn scatter_recommend(
        &self,
        query: &RecommendQuery,
    ) -> Result<Vec<view::ShardRecommendations>, GatewayError> {
        let since = tokio::time::Instant::now();
        loop {
            let wire = internal::to_blob(&internal::WireRecommend {
                requirements: query.requirements.clone(),
                context: query.context.clone(),
            });
            let remote = self.other_nodes().into_iter().map(|(node, mut c)| {
                let wire = wire.clone();
                async move {
                    let r = c
                        .recommend(crate::proto::internal::Blob { bincode: wire })
                        .await
                        .map_err(|s| format!("node {node}: {}", s.message()))?;
                    internal::from_blob::<Vec<view::ShardRecommendations>>(&r.into_inner().bincode)
                        .map_err(|e| format!("node {node}: {e}"))
                }
            });
            let (local, remote) = futures::join!(
                self.local_recommend(query),
                futures::future::join_all(remote)
            );
            let mut parts = local?;
            let mut failed = None;
            for r in remote {
                match r {
                    Ok(p) => parts.extend(p),
                    Err(e) => failed = Some(e),
                }
            }
            match failed {
                None => return Ok(parts),
                Some(why) => self.backoff(since, &why).await?,
            }
        }
    }

    pub(crate) async fn trend(
        &self,
        req: pb::GetProviderTrendAnalysisRequest,
    ) -> Result<pb::PerformanceTrend, GatewayError> {
        let m = metric("metric", &req.metric)?;
        let shared = self.shared.clone();
        self.read(&req.provider_id, move |s| {
            let trend = view::metric_trend(s, m);
            let now = view::provider_now(s, shared.reference_time());
            let analysis = view::trend_analysis(s, m, &shared.config, now);
            convert::trend_to_proto(s, m, &trend, &analysis)
        })
        .await
    }

    pub(crate) async fn forecast(
        &self,
        req: pb::GetProviderForecastsRequest,
    ) -> Result<pb::ProviderForecast, GatewayError> {
        let m = metric("metric", &req.metric)?;
        let horizon = match req.horizon_hours {
            0 => self.shared.config.forecasting.horizon_hours as usize,
            h if h > 24 * 14 => {
                return Err(GatewayError::invalid(
                    "horizon_hours",
                    format!("at most 336 (two weeks), got {h}"),
                ));
            }
            h => h as usize,
        };
        let shared = self.shared.clone();
        self.read(&req.provider_id, move |s| {
            let f = view::metric_forecast(s, m, horizon, &shared.config);
            convert::forecast_to_proto(s, m, f)
        })
        .await?
    }

    pub(crate) async fn patterns(
        &self,
        id: String,
    ) -> Result<pb::ResourceUtilizationPattern, GatewayError> {
        self.read(&id, move |s| {
            convert::patterns_to_proto(s, &view::patterns(s))
        })
        .await
    }

    /// A provider-keyed request sent to the provider's owner, its answer unwrapped.
    async fn routed<R, T>(
        &self,
        req: R,
        id: impl FnOnce(&R) -> String,
        call: impl FnOnce(R) -> Call,
        answer: impl FnOnce(Answer) -> Option<T>,
    ) -> Result<T, GatewayError> {
        let provider = id(&req);
        let a = self.provider_call(&provider, call(req)).await?;
        answer(a).ok_or_else(|| GatewayError::Internal("the owner answered another call".into()))
    }

    fn network(&self) -> pb::NetworkAnalytics {
        let snapshot = self.shared.snapshot();
        convert::network_to_proto(&snapshot)
    }
}

/// Feeds `tx` with the alerts of every other node, following membership, until the
/// subscriber is gone. A node's stream that breaks is opened again a second later.
async fn alerts_from_peers(gw: Gateway, tx: tokio::sync::mpsc::Sender<Result<NodeAlert, Status>>) {
    let mut open: std::collections::HashMap<crate::cluster::NodeId, tokio::task::JoinHandle<()>> =
        Default::default();
    while !tx.is_closed() {
        open.retain(|_, t| !t.is_finished());
        for (node, mut client) in gw.other_nodes() {
            if open.contains_key(&node) {
                continue;
            }
            let tx = tx.clone();
            let task = tokio::spawn(async move {
                let Ok(r) = client
                    .alerts(crate::proto::internal::SummariesRequest {})
                    .await
                else {
                    return;
                };
                let mut stream = r.into_inner();
                while let Ok(Some(blob)) = stream.message().await {
                    let Ok((alert, region)) = internal::from_blob::<(Alert, String)>(&blob.bincode)
                    else {
                        continue;
                    };
                    if tx.send(Ok(NodeAlert { alert, region })).await.is_err() {
                        return;
                    }
                }
            });
            open.insert(node, task);
        }
        tokio::select! {
            _ = tx.closed() => break,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
    for (_, t) in open {
        t.abort();
    }
}

/// The alert kinds WatchAlerts filters on.
const ALERT_KINDS: [&str; 4] = [
    "performance_degradation",
    "trend_reversal",
    "anomaly_episode",
    "forecast_below_tier_floor",
];

type AlertStream = Pin<Box<dyn Stream<Item = Result<pb::Alert, Status>> + Send>>;

fn alert_matches(a: &Alert, region: &str, req: &pb::WatchAlertsRequest) -> bool {
    (req.provider_ids.is_empty() || req.provider_ids.iter().any(|p| p == a.provider_id.as_str()))
        && (req.regions.is_empty() || req.regions.iter().any(|r| r == region))
        && (req.kinds.is_empty() || req.kinds.iter().any(|k| k == a.kind.as_str()))
}

#[tonic::async_trait]
impl ReputationService for Gateway {
    async fn get_provider_reputation_profile(
        &self,
        request: Request<pb::GetProviderReputationProfileRequest>,
    ) -> Result<Response<pb::ProviderPerformanceProfile>, Status> {
        let t = Instant::now();
        timed(
            "GetProviderReputationProfile",
            t,
            self.routed(
                request.into_inner(),
                |r| r.provider_id.clone(),
                Call::Profile,
                |a| match a {
                    Answer::Profile(p) => Some(p),
                    _ => None,
                },
            )
            .await,
        )
    }

    async fn get_provider_rankings(
        &self,
        request: Request<pb::GetProviderRankingsRequest>,
    ) -> Result<Response<pb::GetProviderRankingsResponse>, Status> {
        validate::rankings_request(request.get_ref())?;
        let t = Instant::now();
        timed(
            "GetProviderRankings",
            t,
            self.rankings(request.into_inner()).await,
        )
    }

    async fn get_provider_recommendations(
        &self,
        request: Request<pb::GetProviderRecommendationsRequest>,
    ) -> Result<Response<pb::GetProviderRecommendationsResponse>, Status> {
        validate::recommendations_request(request.get_ref())?;
        let t = Instant::now();
        timed(
            "GetProviderRecommendations",
            t,
            self.recommendations(request.into_inner()).await,
        )
    }

    async fn get_provider_trend_analysis(
        &self,
        request: Request<pb::GetProviderTrendAnalysisRequest>,
    ) -> Result<Response<pb::PerformanceTrend>, Status> {
        let t = Instant::now();
        timed(
            "GetProviderTrendAnalysis",
            t,
            self.routed(
                request.into_inner(),
                |r| r.provider_id.clone(),
                Call::Trend,
                |a| match a {
                    Answer::Trend(p) => Some(p),
                    _ => None,
                },
            )
            .await,
        )
    }

    async fn get_provider_forecasts(
        &self,
        request: Request<pb::GetProviderForecastsRequest>,
    ) -> Result<Response<pb::ProviderForecast>, Status> {
        let t = Instant::now();
        timed(
            "GetProviderForecasts",
            t,
            self.routed(
                request.into_inner(),
                |r| r.provider_id.clone(),
                Call::Forecast,
                |a| match a {
                    Answer::Forecast(p) => Some(p),
                    _ => None,
                },
            )
            .await,
        )
    }

    async fn get_network_analytics(
        &self,
        _request: Request<pb::GetNetworkAnalyticsRequest>,
    ) -> Result<Response<pb::NetworkAnalytics>, Status> {
        let t = Instant::now();
        timed("GetNetworkAnalytics", t, Ok(self.network()))
    }

    async fn get_provider_utilization_pattern(
        &self,
        request: Request<pb::GetProviderUtilizationPatternRequest>,
    ) -> Result<Response<pb::ResourceUtilizationPattern>, Status> {
        let t = Instant::now();
        timed(
            "GetProviderUtilizationPattern",
            t,
            self.routed(
                request.into_inner(),
                |r| r.provider_id.clone(),
                Call::Pattern,
                |a| match a {
                    Answer::Pattern(p) => Some(p),
                    _ => None,
                },
            )
            .await,
        )
    }

    type WatchAlertsStream = AlertStream;

    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        validate::watch_alerts_request(request.get_ref())?;
        let req = request.into_inner();
        for (i, k) in req.kinds.iter().enumerate() {
            if !ALERT_KINDS.contains(&k.as_str()) {
                return Err(GatewayError::invalid(
                    format!("kinds[{i}]"),
                    format!(
                        "unknown alert kind {k:?}: one of {}",
                        ALERT_KINDS.join(", ")
                    ),
                )
                .into());
            }
        }
        let subscriber_permit = self.guards.alert_subscriber()?;
        // every node's alerts (this one's, and in a cluster each other node's over the
        // internal service) into one channel, filtered on the way out
        let (all_tx, mut all_rx) = tokio::sync::mpsc::channel::<Result<NodeAlert, Status>>(1024);
        let mut rx = self.shared.alerts.subscribe();
        let local_tx = all_tx.clone();
        tokio::spawn(async move {
            loop {
                // a client that went away ends this task even while no alert comes
                let next = tokio::select! {
                    n = rx.recv() => n,
                    _ = local_tx.closed() => break,
                };
                let item = match next {
                    Ok(a) => Ok(a),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Err(
                        Status::data_loss(format!("subscriber fell behind: {n} alerts dropped")),
                    ),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                let stop = item.is_err();
                if local_tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        if self.cluster.is_some() {
            tokio::spawn(alerts_from_peers(self.clone(), all_tx));
        }
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            // the subscriber slot is held until the client goes away
            let _subscriber_permit = subscriber_permit;
            loop {
                let item = tokio::select! {
                    i = all_rx.recv() => match i { Some(i) => i, None => break },
                    _ = tx.closed() => break,
                };
                let sent = match item {
                    Ok(a) if alert_matches(&a.alert, &a.region, &req) => {
                        tx.send(Ok(convert::alert_to_proto(&a.alert, &a.region)))
                            .await
                    }
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                if sent.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}
