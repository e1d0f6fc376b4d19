//! Conversions between the model and analytics types and the proto messages: the only
//! place that knows both.

use crate::model::{EventPayload, HeartbeatStatus, JobStatus, ProviderSpec, TelemetryEvent};
use crate::proto::v1 as pb;

pub fn timestamp(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

pub fn spec_to_proto(s: &ProviderSpec) -> pb::ProviderSpec {
    pb::ProviderSpec {
        region: s.region.clone(),
        cpu_cores: s.cpu_cores,
        memory_gb: s.memory_gb,
        gpus: s
            .gpus
            .iter()
            .map(|g| pb::GpuSpec {
                model: g.model.clone(),
                count: g.count,
                vram_gb: g.vram_gb,
            })
            .collect(),
        storage_gb: s.storage_gb,
        price_per_hour: s.price_per_hour,
    }
}

/// A model event as the collector would send it.
pub fn event_to_proto(e: &TelemetryEvent) -> pb::TelemetryEvent {
    use pb::telemetry_event::Payload;
    let payload = match &e.payload {
        EventPayload::JobOutcome(j) => Payload::JobOutcome(pb::JobOutcome {
            status: match j.status {
                JobStatus::Completed => pb::JobStatus::Completed,
                JobStatus::Failed => pb::JobStatus::Failed,
                JobStatus::TimedOut => pb::JobStatus::TimedOut,
                JobStatus::Cancelled => pb::JobStatus::Cancelled,
            } as i32,
            duration_seconds: j.duration_seconds,
            sla_met: j.sla_met,
            error_code: j.error_code,
            cost: j.cost,
        }),
        EventPayload::Heartbeat(h) => Payload::Heartbeat(pb::Heartbeat {
            status: match h.status {
                HeartbeatStatus::Online => pb::HeartbeatStatus::Online,
                HeartbeatStatus::Offline => pb::HeartbeatStatus::Offline,
            } as i32,
        }),
        EventPayload::ResponseTime(r) => Payload::ResponseTime(pb::ResponseTimeSample {
            response_time_ms: r.response_time_ms,
            is_error: r.is_error,
        }),
        EventPayload::Utilization(u) => Payload::Utilization(pb::UtilizationSample {
            cpu: u.cpu,
            gpu: u.gpu,
            memory: u.memory,
        }),
        EventPayload::Spec(s) => Payload::Spec(spec_to_proto(s)),
    };
    pb::TelemetryEvent {
        event_id: e.event_id.clone(),
        provider_id: e.provider_id.to_string(),
        timestamp: timestamp(e.timestamp),
        payload: Some(payload),
    }
}

use crate::analytics::alerts::Alert;
use crate::analytics::forecast::{ForecastError, ProviderForecast};
use crate::analytics::patterns::ResourceUtilizationPattern;
use crate::analytics::ranking::{ProviderRanking, RankingCategory, Tier};
use crate::analytics::recommend::{JobRequirements, RecommendationResult};
use crate::analytics::score::ProviderPerformanceProfile;
use crate::analytics::state::ProviderState;
use crate::analytics::trend::{Trend, TrendDirection, TrendStrength};
use crate::analytics::view::{AnalyticsSnapshot, Metric, TrendAnalysis};
use crate::gateway::GatewayError;
use crate::model::HOUR;

/// `DecliningTrend` → `declining_trend`, for enum names in messages.
pub fn snake(name: impl std::fmt::Debug) -> String {
    let s = format!("{name:?}");
    let mut out = String::with_capacity(s.len() + 4);
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

pub fn tier_to_proto(t: Tier) -> i32 {
    (match t {
        Tier::Basic => pb::Tier::Basic,
        Tier::Bronze => pb::Tier::Bronze,
        Tier::Silver => pb::Tier::Silver,
        Tier::Gold => pb::Tier::Gold,
        Tier::Platinum => pb::Tier::Platinum,
    }) as i32
}

pub fn tier_from_proto(field: &str, t: i32) -> Result<Option<Tier>, GatewayError> {
    Ok(match pb::Tier::try_from(t) {
        Ok(pb::Tier::Unspecified) => None,
        Ok(pb::Tier::Basic) => Some(Tier::Basic),
        Ok(pb::Tier::Bronze) => Some(Tier::Bronze),
        Ok(pb::Tier::Silver) => Some(Tier::Silver),
        Ok(pb::Tier::Gold) => Some(Tier::Gold),
        Ok(pb::Tier::Platinum) => Some(Tier::Platinum),
        Err(_) => return Err(GatewayError::invalid(field, format!("unknown tier {t}"))),
    })
}

pub fn category_from_proto(c: i32) -> Result<RankingCategory, GatewayError> {
    Ok(match pb::RankingCategory::try_from(c) {
        Ok(pb::RankingCategory::Overall) => RankingCategory::Overall,
        Ok(pb::RankingCategory::Performance) => RankingCategory::Performance,
        Ok(pb::RankingCategory::Reliability) => RankingCategory::Reliability,
        Ok(pb::RankingCategory::Cost) => RankingCategory::Cost,
        Ok(pb::RankingCategory::Availability) => RankingCategory::Availability,
        Ok(pb::RankingCategory::Speed) => RankingCategory::Speed,
        Err(_) => {
            return Err(GatewayError::invalid(
                "category",
                format!("unknown ranking category {c}"),
            ));
        }
    })
}

fn direction_name(d: TrendDirection) -> &'static str {
    match d {
        TrendDirection::Improving => "improving",
        TrendDirection::Stable => "stable",
        TrendDirection::Declining => "declining",
    }
}

fn strength_name(s: TrendStrength) -> &'static str {
    match s {
        TrendStrength::Weak => "weak",
        TrendStrength::Moderate => "moderate",
        TrendStrength::Strong => "strong",
    }
}

