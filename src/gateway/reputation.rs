//! `ReputationService`: what the scheduler asks.

use std::pin::Pin;
use std::time::Instant;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::analytics::alerts::Alert;
use crate::analytics::ranking::{RankingCategory, RankingFilter, RankingQuery};
use crate::analytics::recommend::JobRequirements;
use crate::analytics::view::{self, Metric, RecommendQuery};
use crate::gateway::{Gateway, GatewayError};
use crate::gateway::{convert, validate};
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
    async fn profile(&self, id: String) -> Result<pb::ProviderPerformanceProfile, GatewayError> {
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
                        .map(|v| v[*i])
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
        let k = requirements.max_results;
        let mut query = RecommendQuery {
            requirements,
            context: snapshot.ranking_context.clone(),
            config: self.shared.config.clone(),
        };
        let mut merged = view::merge_recommendations(self.scatter_recommend(&query).await?, k);
        if merged.compatible == 0 {
            let relax = if req.allow_relaxed {
                view::relax_choice(&merged)
            } else {
                None
            };
            if let Some(c) = relax {
                query.requirements = view::without(&query.requirements, c);
                let mut relaxed =
                    view::merge_recommendations(self.scatter_recommend(&query).await?, k);
                view::mark_relaxed(&mut relaxed.recommendations, c);
                merged.recommendations = relaxed.recommendations;
                merged.relaxed_constraint = Some(c);
            }
            merged.explanation = Some(view::explain_empty(&merged, relax, req.allow_relaxed));
        }
        Ok(convert::recommendations_to_proto(&merged))
    }

    async fn scatter_recommend(
        &self,
        query: &RecommendQuery,
    ) -> Result<Vec<view::ShardRecommendations>, GatewayError> {
        let query = std::sync::Arc::new(query.clone());
        let calls = self.shards.iter().map(|s| {
            let q = query.clone();
            async move { ractor::call!(s, crate::actors::ShardMsg::Recommend, q) }
        });
        let mut parts = Vec::with_capacity(self.shards.len());
        for r in futures::future::join_all(calls).await {
            parts.push(r?);
        }
        Ok(parts)
    }

    async fn trend(
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

    async fn forecast(
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

    async fn patterns(&self, id: String) -> Result<pb::ResourceUtilizationPattern, GatewayError> {
        self.read(&id, move |s| {
            convert::patterns_to_proto(s, &view::patterns(s))
        })
        .await
    }

    fn network(&self) -> pb::NetworkAnalytics {
        let snapshot = self.shared.snapshot();
        convert::network_to_proto(&snapshot)
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
            self.profile(request.into_inner().provider_id).await,
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
            self.trend(request.into_inner()).await,
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
            self.forecast(request.into_inner()).await,
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
            self.patterns(request.into_inner().provider_id).await,
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
        let mut rx = self.shared.alerts.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let _subscriber_permit = subscriber_permit;
            loop {
                // A client that went away frees its subscriber slot even while no alert comes.
                let next = tokio::select! {
                    n = rx.recv() => n,
                    _ = tx.closed() => break,
                };
                match next {
                    Ok(a) => {
                        if alert_matches(&a.alert, &a.region, &req)
                            && tx
                                .send(Ok(convert::alert_to_proto(&a.alert, &a.region)))
                                .await
                                .is_err()
                        {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "subscriber fell behind: {n} alerts dropped"
                            ))))
                            .await;
                        break;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}
