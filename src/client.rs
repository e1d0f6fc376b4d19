//! Client side of the CLI: `query` (one subcommand per RPC, a table or `--json`) and
//! `simulate` (a simulated fleet streamed over a real gRPC connection).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

use crate::proto::v1 as pb;
use crate::proto::v1::cluster_service_client::ClusterServiceClient;
use crate::proto::v1::ingest_service_client::IngestServiceClient;
use crate::proto::v1::reputation_service_client::ReputationServiceClient;
use crate::security::{BearerInterceptor, ClientSecurityArgs};

/// Connects to `target` (HOST:PORT or a URL) in plaintext (`https://` targets need
/// [`connect_with`] and a CA).
pub async fn connect(target: &str) -> anyhow::Result<Channel> {
    connect_with(target, &ClientSecurityArgs::default()).await
}

/// Connects to `target` with TLS when it is an `https://` URL or a CA is given (`--tls-ca`),
/// presenting a client certificate when one is given.
pub async fn connect_with(target: &str, sec: &ClientSecurityArgs) -> anyhow::Result<Channel> {
    let tls = target.starts_with("https://") || sec.tls_ca.is_some();
    if sec.tls_server_name.is_some() && !tls {
        bail!("--tls-server-name needs TLS: give --tls-ca (TLS_CA) or an https:// target");
    }
    let url = match target.split_once("://") {
        Some((scheme, rest)) if tls && scheme == "http" => {
            bail!("--tls-ca was given but the target {target:?} is http://; use https://{rest}")
        }
        Some(_) => target.to_string(),
        None if tls => format!("https://{target}"),
        None => format!("http://{target}"),
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid target {target:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if tls {
        let Some(ca) = sec.tls_ca.as_deref() else {
            bail!("an https:// target needs --tls-ca (TLS_CA): the CA certificate to trust");
        };
        let identity = sec
            .tls_client_cert
            .as_deref()
            .zip(sec.tls_client_key.as_deref());
        let mut cfg = crate::tls::client_tls_config(Some(ca), identity)?;
        if let Some(name) = &sec.tls_server_name {
            cfg = cfg.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(cfg).context("configuring TLS")?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Renders any of our proto messages as canonical proto3 JSON.
pub fn to_json<M: prost::Message>(full_name: &str, msg: &M) -> anyhow::Result<String> {
    let pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)?;
    let desc = pool
        .get_message_by_name(full_name)
        .with_context(|| format!("no message {full_name}"))?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())?;
    let opts = prost_reflect::SerializeOptions::new().skip_default_fields(false);
    let mut out = serde_json::Serializer::new(Vec::new());
    dynamic.serialize_with_options(&mut out, &opts)?;
    Ok(String::from_utf8(out.into_inner())?)
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The node to ask (HOST:PORT).
    #[arg(long, env = "TARGET", default_value = "127.0.0.1:9090", global = true)]
    pub target: String,
    /// Print the answer as one JSON object on the last line.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub auth: ClientSecurityArgs,
    #[command(subcommand)]
    pub call: QueryCall,
}

#[derive(Subcommand, Debug)]
pub enum QueryCall {
    /// A provider's reputation profile.
    Profile { provider: String },
    /// Rankings, overall or by category, with filters.
    Rankings {
        /// overall, performance, reliability, cost, availability, speed
        #[arg(long, default_value = "overall")]
        category: String,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        gpu_model: Option<String>,
        /// basic, bronze, silver, gold, platinum
        #[arg(long)]
        min_tier: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Recommendations for a job.
    Recommend {
        #[arg(long, default_value_t = 0)]
        cpu_cores: u32,
        #[arg(long, default_value_t = 0.0)]
        memory_gb: f64,
        #[arg(long, default_value = "")]
        gpu_model: String,
        #[arg(long, default_value_t = 0)]
        gpu_count: u32,
        #[arg(long, default_value_t = 0.0)]
        min_vram_gb: f64,
        /// Acceptable regions (repeat the flag or separate with commas).
        #[arg(long, value_delimiter = ',')]
        region: Vec<String>,
        #[arg(long, default_value_t = 1.0)]
        hours: f64,
        #[arg(long, default_value_t = 0.0)]
        budget: f64,
        #[arg(long, default_value_t = 0.0)]
        min_uptime: f64,
        #[arg(long, default_value_t = 0.0)]
        max_response_time_ms: f64,
        #[arg(long)]
        min_tier: Option<String>,
        #[arg(long, default_value_t = 5)]
        limit: u32,
        /// Offer relaxed suggestions when nothing fits.
        #[arg(long)]
        allow_relaxed: bool,
    },
    /// Trend of a metric with anomalies and alerts.
    Trend {
        provider: String,
        #[arg(long, default_value = "performance_score")]
        metric: String,
    },
    /// Forecast of a metric with prediction intervals.
    Forecast {
        provider: String,
        #[arg(long, default_value = "performance_score")]
        metric: String,
        #[arg(long, default_value_t = 0)]
        horizon_hours: u32,
        /// Also write the forecast as an SVG plot with its interval band.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Utilization patterns by hour of day and day of week.
    Patterns { provider: String },
    /// Network analytics.
    Network,
    /// Stream alerts as they are raised (stops after --max or --timeout).
    Alerts {
        #[arg(long, value_delimiter = ',')]
        provider: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        region: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        kind: Vec<String>,
        #[arg(long, default_value_t = 10)]
        max: usize,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        timeout: Duration,
    },
    /// This node, its shards and providers.
    ClusterStatus,
    /// grpc.health.v1 Check: prints the status, fails unless SERVING (container probes).
    Health {
        /// The service to ask about, e.g. depin.analytics.v1.IngestService (default: the
        /// node as a whole).
        #[arg(long)]
        service: Option<String>,
        /// Give up on the answer after this long.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        timeout: Duration,
    },
}

pub fn parse_tier(s: &str) -> anyhow::Result<pb::Tier> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "basic" => pb::Tier::Basic,
        "bronze" => pb::Tier::Bronze,
        "silver" => pb::Tier::Silver,
        "gold" => pb::Tier::Gold,
        "platinum" => pb::Tier::Platinum,
        _ => bail!("unknown tier {s:?}: basic, bronze, silver, gold or platinum"),
    })
}

pub fn tier_name(t: i32) -> &'static str {
    match pb::Tier::try_from(t).unwrap_or(pb::Tier::Unspecified) {
        pb::Tier::Platinum => "platinum",
        pb::Tier::Gold => "gold",
        pb::Tier::Silver => "silver",
        pb::Tier::Bronze => "bronze",
        pb::Tier::Basic => "basic",
        pb::Tier::Unspecified => "-",
    }
}

fn parse_category(s: &str) -> anyhow::Result<pb::RankingCategory> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "overall" => pb::RankingCategory::Overall,
        "performance" => pb::RankingCategory::Performance,
        "reliability" => pb::RankingCategory::Reliability,
        "cost" => pb::RankingCategory::Cost,
        "availability" => pb::RankingCategory::Availability,
        "speed" => pb::RankingCategory::Speed,
        _ => bail!(
            "unknown category {s:?}: overall, performance, reliability, cost, availability or speed"
        ),
    })
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    match t {
        Some(t) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(t.seconds.max(0) as u64),
        )
        .to_string(),
        None => "-".into(),
    }
}