pub fn profile_to_proto(
    s: &ProviderState,
    p: &ProviderPerformanceProfile,
    trend: &Trend,
    ranking_score: f64,
) -> pb::ProviderPerformanceProfile {
    let c = &p.components;
    let f = &p.reliability.patterns;
    pb::ProviderPerformanceProfile {
        provider_id: p.provider_id.to_string(),
        spec: s.spec.as_ref().map(spec_to_proto),
        performance_score: p.composite_score,
        components: Some(pb::ComponentScores {
            completion_rate: c.completion_rate,
            efficiency: c.efficiency,
            uptime: c.uptime,
            response_time: c.response_time,
            sla_compliance: c.sla_compliance,
            error_rate: c.error_rate,
        }),
        reliability_score: p.reliability_score,
        ranking_score,
        percentile: p.percentile,
        tier: tier_to_proto(p.tier),
        confidence: p.confidence.overall,
        completion_rate: p.completion_rate,
        failure_rate: p.failure_rate,
        timeout_rate: p.timeout_rate,
        sla_compliance_rate: p.sla_compliance_rate,
        error_rate: p.error_rate,
        avg_response_time_ms: p.avg_response_time_ms,
        response_time_std_ms: p.response_time_std_ms,
        uptime_ratio: p.uptime_ratio,
        mtbf_seconds: p.mtbf_seconds.unwrap_or(0.0),
        mttr_seconds: p.mttr_seconds.unwrap_or(0.0),
        avg_cpu_utilization: p.cpu_utilization,
        avg_gpu_utilization: p.gpu_utilization,
        avg_memory_utilization: p.memory_utilization,
        jobs_in_window: p.jobs_window,
        jobs_lifetime: p.jobs_lifetime,
        revenue_in_window: p.cost_earned_window,
        events_ingested: p.events_ingested,
        first_seen: p.first_seen.and_then(timestamp),
        last_seen: p.last_seen.and_then(timestamp),
        online: s.uptime.up && s.uptime.last_heartbeat.is_some(),
        risk_factors: p
            .risk_factors
            .iter()
            .map(|r| pb::RiskFactor {
                kind: snake(r.kind),
                severity: snake(r.severity),
                description: r.message.clone(),
            })
            .collect(),
        recommendations: p
            .recommendations
            .iter()
            .map(|r| pb::Recommendation {
                kind: snake(r.kind),
                description: r.message.clone(),
            })
            .collect(),
        failure_pattern: Some(pb::FailurePattern {
            failed_jobs: f.failed_jobs,
            timed_out_jobs: f.timed_out_jobs,
            error_codes: f
                .error_codes
                .iter()
                .map(|e| pb::ErrorCodeCount {
                    code: e.code,
                    count: e.count,
                })
                .collect(),
            failures_by_hour_of_day: f.failures_by_hour_of_day.clone(),
            current_failure_streak: f.current_failure_streak,
            longest_failure_streak: f.longest_failure_streak,
            seconds_since_last_failure: f.seconds_since_last_failure.map_or(-1.0, |s| s as f64),
        }),
        trend_direction: direction_name(trend.direction).to_string(),
        data_points: p.data_points,
    }
}

