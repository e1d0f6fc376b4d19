//! `depin-analytics demo`: a node in this process, a simulated fleet streamed into it over
//! real gRPC, then what a scheduler would ask, printed.

use std::time::Instant;

use anyhow::Context;

use crate::cli::DemoArgs;
use crate::client::{self, connect, stream_fleet};
use crate::node::{Node, NodeConfig};
use crate::proto::v1 as pb;
use crate::proto::v1::reputation_service_client::ReputationServiceClient;

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    crate::telemetry::init_logging(&args.log_level, false);
    let cfg = NodeConfig {
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        ..NodeConfig::default()
    };
    // The node admits one client at most this many events a second and refuses the rest
    // (RESOURCE_EXHAUSTED); the demo's stream stays under it rather than be refused on a
    // machine fast enough to outrun it.
    let mut pace = args.fleet.clone();
    let limit = cfg.limits.ingest_events_per_second;
    if limit > 0 && (pace.rate == 0 || pace.rate > limit) {
        pace.rate = limit / 10 * 9;
    }
    let node = Node::start(cfg).await?;
    let fleet = crate::sim::Fleet::new(client::fleet_config(&args.fleet));
    let truth = fleet.truth();
    println!(
        "depin-analytics demo: a standalone node on {} and a simulated fleet of {} providers over {} hours",
        node.local_addr, args.fleet.providers, args.fleet.hours
    );
    let channel = connect(&node.local_addr.to_string()).await?;
    let bar = client::progress_bar(fleet.estimated_events());
    let started = Instant::now();
    let (acked, result) = stream_fleet(channel.clone(), &pace, |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    result.context("streaming the simulated fleet")?;
    let total: u64 = acked.values().sum();
    println!(
        "ingested {total} events in {:.1}s ({:.0} events/s)",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64()
    );
    node.refresh().await?;
    // A second cycle so rankings show rank changes and tiers their hysteresis.
    node.refresh().await?;

    let mut rep = ReputationServiceClient::new(channel);
    section("network analytics");
    let net = rep
        .get_network_analytics(pb::GetNetworkAnalyticsRequest {})
        .await?
        .into_inner();
    client::print_network(&net);

    section("top 10 providers");
    let rankings = rep
        .get_provider_rankings(pb::GetProviderRankingsRequest {
            page: Some(pb::PageRequest {
                page_size: 10,
                page_token: String::new(),
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    client::print_rankings(&rankings);

    let job = pb::JobRequirements {
        cpu_cores: 8,
        memory_gb: 32.0,
        gpu_model: "A100".into(),
        gpu_count: 1,
        min_vram_gb: 40.0,
        regions: vec!["us-east".into(), "eu-central".into()],
        expected_duration_hours: 6.0,
        max_budget: 40.0,
        min_uptime: 0.95,
        ..Default::default()
    };
    section(
        "recommendation: 1×A100 ≥ 40 GB, 8 cores, 32 GB, us-east or eu-central, 6 h, budget $40",
    );
    let recs = rep
        .get_provider_recommendations(pb::GetProviderRecommendationsRequest {
            requirements: Some(job),
            max_results: 5,
            allow_relaxed: true,
        })
        .await?
        .into_inner();
    client::print_recommendations(&recs);

    if let Some(id) = truth.degrading.first() {
        section(&format!("a degrading provider: {id}"));
        let profile = rep
            .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
                provider_id: id.to_string(),
            })
            .await?
            .into_inner();
        client::print_profile(&profile);
        let trend = rep
            .get_provider_trend_analysis(pb::GetProviderTrendAnalysisRequest {
                provider_id: id.to_string(),
                metric: String::new(),
            })
            .await?
            .into_inner();
        client::print_trend(&trend);
        let forecast = rep
            .get_provider_forecasts(pb::GetProviderForecastsRequest {
                provider_id: id.to_string(),
                metric: String::new(),
                horizon_hours: 0,
            })
            .await?
            .into_inner();
        client::print_forecast(&forecast);
    }
    println!("\ndone: try `depin-analytics serve` and `depin-analytics query --help` next");
    node.shutdown().await
}

fn section(title: &str) {
    println!("\n== {title}");
}