fn print_json<M: prost::Message>(name: &str, m: &M) -> anyhow::Result<()> {
    println!("{}", to_json(&format!("depin.analytics.v1.{name}"), m)?);
    Ok(())
}

pub async fn query_cmd(args: QueryArgs) -> anyhow::Result<()> {
    let channel = connect_with(&args.target, &args.auth).await?;
    let bearer = BearerInterceptor::new(args.auth.token.as_deref())?;
    let mut rep = ReputationServiceClient::with_interceptor(channel.clone(), bearer.clone());
    let json = args.json;
    match args.call {
        QueryCall::Profile { provider } => {
            let p = rep
                .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
                    provider_id: provider,
                })
                .await?
                .into_inner();
            if json {
                print_json("ProviderPerformanceProfile", &p)?
            } else {
                print_profile(&p)
            }
        }
        QueryCall::Rankings {
            category,
            region,
            gpu_model,
            min_tier,
            limit,
            page_token,
        } => {
            let req = pb::GetProviderRankingsRequest {
                category: parse_category(&category)? as i32,
                region: region.unwrap_or_default(),
                gpu_model: gpu_model.unwrap_or_default(),
                min_tier: min_tier
                    .as_deref()
                    .map(parse_tier)
                    .transpose()?
                    .map_or(0, |t| t as i32),
                min_data_points: 0,
                page: Some(pb::PageRequest {
                    page_size: limit,
                    page_token,
                }),
            };
            let r = rep.get_provider_rankings(req).await?.into_inner();
            if json {
                print_json("GetProviderRankingsResponse", &r)?
            } else {
                print_rankings(&r)
            }
        }
        QueryCall::Recommend {
            cpu_cores,
            memory_gb,
            gpu_model,
            gpu_count,
            min_vram_gb,
            region,
            hours,
            budget,
            min_uptime,
            max_response_time_ms,
            min_tier,
            limit,
            allow_relaxed,
        } => {
            let req = pb::GetProviderRecommendationsRequest {
                requirements: Some(pb::JobRequirements {
                    cpu_cores,
                    memory_gb,
                    gpu_model,
                    gpu_count,
                    min_vram_gb,
                    regions: region,
                    expected_duration_hours: hours,
                    max_budget: budget,
                    min_uptime,
                    max_response_time_ms,
                    min_tier: min_tier
                        .as_deref()
                        .map(parse_tier)
                        .transpose()?
                        .map_or(0, |t| t as i32),
                }),
                max_results: limit,
                allow_relaxed,
            };
            let r = rep.get_provider_recommendations(req).await?.into_inner();
            if json {
                print_json("GetProviderRecommendationsResponse", &r)?
            } else {
                print_recommendations(&r)
            }
        }
        QueryCall::Trend { provider, metric } => {
            let t = rep
                .get_provider_trend_analysis(pb::GetProviderTrendAnalysisRequest {
                    provider_id: provider,
                    metric,
                })
                .await?
                .into_inner();
            if json {
                print_json("PerformanceTrend", &t)?
            } else {
                print_trend(&t)
            }
        }
        QueryCall::Forecast {
            provider,
            metric,
            horizon_hours,
            plot,
        } => {
            let f = rep
                .get_provider_forecasts(pb::GetProviderForecastsRequest {
                    provider_id: provider,
                    metric,
                    horizon_hours,
                })
                .await?
                .into_inner();
            if let Some(path) = plot {
                std::fs::write(&path, forecast_svg(&f))
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("plot written to {}", path.display());
            }
            if json {
                print_json("ProviderForecast", &f)?
            } else {
                print_forecast(&f)
            }
        }
        QueryCall::Patterns { provider } => {
            let p = rep
                .get_provider_utilization_pattern(pb::GetProviderUtilizationPatternRequest {
                    provider_id: provider,
                })
                .await?
                .into_inner();
            if json {
                print_json("ResourceUtilizationPattern", &p)?
            } else {
                print_patterns(&p)
            }
        }
        QueryCall::Network => {
            let n = rep
                .get_network_analytics(pb::GetNetworkAnalyticsRequest {})
                .await?
                .into_inner();
            if json {
                print_json("NetworkAnalytics", &n)?
            } else {
                print_network(&n)
            }
        }
        QueryCall::Alerts {
            provider,
            region,
            kind,
            max,
            timeout,
        } => {
            let mut stream = rep
                .watch_alerts(pb::WatchAlertsRequest {
                    provider_ids: provider,
                    regions: region,
                    kinds: kind,
                })
                .await?
                .into_inner();
            let deadline = tokio::time::Instant::now() + timeout;
            let mut seen = 0;
            while seen < max {
                match tokio::time::timeout_at(deadline, stream.message()).await {
                    Ok(Ok(Some(a))) => {
                        seen += 1;
                        if json {
                            print_json("Alert", &a)?
                        } else {
                            print_alert(&a)
                        }
                    }
                    Ok(Ok(None)) | Err(_) => break,
                    Ok(Err(e)) => return Err(e.into()),
                }
            }
        }
        QueryCall::Health { service, timeout } => {
            let service = service.unwrap_or_default();
            health_check(channel, bearer, &args.target, &service, timeout, json).await?
        }
        QueryCall::ClusterStatus => {
            let s = ClusterServiceClient::with_interceptor(channel, bearer)
                .get_cluster_status(pb::GetClusterStatusRequest {})
                .await?
                .into_inner();
            if json {
                print_json("ClusterStatus", &s)?
            } else {
                print_cluster(&s)
            }
        }
    }
    Ok(())
}