pub fn ranking_to_proto(r: &ProviderRanking, snapshot: &AnalyticsSnapshot) -> pb::ProviderRanking {
    let s = snapshot.summary(&r.provider_id);
    pb::ProviderRanking {
        rank: r.rank,
        provider_id: r.provider_id.to_string(),
        score: r.score,
        performance_score: r.criteria.performance,
        reliability_score: r.criteria.reliability,
        cost_score: r.criteria.cost,
        availability_score: r.criteria.availability,
        speed_score: r.criteria.speed,
        tier: tier_to_proto(r.tier),
        rank_change: r
            .rank_change
            .unwrap_or(0)
            .clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
        is_new: r.previous_rank.is_none(),
        region: r.region.clone(),
        gpu_model: r.gpu_model.clone().unwrap_or_default(),
        price_per_hour: s.map_or(0.0, |s| f64::from(s.price_per_hour)),
        confidence: s.map_or(0.0, |s| f64::from(s.confidence)),
    }
}

fn positive(field: &str, v: f64) -> Result<f64, GatewayError> {
    if !v.is_finite() || v < 0.0 {
        return Err(GatewayError::invalid(
            field,
            format!("{field} must be a finite, non-negative number, got {v}"),
        ));
    }
    Ok(v)
}

pub fn requirements_from_proto(r: pb::JobRequirements) -> Result<JobRequirements, GatewayError> {
    let f = |n: &str| format!("requirements.{n}");
    let min_uptime = positive(&f("min_uptime"), r.min_uptime)?;
    if min_uptime > 1.0 {
        return Err(GatewayError::invalid(
            f("min_uptime"),
            format!("a fraction in [0, 1], got {min_uptime}"),
        ));
    }
    let hours = positive(&f("expected_duration_hours"), r.expected_duration_hours)?;
    for (i, region) in r.regions.iter().enumerate() {
        if region.is_empty() || region.len() > 64 {
            return Err(GatewayError::invalid(
                f(&format!("regions[{i}]")),
                "a region name of 1 to 64 bytes",
            ));
        }
    }
    Ok(JobRequirements {
        cpu_cores: r.cpu_cores,
        memory_gb: positive(&f("memory_gb"), r.memory_gb)?,
        gpu_model: (!r.gpu_model.is_empty()).then_some(r.gpu_model),
        gpu_count: r.gpu_count,
        min_vram_gb: positive(&f("min_vram_gb"), r.min_vram_gb)?,
        regions: r.regions,
        expected_duration_hours: if hours == 0.0 { 1.0 } else { hours },
        max_budget: Some(positive(&f("max_budget"), r.max_budget)?).filter(|b| *b > 0.0),
        min_uptime: Some(min_uptime).filter(|u| *u > 0.0),
        max_response_time_ms: Some(positive(
            &f("max_response_time_ms"),
            r.max_response_time_ms,
        )?)
        .filter(|m| *m > 0.0),
        min_tier: tier_from_proto(&f("min_tier"), r.min_tier)?,
        max_results: 5,
    })
}