/// `query health`: Ok only when the node (or `service`) answers SERVING.
async fn health_check(
    channel: Channel,
    bearer: BearerInterceptor,
    target: &str,
    service: &str,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let what = if service.is_empty() {
        "the node".to_string()
    } else {
        format!("service {service}")
    };
    let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: service.to_string(),
    });
    req.set_timeout(timeout);
    let status = HealthClient::with_interceptor(channel, bearer)
        .check(req)
        .await
        .with_context(|| format!("health check of {what} at {target}"))?
        .into_inner()
        .status();
    let name = status.as_str_name();
    if json {
        println!("{}", serde_json::json!({ "status": name }));
    } else {
        println!("{name}");
    }
    if status != ServingStatus::Serving {
        bail!("{what} at {target} is {name}, not SERVING");
    }
    Ok(())
}

pub fn print_profile(p: &pb::ProviderPerformanceProfile) {
    println!(
        "provider {}  tier {}  score {:.1}  percentile {:.1}  confidence {:.2}",
        p.provider_id,
        tier_name(p.tier),
        p.performance_score,
        p.percentile,
        p.confidence
    );
    if let Some(s) = &p.spec {
        let gpus: Vec<String> = s
            .gpus
            .iter()
            .map(|g| format!("{}×{} {}GB", g.count, g.model, g.vram_gb))
            .collect();
        println!(
            "  spec: {} · {} cores · {} GB · {} · ${:.2}/h",
            s.region,
            s.cpu_cores,
            s.memory_gb,
            if gpus.is_empty() {
                "no GPU".into()
            } else {
                gpus.join(", ")
            },
            s.price_per_hour
        );
    }
    if let Some(c) = &p.components {
        println!(
            "  components: completion {:.1} · efficiency {:.1} · uptime {:.1} · response {:.1} · sla {:.1} · errors {:.1}",
            c.completion_rate,
            c.efficiency,
            c.uptime,
            c.response_time,
            c.sla_compliance,
            c.error_rate
        );
    }
    println!(
        "  completion {:.1}% · failures {:.1}% · timeouts {:.1}% · sla {:.1}% · errors {:.1}%",
        p.completion_rate * 100.0,
        p.failure_rate * 100.0,
        p.timeout_rate * 100.0,
        p.sla_compliance_rate * 100.0,
        p.error_rate * 100.0
    );
    println!(
        "  response {:.0} ms (σ {:.0}) · uptime {:.2}% · MTBF {} · MTTR {}",
        p.avg_response_time_ms,
        p.response_time_std_ms,
        p.uptime_ratio * 100.0,
        secs(p.mtbf_seconds),
        secs(p.mttr_seconds)
    );
    println!(
        "  utilization cpu {:.0}% gpu {:.0}% mem {:.0}% · jobs {} in window, {} lifetime · events {}",
        p.avg_cpu_utilization * 100.0,
        p.avg_gpu_utilization * 100.0,
        p.avg_memory_utilization * 100.0,
        p.jobs_in_window,
        p.jobs_lifetime,
        p.events_ingested
    );
    println!(
        "  reliability {:.1} · ranking score {:.1} · trend {} · online {} · last seen {}",
        p.reliability_score,
        p.ranking_score,
        p.trend_direction,
        p.online,
        ts(&p.last_seen)
    );
    for r in &p.risk_factors {
        println!("  risk [{}] {}: {}", r.severity, r.kind, r.description);
    }
    for r in &p.recommendations {
        println!("  advice {}: {}", r.kind, r.description);
    }
}