pub fn recommendations_to_proto(
    r: &RecommendationResult,
) -> pb::GetProviderRecommendationsResponse {
    pb::GetProviderRecommendationsResponse {
        recommendations: r
            .recommendations
            .iter()
            .map(|x| pb::ProviderRecommendation {
                rank: x.rank,
                provider_id: x.provider_id.to_string(),
                match_score: x.score,
                confidence: x.confidence,
                estimated_cost: x.estimated_cost,
                price_per_hour: x.price_per_hour,
                reasons: x.reasons.clone(),
                warnings: x.warnings.iter().map(|w| w.message.clone()).collect(),
                tier: tier_to_proto(x.tier),
                performance_score: 0.0,
                relaxed: x.relaxed,
                relaxed_constraint: x
                    .relaxed_constraint
                    .map(|c| c.name().to_string())
                    .unwrap_or_default(),
                exploration: x.exploration,
                region: x.region.clone(),
            })
            .collect(),
        candidates_considered: r.considered,
        compatible: r.compatible,
        eliminations: r
            .eliminations
            .iter()
            .map(|e| pb::ConstraintElimination {
                constraint: e.constraint.name().to_string(),
                eliminated: e.eliminated,
            })
            .collect(),
        explanation: r.explanation.clone().unwrap_or_default(),
    }
}

fn series_points(s: &ProviderState, m: Metric) -> Vec<pb::TimePoint> {
    s.window
        .iter()
        .filter_map(|(h, b)| {
            let v = m.of(b);
            v.is_finite().then(|| pb::TimePoint {
                time: timestamp(h * HOUR),
                value: v,
            })
        })
        .collect()
}

pub fn alert_to_proto(a: &Alert, region: &str) -> pb::Alert {
    pb::Alert {
        key: a.key.clone(),
        kind: a.kind.as_str().to_string(),
        severity: snake(a.severity),
        provider_id: a.provider_id.to_string(),
        region: region.to_string(),
        at: timestamp(a.at),
        message: a.message.clone(),
        value: a.value,
        threshold: a.threshold,
    }
}

pub fn trend_to_proto(
    s: &ProviderState,
    m: Metric,
    t: &Trend,
    extra: &TrendAnalysis,
) -> pb::PerformanceTrend {
    let region = s.spec.as_ref().map_or("", |x| x.region.as_str());
    pb::PerformanceTrend {
        provider_id: s.id.to_string(),
        metric: m.name().to_string(),
        direction: direction_name(t.direction).to_string(),
        slope_per_hour: t.fit.slope_per_hour,
        slope_per_day: t.fit.slope_per_day,
        correlation: t.fit.r,
        strength: strength_name(t.strength).to_string(),
        p_value: t.fit.p_value.unwrap_or(1.0),
        reversal: t.reversal.is_some(),
        first_half_slope_per_hour: t
            .reversal
            .as_ref()
            .map_or(0.0, |r| r.first_half.slope_per_hour),
        second_half_slope_per_hour: t
            .reversal
            .as_ref()
            .map_or(0.0, |r| r.second_half.slope_per_hour),
        series: series_points(s, m),
        anomalies: extra
            .anomalies
            .iter()
            .map(|a| pb::Anomaly {
                start: timestamp(a.start),
                end: timestamp(a.end),
                peak_at: timestamp(a.peak_at),
                peak_value: a.peak_value,
                peak_z_score: a.peak_z,
                direction: a.direction.to_string(),
                points: a.points,
            })
            .collect(),
        alerts: extra
            .alerts
            .iter()
            .map(|a| alert_to_proto(a, region))
            .collect(),
        points: t.fit.n_points as u32,
    }
}

pub fn forecast_to_proto(
    s: &ProviderState,
    m: Metric,
    f: Result<ProviderForecast, ForecastError>,
) -> Result<pb::ProviderForecast, GatewayError> {
    let f = f.map_err(|e| GatewayError::NotEnoughData(format!("no forecast for {}: {e}", s.id)))?;
    Ok(pb::ProviderForecast {
        provider_id: s.id.to_string(),
        metric: m.name().to_string(),
        model: f.model.clone(),
        points: f
            .points
            .iter()
            .map(|p| pb::ForecastPoint {
                time: timestamp(p.timestamp),
                value: p.value,
                lower: p.lower,
                upper: p.upper,
            })
            .collect(),
        interval_level: f.interval_level,
        warnings: f.warnings.clone(),
        confidence: f.confidence,
        history: series_points(s, m),
    })
}

pub fn network_to_proto(s: &AnalyticsSnapshot) -> pb::NetworkAnalytics {
    let Some(n) = &s.network else {
        return pb::NetworkAnalytics::default();
    };
    let tiers = [
        (Tier::Platinum, n.tier_counts.platinum),
        (Tier::Gold, n.tier_counts.gold),
        (Tier::Silver, n.tier_counts.silver),
        (Tier::Bronze, n.tier_counts.bronze),
        (Tier::Basic, n.tier_counts.basic),
    ];
    let forecast = |region: &str| n.forecasts.iter().find(|f| f.region == region);
    let mut gainers: Vec<&crate::analytics::network::Mover> =
        n.top_movers.iter().filter(|m| m.change > 0.0).collect();
    let mut decliners: Vec<&crate::analytics::network::Mover> =
        n.top_movers.iter().filter(|m| m.change < 0.0).collect();
    gainers.sort_by(|a, b| b.change.total_cmp(&a.change));
    decliners.sort_by(|a, b| a.change.total_cmp(&b.change));
    let mover = |m: &&crate::analytics::network::Mover| pb::Mover {
        provider_id: m.provider_id.to_string(),
        score: m.score,
        change: m.change,
    };
    let (mut jobs, mut prices, mut priced) = (0u64, 0.0, 0u64);
    for p in &s.summaries {
        jobs += u64::from(p.jobs_window);
        if p.price_per_hour > 0.0 {
            prices += f64::from(p.price_per_hour);
            priced += 1;
        }
    }
    pb::NetworkAnalytics {
        computed_at: s.computed_at_timestamp(),
        total_providers: n.provider_count,
        online_providers: n.online_count,
        online_share: n.online_share,
        total_cpu_cores: n.capacity.cpu_cores,
        total_memory_gb: n.capacity.memory_gb,
        total_gpus: n.capacity.gpus,
        avg_cpu_utilization: n.utilization.cpu,
        avg_gpu_utilization: n.utilization.gpu,
        avg_memory_utilization: n.utilization.memory,
        score_distribution: Some(pb::ScoreDistribution {
            mean: n.scores.mean,
            std_dev: n.scores.std,
            p10: n.scores.p10,
            p25: n.scores.p25,
            p50: n.scores.p50,
            p75: n.scores.p75,
            p90: n.scores.p90,
            p99: n.scores.p99,
            histogram: n.scores.histogram.clone(),
        }),
        tiers: tiers
            .iter()
            .map(|(t, c)| pb::TierCount {
                tier: tier_to_proto(*t),
                count: *c,
            })
            .collect(),
        regions: n
            .regions
            .iter()
            .map(|r| {
                let f = forecast(&r.region);
                let region_scores: Vec<f64> = s
                    .summaries
                    .iter()
                    .filter(|p| p.region == r.region)
                    .map(|p| f64::from(p.performance_score))
                    .collect();
                pb::RegionStats {
                    region: r.region.clone(),
                    providers: r.providers,
                    online: r.online,
                    cpu_cores: r.capacity.cpu_cores,
                    gpus: r.capacity.gpus,
                    avg_cpu_utilization: r.utilization.cpu,
                    avg_gpu_utilization: r.utilization.gpu,
                    avg_score: if region_scores.is_empty() {
                        0.0
                    } else {
                        region_scores.iter().sum::<f64>() / region_scores.len() as f64
                    },
                    utilization_forecast: f.map_or_else(Vec::new, |f| {
                        f.cpu_utilization
                            .iter()
                            .map(|p| pb::ForecastPoint {
                                time: timestamp(p.at),
                                value: p.value,
                                lower: p.lower,
                                upper: p.upper,
                            })
                            .collect()
                    }),
                    forecast_free_gpu_share: f.map_or(0.0, |f| {
                        if r.online_gpus == 0 || f.free_gpus.is_empty() {
                            0.0
                        } else {
                            f.free_gpus.iter().sum::<f64>()
                                / f.free_gpus.len() as f64
                                / r.online_gpus as f64
                        }
                    }),
                }
            })
            .collect(),
        gpu_models: n
            .capacity
            .gpus_by_model
            .iter()
            .map(|(model, gpus)| {
                let with: Vec<&crate::analytics::network::ProviderSummary> = s
                    .summaries
                    .iter()
                    .filter(|p| p.gpu_model.as_deref() == Some(model.as_str()))
                    .collect();
                pb::GpuModelStats {
                    model: model.clone(),
                    providers: with.len() as u64,
                    gpus: *gpus,
                    avg_price_per_hour: if with.is_empty() {
                        0.0
                    } else {
                        with.iter()
                            .map(|p| f64::from(p.price_per_hour))
                            .sum::<f64>()
                            / with.len() as f64
                    },
                }
            })
            .collect(),
        top_gainers: gainers.iter().map(mover).collect(),
        top_decliners: decliners.iter().map(mover).collect(),
        jobs_in_window: jobs,
        network_completion_rate: s.prior.completion_rate,
        median_response_time_ms: s.prior.median_response_time_ms,
        avg_price_per_hour: if priced == 0 {
            0.0
        } else {
            prices / priced as f64
        },
        coordinator_cycle_ms: s.cycle_ms,
    }
}