fn secs(s: f64) -> String {
    if s <= 0.0 || !s.is_finite() {
        return "-".into();
    }
    humantime::format_duration(Duration::from_secs(s.round() as u64)).to_string()
}

pub fn print_rankings(r: &pb::GetProviderRankingsResponse) {
    println!(
        "{:>5}  {:<14} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  {:<9} {:>6}  {:<12} {:<10} {:>7}",
        "rank",
        "provider",
        "score",
        "perf",
        "rel",
        "cost",
        "avail",
        "speed",
        "tier",
        "change",
        "region",
        "gpu",
        "$/h"
    );
    for e in &r.rankings {
        let change = if e.is_new {
            "new".to_string()
        } else {
            format!("{:+}", e.rank_change)
        };
        println!(
            "{:>5}  {:<14} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1}  {:<9} {:>6}  {:<12} {:<10} {:>7.2}",
            e.rank,
            e.provider_id,
            e.score,
            e.performance_score,
            e.reliability_score,
            e.cost_score,
            e.availability_score,
            e.speed_score,
            tier_name(e.tier),
            change,
            e.region,
            if e.gpu_model.is_empty() {
                "-"
            } else {
                &e.gpu_model
            },
            e.price_per_hour
        );
    }
    println!(
        "{} providers ranked{}",
        r.total,
        if r.next_page_token.is_empty() {
            String::new()
        } else {
            format!(" · next page: --page-token {}", r.next_page_token)
        }
    );
}

pub fn print_recommendations(r: &pb::GetProviderRecommendationsResponse) {
    println!(
        "{} candidates considered, {} compatible",
        r.candidates_considered, r.compatible
    );
    for rec in &r.recommendations {
        let mut flags = String::new();
        if rec.relaxed {
            flags.push_str(&format!(" [relaxed: {}]", rec.relaxed_constraint));
        }
        if rec.exploration {
            flags.push_str(" [exploration]");
        }
        println!(
            "#{} {}  match {:.1}  confidence {:.2}  est. ${:.2}  tier {}  {}{}",
            rec.rank,
            rec.provider_id,
            rec.match_score,
            rec.confidence,
            rec.estimated_cost,
            tier_name(rec.tier),
            rec.region,
            flags
        );
        for reason in &rec.reasons {
            println!("    + {reason}");
        }
        for w in &rec.warnings {
            println!("    ! {w}");
        }
    }
    if r.recommendations.is_empty() || !r.explanation.is_empty() {
        println!("{}", r.explanation);
    }
    for e in &r.eliminations {
        println!("    {} eliminated {}", e.constraint, e.eliminated);
    }
}

pub fn print_trend(t: &pb::PerformanceTrend) {
    println!(
        "{} {}: {} ({} , r = {:.2}, p = {:.3}), slope {:+.2}/day over {} points{}",
        t.provider_id,
        t.metric,
        t.direction,
        t.strength,
        t.correlation,
        t.p_value,
        t.slope_per_day,
        t.points,
        if t.reversal { ", trend reversal" } else { "" }
    );
    for a in &t.anomalies {
        println!(
            "  anomaly {} {} → {}: peak {:.1} (z {:.1}) over {} points",
            a.direction,
            ts(&a.start),
            ts(&a.end),
            a.peak_value,
            a.peak_z_score,
            a.points
        );
    }
    for a in &t.alerts {
        print_alert(a);
    }
}

pub fn print_forecast(f: &pb::ProviderForecast) {
    println!(
        "{} {}: model {}, {:.0}% intervals, confidence {:.2}",
        f.provider_id,
        f.metric,
        f.model,
        f.interval_level * 100.0,
        f.confidence
    );
    for w in &f.warnings {
        println!("  ! {w}");
    }
    for p in &f.points {
        println!(
            "  {}  {:>8.2}  [{:>8.2}, {:>8.2}]",
            ts(&p.time),
            p.value,
            p.lower,
            p.upper
        );
    }
}