pub fn patterns_to_proto(
    s: &ProviderState,
    p: &ResourceUtilizationPattern,
) -> pb::ResourceUtilizationPattern {
    let mean = |f: fn(&crate::analytics::patterns::UtilizationSlot) -> f64| {
        let hours: u32 = p.hour_of_day.iter().map(|x| x.hours).sum();
        if hours == 0 {
            0.0
        } else {
            p.hour_of_day
                .iter()
                .map(|x| f(x) * f64::from(x.hours))
                .sum::<f64>()
                / f64::from(hours)
        }
    };
    pb::ResourceUtilizationPattern {
        provider_id: s.id.to_string(),
        hour_of_day_cpu: p.hour_of_day.iter().map(|x| x.cpu).collect(),
        hour_of_day_gpu: p.hour_of_day.iter().map(|x| x.gpu).collect(),
        hour_of_day_memory: p.hour_of_day.iter().map(|x| x.memory).collect(),
        day_of_week_cpu: p.day_of_week.iter().map(|x| x.cpu).collect(),
        day_of_week_gpu: p.day_of_week.iter().map(|x| x.gpu).collect(),
        hour_of_week_cpu: p.hour_of_week.iter().map(|x| x.cpu).collect(),
        peak_hours: p.peak_hours_utc.iter().map(|h| u32::from(*h)).collect(),
        low_hours: p.low_hours_utc.iter().map(|h| u32::from(*h)).collect(),
        seasonal_variance: p.seasonal_variance,
        seasonal_strength: p.seasonal_strength,
        suggestions: p
            .suggestions
            .iter()
            .map(|x| pb::Recommendation {
                kind: snake(x.kind),
                description: x.text.clone(),
            })
            .collect(),
        mean_cpu: mean(|x| x.cpu),
        mean_gpu: mean(|x| x.gpu),
        mean_memory: mean(|x| x.memory),
    }
}