pub fn print_patterns(p: &pb::ResourceUtilizationPattern) {
    println!(
        "{}: mean cpu {:.0}% gpu {:.0}% mem {:.0}%, seasonal strength {:.2}",
        p.provider_id,
        p.mean_cpu * 100.0,
        p.mean_gpu * 100.0,
        p.mean_memory * 100.0,
        p.seasonal_strength
    );
    let bars: String = p.hour_of_day_cpu.iter().map(|v| spark(*v)).collect();
    println!("  cpu by hour (UTC 00→23): {bars}");
    println!(
        "  peak hours {:?} · low hours {:?}",
        p.peak_hours, p.low_hours
    );
    for s in &p.suggestions {
        println!("  suggestion {}: {}", s.kind, s.description);
    }
}

fn spark(v: f64) -> char {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    BARS[((v.clamp(0.0, 1.0) * 7.0).round()) as usize]
}

pub fn print_network(n: &pb::NetworkAnalytics) {
    println!(
        "providers {} · online {} ({:.1}%) · cpu cores {} · gpus {} · memory {:.0} GB",
        n.total_providers,
        n.online_providers,
        n.online_share * 100.0,
        n.total_cpu_cores,
        n.total_gpus,
        n.total_memory_gb
    );
    println!(
        "utilization cpu {:.1}% gpu {:.1}% mem {:.1}% · completion {:.2}% · median response {:.0} ms · avg ${:.2}/h · jobs {}",
        n.avg_cpu_utilization * 100.0,
        n.avg_gpu_utilization * 100.0,
        n.avg_memory_utilization * 100.0,
        n.network_completion_rate * 100.0,
        n.median_response_time_ms,
        n.avg_price_per_hour,
        n.jobs_in_window
    );
    if let Some(d) = &n.score_distribution {
        println!(
            "scores mean {:.1} σ {:.1} · p10 {:.1} p50 {:.1} p90 {:.1} p99 {:.1}",
            d.mean, d.std_dev, d.p10, d.p50, d.p90, d.p99
        );
    }
    let tiers: Vec<String> = n
        .tiers
        .iter()
        .map(|t| format!("{} {}", tier_name(t.tier), t.count))
        .collect();
    println!("tiers: {}", tiers.join(" · "));
    for r in &n.regions {
        println!(
            "  {:<14} {:>6} providers {:>6} online  cpu {:>5.1}%  gpu {:>5.1}%  score {:>5.1}  free gpu next 24h {:>5.1}%",
            r.region,
            r.providers,
            r.online,
            r.avg_cpu_utilization * 100.0,
            r.avg_gpu_utilization * 100.0,
            r.avg_score,
            r.forecast_free_gpu_share * 100.0
        );
    }
    for m in n.top_gainers.iter().take(3) {
        println!(
            "  gainer {} {:+.1} → {:.1}",
            m.provider_id, m.change, m.score
        );
    }
    for m in n.top_decliners.iter().take(3) {
        println!(
            "  decliner {} {:+.1} → {:.1}",
            m.provider_id, m.change, m.score
        );
    }
    println!(
        "computed at {} in {:.1} ms",
        ts(&n.computed_at),
        n.coordinator_cycle_ms
    );
}

pub fn print_alert(a: &pb::Alert) {
    println!(
        "  alert [{}] {} {} at {}: {}",
        a.severity,
        a.kind,
        a.provider_id,
        ts(&a.at),
        a.message
    );
}

pub fn print_cluster(s: &pb::ClusterStatus) {
    println!(
        "mode {} · leader {} · {} shards · map revision {} (epoch {}) · {} providers · {} events applied here ({} live actors here)",
        s.mode,
        s.leader_node_id,
        s.shard_count,
        s.shard_map_revision,
        s.shard_map_epoch,
        s.provider_count,
        s.events_ingested,
        s.live_provider_actors,
    );
    for n in &s.nodes {
        println!(
            "  node {} {} region {} {} shards {} providers {}",
            n.node_id,
            if n.advertise_addr.is_empty() {
                "-"
            } else {
                &n.advertise_addr
            },
            if n.region.is_empty() { "-" } else { &n.region },
            if n.state.is_empty() {
                "serving"
            } else {
                &n.state
            },
            n.shard_count,
            n.provider_count
        );
        if !n.refused_reason.is_empty() {
            println!("    refused: {}", n.refused_reason);
        }
    }
    for m in &s.shards_in_motion {
        println!(
            "  shard {} moving {} -> {} ({})",
            m.shard_id, m.from_node_id, m.to_node_id, m.phase
        );
    }
    for l in &s.lost {
        println!(
            "  LOST: shard {} with node {} (reassigned at {})",
            l.shard_id,
            l.node_id,
            l.reassigned_at.as_ref().map_or(0, |t| t.seconds)
        );
    }
}

/// An SVG line plot of the history and the forecast with its interval band.
pub fn forecast_svg(f: &pb::ProviderForecast) -> String {
    let (w, h, pad) = (800.0, 320.0, 40.0);
    let hist: Vec<(i64, f64)> = f
        .history
        .iter()
        .map(|p| (p.time.as_ref().map_or(0, |t| t.seconds), p.value))
        .collect();
    let fc: Vec<(i64, f64, f64, f64)> = f
        .points
        .iter()
        .map(|p| {
            (
                p.time.as_ref().map_or(0, |t| t.seconds),
                p.value,
                p.lower,
                p.upper,
            )
        })
        .collect();
    let xs: Vec<i64> = hist
        .iter()
        .map(|p| p.0)
        .chain(fc.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = hist
        .iter()
        .map(|p| p.1)
        .chain(fc.iter().flat_map(|p| [p.2, p.3]))
        .filter(|v| v.is_finite())
        .collect();
    let (x0, x1) = (
        xs.iter().copied().min().unwrap_or(0),
        xs.iter().copied().max().unwrap_or(1).max(1),
    );
    let (y0, y1) = (
        ys.iter().copied().fold(f64::INFINITY, f64::min),
        ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let (y0, y1) = if y0.is_finite() && y1 > y0 {
        (y0, y1)
    } else {
        (0.0, 1.0)
    };
    let sx = |x: i64| pad + (x - x0) as f64 / ((x1 - x0).max(1)) as f64 * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - y0) / (y1 - y0) * (h - 2.0 * pad);
    let line = |pts: &mut dyn Iterator<Item = (f64, f64)>| {
        pts.map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let hist_line = line(&mut hist.iter().map(|p| (sx(p.0), sy(p.1))));
    let fc_line = line(&mut fc.iter().map(|p| (sx(p.0), sy(p.1))));
    let band = line(
        &mut fc
            .iter()
            .map(|p| (sx(p.0), sy(p.3)))
            .chain(fc.iter().rev().map(|p| (sx(p.0), sy(p.2)))),
    );
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20" font-family="sans-serif" font-size="14">{id} {metric} · {model} · {lvl:.0}% interval</text>
<text x="4" y="{ytop:.0}" font-family="sans-serif" font-size="10">{y1:.1}</text>
<text x="4" y="{ybot:.0}" font-family="sans-serif" font-size="10">{y0:.1}</text>
<polygon points="{band}" fill="#9ecae1" fill-opacity="0.5" stroke="none"/>
<polyline points="{hist_line}" fill="none" stroke="#333" stroke-width="1.5"/>
<polyline points="{fc_line}" fill="none" stroke="#08519c" stroke-width="2" stroke-dasharray="5,3"/>
</svg>
"##,
        id = f.provider_id,
        metric = f.metric,
        model = f.model,
        lvl = f.interval_level * 100.0,
        ytop = pad,
        ybot = h - pad,
    )
}

// ------------------------------------------------------------------------- simulate

/// The simulated fleet's size and pace.
#[derive(Args, Debug, Clone)]
pub struct FleetArgs {
    /// Providers in the fleet.
    #[arg(long, default_value_t = 1000)]
    pub providers: usize,
    /// Simulated hours (168 = one week).
    #[arg(long, default_value_t = 168)]
    pub hours: u32,
    /// Events per second to send at most (0 = as fast as the node acknowledges).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Events per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Seconds between a provider's heartbeats (under the node's 180 s heartbeat timeout).
    #[arg(long, default_value_t = 120)]
    pub heartbeat_interval: u32,
}

/// Batches a simulating client keeps in flight on its stream.
const MAX_INFLIGHT_BATCHES: usize = 8;

/// Per-provider counts of acknowledged events.
pub type AckedCounts = BTreeMap<String, u64>;

/// Streams the fleet into `channel`, calling `progress(events sent so far)` after each ack.
/// Returns the acknowledged counts; on failure, the counts acknowledged so far with the error.
pub async fn stream_fleet(
    channel: Channel,
    fleet: &FleetArgs,
    progress: impl FnMut(u64),
) -> (AckedCounts, anyhow::Result<()>) {
    stream_fleet_with(channel, BearerInterceptor::default(), fleet, progress).await
}

/// [`stream_fleet`] sending a bearer token.
pub async fn stream_fleet_with(
    channel: Channel,
    bearer: BearerInterceptor,
    fleet: &FleetArgs,
    mut progress: impl FnMut(u64),
) -> (AckedCounts, anyhow::Result<()>) {
    let mut acked = AckedCounts::new();
    let result = stream_fleet_inner(channel, bearer, fleet, &mut acked, &mut progress).await;
    (acked, result)
}

async fn stream_fleet_inner(
    channel: Channel,
    bearer: BearerInterceptor,
    args: &FleetArgs,
    acked: &mut AckedCounts,
    progress: &mut impl FnMut(u64),
) -> anyhow::Result<()> {
    let mut client = IngestServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let fleet = crate::sim::Fleet::new(fleet_config(args));
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::IngestBatch>(MAX_INFLIGHT_BATCHES);
    let mut acks = client
        .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    // Batches in flight, oldest first: (batch id, provider of each event).
    let mut inflight: std::collections::VecDeque<(u64, Vec<String>)> = Default::default();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut batch_id = 0u64;
    let mut batches = fleet.batches_by_provider(args.batch.max(1));
    let mut done_sending = false;
    loop {
        // Keep a few batches in flight; then wait for the oldest ack.
        while !done_sending && inflight.len() < MAX_INFLIGHT_BATCHES {
            let Some(events) = batches.next() else {
                done_sending = true;
                break;
            };
            batch_id += 1;
            let providers: Vec<String> = events.iter().map(|e| e.provider_id.to_string()).collect();
            let batch = pb::IngestBatch {
                batch_id,
                events: events
                    .iter()
                    .map(crate::gateway::convert::event_to_proto)
                    .collect(),
            };
            sent += providers.len() as u64;
            inflight.push_back((batch_id, providers));
            if tx.send(batch).await.is_err() {
                break;
            }
            if args.rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / args.rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        if done_sending && inflight.is_empty() {
            break;
        }
        let ack = acks
            .message()
            .await?
            .context("the node closed the stream before acknowledging every batch")?;
        let (id, providers) = inflight.pop_front().context("an ack for no batch")?;
        if ack.batch_id != id {
            bail!("ack for batch {} while waiting for {id}", ack.batch_id);
        }
        let rejected: std::collections::HashSet<u32> =
            ack.rejections.iter().map(|r| r.index).collect();
        for (i, p) in providers.into_iter().enumerate() {
            if !rejected.contains(&(i as u32)) {
                *acked.entry(p).or_default() += 1;
            }
        }
        progress(acked.values().sum());
    }
    drop(tx);
    Ok(())
}

pub fn fleet_config(args: &FleetArgs) -> crate::sim::FleetConfig {
    crate::sim::FleetConfig {
        providers: args.providers,
        hours: args.hours,
        seed: args.seed,
        heartbeat_interval_seconds: args.heartbeat_interval,
        ..crate::sim::FleetConfig::default()
    }
}

pub async fn simulate_cmd(args: crate::cli::SimulateArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init_logging("warn", false);
    let channel = connect_with(&args.target, &args.auth).await?;
    let bearer = BearerInterceptor::new(args.auth.token.as_deref())?;
    let total = crate::sim::Fleet::new(fleet_config(&args.fleet)).estimated_events();
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        progress_bar(total)
    };
    let (acked, result) =
        stream_fleet_with(channel, bearer, &args.fleet, |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    if let Some(path) = &args.report {
        let report = serde_json::json!({ "acked": acked });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let total_acked: u64 = acked.values().sum();
    match result {
        Ok(()) => {
            println!(
                "{total_acked} events acknowledged for {} providers",
                acked.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e:#} ({total_acked} events acknowledged before the failure)");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:40}] {human_pos}/{human_len} events ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}
