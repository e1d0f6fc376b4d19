//! Acceptance tests of issue 8 ("Security and bad input") against the real binary: TLS and
//! mutual TLS with certificates made here (rcgen), bearer tokens and scopes, the plaintext
//! rule, limits, and bad input of every kind on the ingest stream and the query calls.
//!
//! Every test starts its own node(s) on loopback; every wait is bounded.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::{NodeProc, binary, ingest_one, wall_seconds};
use depin_analytics::proto::v1 as pb;
use depin_analytics::proto::v1::cluster_service_client::ClusterServiceClient;
use depin_analytics::proto::v1::ingest_service_client::IngestServiceClient;
use depin_analytics::proto::v1::reputation_service_client::ReputationServiceClient;
use depin_analytics::security::BearerInterceptor;
use pb::telemetry_event::Payload;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

const INGEST_TOKEN: &str = "ingest-token-0123456789abcdef";
const QUERY_TOKEN: &str = "query-token-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
const CLUSTER_TOKEN: &str = "cluster-token-0123456789abcdef";
const UNKNOWN_TOKEN: &str = "unknown-token-0123456789abcdef";

fn tokens_file(dir: &Path) -> PathBuf {
    let p = dir.join("tokens");
    std::fs::write(
        &p,
        format!(
            "# the collector\n{INGEST_TOKEN} ingest\n\
             {QUERY_TOKEN}   query   # the scheduler\n\
             {ADMIN_TOKEN} admin,query\n"
        ),
    )
    .unwrap();
    p
}

fn cluster_token_file(dir: &Path) -> PathBuf {
    let p = dir.join("cluster-token");
    std::fs::write(&p, format!("# node-to-node\n{CLUSTER_TOKEN}\n")).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ------------------------------------------------------------------------ helpers

type Authed = InterceptedService<Channel, BearerInterceptor>;

fn bearer(token: Option<&str>) -> BearerInterceptor {
    BearerInterceptor::new(token).expect("token")
}

fn rep(ch: &Channel, token: Option<&str>) -> ReputationServiceClient<Authed> {
    ReputationServiceClient::with_interceptor(ch.clone(), bearer(token))
}

fn ingest(ch: &Channel, token: Option<&str>) -> IngestServiceClient<Authed> {
    IngestServiceClient::with_interceptor(ch.clone(), bearer(token))
}

fn cluster(ch: &Channel, token: Option<&str>) -> ClusterServiceClient<Authed> {
    ClusterServiceClient::with_interceptor(ch.clone(), bearer(token))
}

fn heartbeat(id: &str, provider: &str, t: i64) -> pb::TelemetryEvent {
    pb::TelemetryEvent {
        event_id: id.into(),
        provider_id: provider.into(),
        timestamp: Some(prost_types::Timestamp {
            seconds: t,
            nanos: 0,
        }),
        payload: Some(Payload::Heartbeat(pb::Heartbeat {
            status: pb::HeartbeatStatus::Online as i32,
        })),
    }
}

fn batch_of(n: usize, prefix: &str) -> pb::IngestBatch {
    let t = wall_seconds() - 60;
    pb::IngestBatch {
        batch_id: 1,
        events: (0..n)
            .map(|i| heartbeat(&format!("{prefix}-{i}"), &format!("p-{}", i % 7), t))
            .collect(),
    }
}

/// Opens an Ingest stream with one batch; the ack or the status.
async fn ingest_batch(
    client: &mut IngestServiceClient<Authed>,
    batch: pb::IngestBatch,
) -> Result<pb::IngestAck, tonic::Status> {
    let mut acks = tokio::time::timeout(
        Duration::from_secs(20),
        client.ingest(tokio_stream::iter([batch])),
    )
    .await
    .expect("Ingest within 20 s")?
    .into_inner();
    match tokio::time::timeout(Duration::from_secs(20), acks.message())
        .await
        .expect("an ack within 20 s")
    {
        Ok(Some(ack)) => Ok(ack),
        Ok(None) => panic!("stream closed without an ack"),
        Err(e) => Err(e),
    }
}

/// A status must not give away the token or which scopes exist.
fn assert_leaks_nothing(st: &tonic::Status, token: Option<&str>) {
    let text = format!("{} {:?}", st.message(), st.metadata());
    if let Some(t) = token {
        assert!(!text.contains(t), "the status echoes the token: {text}");
    }
    for scope in ["ingest", "query", "admin", "cluster"] {
        assert!(
            !st.message().to_ascii_lowercase().contains(scope),
            "the status names a scope: {}",
            st.message()
        );
    }
    assert!(st.details().is_empty(), "no details on an auth error");
}

fn expect_code<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: Code,
    what: &str,
) -> tonic::Status {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got OK {v:?}"),
        Err(st) => {
            assert_eq!(st.code(), code, "{what}: {st:?}");
            st
        }
    }
}

/// The fields named by an INVALID_ARGUMENT's BadRequest detail.
fn bad_fields(st: &tonic::Status) -> Vec<String> {
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    let details = tonic_types::StatusExt::get_error_details(st);
    let bad = details
        .bad_request()
        .unwrap_or_else(|| panic!("a BadRequest detail: {st:?}"));
    for v in &bad.field_violations {
        assert!(!v.description.is_empty(), "{v:?}");
    }
    bad.field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

/// Runs the CLI; bounded by 60 s.
fn run_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env("LOG_LEVEL", "WARN")
        .env_remove("TOKEN")
        .env_remove("TLS_CA")
        .env_remove("TLS_SERVER_NAME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawning the CLI");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------------ certificates

fn start_with(flags: &[String]) -> NodeProc {
    let mut all: Vec<&str> = vec!["--shards", "16"];
    all.extend(flags.iter().map(String::as_str));
    NodeProc::start(&all, &[("ANALYTICS_INTERVAL", "1s")])
}

async fn tls_channel(addr: &str, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

async fn plain_channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

async fn health(ch: &Channel) -> Result<(), tonic::Status> {
    tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

async fn list_services(ch: &Channel) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch.clone())
        .server_reflection_info(tokio_stream::iter([req]))
        .await?
        .into_inner();
    let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("reflection within 10 s")?
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer: {msg:?}");
    };
    Ok(list.service.into_iter().map(|s| s.name).collect())
}

/// A unary call to an arbitrary path (the internal service's path has no service on this
/// node yet: past authentication it is UNIMPLEMENTED).
async fn raw_call(ch: &Channel, path: &'static str, token: Option<&str>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.expect("ready");
    let mut req = tonic::Request::new(pb::GetClusterStatusRequest {});
    bearer(token).apply(req.metadata_mut());
    let codec: tonic_prost::ProstCodec<pb::GetClusterStatusRequest, pb::ClusterStatus> =
        tonic_prost::ProstCodec::default();
    grpc.unary(
        req,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .expect_err("no internal service on this node")
}

// ------------------------------------------------------------------------ auth

#[tokio::test]
async fn tokens_and_scopes_decide_who_may_call_what() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(&[
        "--auth-tokens".into(),
        s(&tokens_file(dir.path())).into(),
        "--cluster-token-file".into(),
        s(&cluster_token_file(dir.path())).into(),
    ]);
    let ch = plain_channel(&node.addr).await;
    let rankings = pb::GetProviderRankingsRequest::default();

    // No token: UNAUTHENTICATED everywhere but health and reflection.
    let st = expect_code(
        ingest_batch(&mut ingest(&ch, None), batch_of(3, "none")).await,
        Code::Unauthenticated,
        "ingest without a token",
    );
    assert_leaks_nothing(&st, None);
    let st = expect_code(
        rep(&ch, None).get_provider_rankings(rankings.clone()).await,
        Code::Unauthenticated,
        "rankings without a token",
    );
    assert_leaks_nothing(&st, None);
    expect_code(
        cluster(&ch, None)
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await,
        Code::Unauthenticated,
        "cluster status without a token",
    );
    health(&ch).await.expect("health needs no token");
    let names = list_services(&ch).await.expect("reflection needs no token");
    assert!(
        names
            .iter()
            .any(|n| n == "depin.analytics.v1.IngestService"),
        "{names:?}"
    );

    // An unknown token, and a malformed header: UNAUTHENTICATED, nothing echoed.
    for t in [UNKNOWN_TOKEN, "x"] {
        let st = expect_code(
            rep(&ch, Some(t))
                .get_provider_rankings(rankings.clone())
                .await,
            Code::Unauthenticated,
            "rankings with an unknown token",
        );
        assert_leaks_nothing(&st, Some(t));
    }

    // Wrong scope: PERMISSION_DENIED, without naming scopes.
    let st = expect_code(
        ingest_batch(&mut ingest(&ch, Some(QUERY_TOKEN)), batch_of(3, "q")).await,
        Code::PermissionDenied,
        "ingest with a query token",
    );
    assert_leaks_nothing(&st, Some(QUERY_TOKEN));
    let st = expect_code(
        rep(&ch, Some(INGEST_TOKEN))
            .get_provider_rankings(rankings.clone())
            .await,
        Code::PermissionDenied,
        "rankings with an ingest token",
    );
    assert_leaks_nothing(&st, Some(INGEST_TOKEN));
    expect_code(
        cluster(&ch, Some(QUERY_TOKEN))
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await,
        Code::PermissionDenied,
        "cluster status with a query token",
    );
    expect_code(
        rep(&ch, Some(CLUSTER_TOKEN))
            .get_provider_rankings(rankings.clone())
            .await,
        Code::PermissionDenied,
        "the cluster token is for node-to-node calls only",
    );

    // Right scope: served.
    let ack = ingest_batch(&mut ingest(&ch, Some(INGEST_TOKEN)), batch_of(5, "ok"))
        .await
        .expect("ingest with the ingest token");
    assert_eq!(ack.accepted, 5, "{ack:?}");
    rep(&ch, Some(QUERY_TOKEN))
        .get_provider_rankings(rankings.clone())
        .await
        .expect("rankings with the query token");
    rep(&ch, Some(ADMIN_TOKEN))
        .get_network_analytics(pb::GetNetworkAnalyticsRequest {})
        .await
        .expect("a token with admin,query may query");
    let status = cluster(&ch, Some(ADMIN_TOKEN))
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .expect("cluster status with the admin token")
        .into_inner();
    assert_eq!(status.events_ingested, 5);

    // The internal node-to-node path: the cluster token passes (and finds no service on a
    // node without the cluster layer); anything else is refused before it.
    const INTERNAL: &str = "/depin.analytics.internal.v1.NodeService/Ping";
    assert_eq!(
        raw_call(&ch, INTERNAL, None).await.code(),
        Code::Unauthenticated
    );
    assert_eq!(
        raw_call(&ch, INTERNAL, Some(ADMIN_TOKEN)).await.code(),
        Code::PermissionDenied
    );
    assert_eq!(
        raw_call(&ch, INTERNAL, Some(CLUSTER_TOKEN)).await.code(),
        Code::Unimplemented
    );
    // A path in no table needs admin.
    assert_eq!(
        raw_call(&ch, "/some.Other/Call", Some(QUERY_TOKEN))
            .await
            .code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn without_a_tokens_file_auth_is_off() {
    let node = start_with(&[]);
    let ch = plain_channel(&node.addr).await;
    rep(&ch, None)
        .get_network_analytics(pb::GetNetworkAnalyticsRequest {})
        .await
        .expect("open without --auth-tokens");
    // Any token is ignored, not rejected.
    cluster(&ch, Some(UNKNOWN_TOKEN))
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .expect("tokens are ignored when auth is off");
}

fn serve_fails(flags: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "serve",
        "--metrics-port",
        "off",
        "--shards",
        "4",
        "--data-dir",
    ];
    args.push(s(dir.path()));
    args.extend_from_slice(flags);
    let out = run_cli(&args, env);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "serve {flags:?} must fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[test]
fn a_bad_tokens_file_stops_start_up_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "a-secret-token-that-must-not-leak";
    let cases = [
        (
            format!("{INGEST_TOKEN} ingest\n{secret} ingest,root\n"),
            "line 2",
        ),
        (format!("# c\n\n{secret}\n"), "line 3"),
        (format!("{INGEST_TOKEN} ingest\nshort query\n"), "line 2"),
    ];
    for (text, want) in cases {
        let p = dir.path().join("tokens");
        std::fs::write(&p, &text).unwrap();
        let stderr = serve_fails(&["--grpc-port", "127.0.0.1:0", "--auth-tokens", s(&p)], &[]);
        assert!(stderr.contains(want), "{text:?}: {stderr}");
        assert!(
            !stderr.contains(secret),
            "the error leaks a token: {stderr}"
        );
    }
    let stderr = serve_fails(
        &["--grpc-port", "127.0.0.1:0"],
        &[("AUTH_TOKENS", s(&dir.path().join("missing")))],
    );
    assert!(stderr.contains("tokens file"), "{stderr}");
}

// ------------------------------------------------------------------------ plaintext rule

#[test]
fn plaintext_on_a_non_loopback_address_needs_allow_plaintext() {
    let stderr = serve_fails(&["--grpc-port", "0.0.0.0:0"], &[]);
    assert!(
        stderr.contains("--allow-plaintext") && stderr.contains("0.0.0.0"),
        "a clear error: {stderr}"
    );

    // With --allow-plaintext (here through its variable) it starts, and warns.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary())
        .args([
            "serve",
            "--grpc-port",
            "0.0.0.0:0",
            "--metrics-port",
            "off",
            "--shards",
            "4",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("ALLOW_PLAINTEXT", "true")
        .env("LOG_LEVEL", "WARN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines
        .next()
        .and_then(Result::ok)
        .is_some_and(|l| l.starts_with("listening on"));
    let _ = child.kill();
    let _ = child.wait();
    let stderr = err_reader.join().unwrap();
    assert!(listening, "the node starts with ALLOW_PLAINTEXT: {stderr}");
    assert!(
        stderr.contains("allow-plaintext") && stderr.contains("WARN"),
        "a warning at start: {stderr}"
    );
    assert!(
        stderr.contains("no --auth-tokens"),
        "and a warning that anyone may call: {stderr}"
    );
}

// ------------------------------------------------------------------------ TLS

#[tokio::test]
async fn tls_node_serves_tls_clients_only_and_the_cli_speaks_tls_with_a_token() {
    let pki = Pki::new();
    let mut flags = pki.server_flags();
    flags.extend([
        "--auth-tokens".into(),
        s(&tokens_file(pki.dir.path())).into(),
    ]);
    let node = start_with(&flags);

    // A plaintext client cannot talk to it.
    let plain = plain_channel(&node.addr).await;
    assert!(
        health(&plain).await.is_err(),
        "plaintext reached a TLS-only node"
    );

    // A TLS client trusting the CA can.
    let ch = tls_channel(&node.addr, pki.client_tls(false))
        .await
        .expect("TLS connect");
    health(&ch).await.expect("health over TLS");
    let ack = ingest_batch(&mut ingest(&ch, Some(INGEST_TOKEN)), batch_of(4, "tls"))
        .await
        .expect("ingest over TLS");
    assert_eq!(ack.accepted, 4);

    // A client trusting another CA refuses the node.
    let other = Pki::new();
    assert!(
        tls_channel(&node.addr, other.client_tls(false))
            .await
            .is_err()
            || health(
                &tls_channel(&node.addr, other.client_tls(false))
                    .await
                    .unwrap()
            )
            .await
            .is_err(),
        "a certificate from an untrusted CA was accepted"
    );

    // The CLI: https target, --tls-ca, --token (and TLS_CA / TOKEN).
    let port = node.addr.rsplit(':').next().unwrap().to_string();
    let target = format!("https://localhost:{port}");
    let out = tokio::task::spawn_blocking({
        let (target, ca) = (target.clone(), pki.ca.clone());
        move || {
            run_cli(
                &[
                    "query",
                    "--target",
                    &target,
                    "--tls-ca",
                    s(&ca),
                    "--token",
                    ADMIN_TOKEN,
                    "--json",
                    "cluster-status",
                ],
                &[],
            )
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "query over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON");
    assert_eq!(json["eventsIngested"], "4", "{json}");

    let out = tokio::task::spawn_blocking({
        let (addr, ca) = (node.addr.clone(), pki.ca.clone());
        move || {
            run_cli(
                &["query", "--target", &addr, "--json", "network"],
                &[("TLS_CA", s(&ca)), ("TOKEN", QUERY_TOKEN)],
            )
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "query with TLS_CA and TOKEN from the environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without the token the CLI is refused, and says so.
    let out = tokio::task::spawn_blocking({
        let (target, ca) = (target.clone(), pki.ca.clone());
        move || {
            run_cli(
                &["query", "--target", &target, "--tls-ca", s(&ca), "network"],
                &[],
            )
        }
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing or unknown credentials"),
        "{stderr}"
    );

    // simulate too.
    let out = tokio::task::spawn_blocking({
        let (target, ca) = (target.clone(), pki.ca.clone());
        move || {
            run_cli(
                &[
                    "simulate",
                    "--target",
                    &target,
                    "--tls-ca",
                    s(&ca),
                    "--token",
                    INGEST_TOKEN,
                    "--providers",
                    "3",
                    "--hours",
                    "2",
                    "--quiet",
                ],
                &[],
            )
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "simulate over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bench --target` measures a node that wants TLS and a token: with `--tls-ca` and
/// `--token` every answer checks out; without the token it stops with the node's refusal.
#[tokio::test]
async fn bench_measures_a_tls_node_with_a_token() {
    const BENCH_TOKEN: &str = "bench-token-0123456789abcdef";
    let pki = Pki::new();
    let tokens = pki.dir.path().join("bench-tokens");
    std::fs::write(&tokens, format!("{BENCH_TOKEN} ingest,query\n")).unwrap();
    let mut flags = pki.server_flags();
    flags.extend(["--auth-tokens".into(), s(&tokens).into()]);
    let node = start_with(&flags);
    let port = node.addr.rsplit(':').next().unwrap().to_string();
    let target = format!("https://localhost:{port}");
    let bench = |token: Option<&'static str>| {
        let (target, ca) = (target.clone(), pki.ca.clone());
        tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "bench",
                "--quick",
                "--providers",
                "40",
                "--hours",
                "6",
                "--queries",
                "10",
                "--json",
                "--target",
                &target,
                "--tls-ca",
                s(&ca),
            ];
            if let Some(t) = token {
                args.extend(["--token", t]);
            }
            run_cli(&args, &[])
        })
    };
    let out = bench(Some(BENCH_TOKEN)).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench over TLS with a token: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON");
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["verify"]["providers"], 40, "{json}");
    assert!(json["ingest"]["acked"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["ingest"]["acked"], json["ingest"]["sent"], "{json}");

    let out = bench(None).await.unwrap();
    assert!(!out.status.success(), "bench without a token succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing or unknown credentials"),
        "{stderr}"
    );
}

#[tokio::test]
async fn mutual_tls_rejects_a_client_without_a_certificate() {
    let pki = Pki::new();
    let mut flags = pki.server_flags();
    flags.extend(["--tls-client-ca".into(), s(&pki.ca).into()]);
    let node = start_with(&flags);

    let no_cert = tls_channel(&node.addr, pki.client_tls(false)).await;
    let refused = match no_cert {
        Err(_) => true,
        Ok(ch) => health(&ch).await.is_err(),
    };
    assert!(refused, "a client without a certificate got through");

    let ch = tls_channel(&node.addr, pki.client_tls(true))
        .await
        .expect("mTLS connect");
    health(&ch).await.expect("health with a client certificate");
    cluster(&ch, None)
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .expect("cluster status with a client certificate");

    // The CLI with a client certificate.
    let port = node.addr.rsplit(':').next().unwrap().to_string();
    let out = tokio::task::spawn_blocking({
        let target = format!("https://127.0.0.1:{port}");
        let (ca, cert, key) = (
            pki.ca.clone(),
            pki.client_cert.clone(),
            pki.client_key.clone(),
        );
        move || {
            run_cli(
                &[
                    "query",
                    "--target",
                    &target,
                    "--tls-ca",
                    s(&ca),
                    "--tls-client-cert",
                    s(&cert),
                    "--tls-client-key",
                    s(&key),
                    "network",
                ],
                &[],
            )
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "query with a client certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The chart's exec probe on a mutual-TLS pod: `query health` to 127.0.0.1, checking the
/// name given by --tls-server-name, presenting the node's own certificate.
#[tokio::test]
async fn query_health_over_mutual_tls_checks_the_server_name_given() {
    let pki = Pki::new();
    let mut flags = pki.server_flags();
    flags.extend(["--tls-client-ca".into(), s(&pki.ca).into()]);
    let node = start_with(&flags);
    let port = node.addr.rsplit(':').next().unwrap().to_string();
    let probe = move |name: &str, tls: bool| {
        let target = format!("127.0.0.1:{port}");
        let mut args = vec![
            "query",
            "--target",
            target.as_str(),
            "health",
            "--tls-server-name",
            name,
        ];
        if tls {
            args.extend([
                "--tls-ca",
                s(&pki.ca),
                "--tls-client-cert",
                s(&pki.server_cert),
                "--tls-client-key",
                s(&pki.server_key),
            ]);
        }
        run_cli(&args, &[])
    };
    let (ok, wrong, plain) = tokio::task::spawn_blocking(move || {
        (
            probe("localhost", true),
            probe("other.example", true),
            probe("localhost", false),
        )
    })
    .await
    .unwrap();
    assert!(
        ok.status.success(),
        "health with the node's name and certificate: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "SERVING");
    assert!(
        !wrong.status.success(),
        "a name the certificate lacks was accepted"
    );
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && stderr.contains("--tls-server-name needs TLS"),
        "{stderr}"
    );
}

#[test]
fn bad_tls_files_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let stderr = serve_fails(
        &[
            "--grpc-port",
            "127.0.0.1:0",
            "--tls-cert",
            s(&junk),
            "--tls-key",
            s(&junk),
        ],
        &[],
    );
    assert!(
        stderr.contains("junk.pem"),
        "the error names the file: {stderr}"
    );
    // A key without a certificate is a usage error.
    let stderr = serve_fails(&["--grpc-port", "127.0.0.1:0", "--tls-key", s(&junk)], &[]);
    assert!(stderr.contains("--tls-cert"), "{stderr}");
}

// ------------------------------------------------------------------------ limits

#[tokio::test]
async fn limits_answer_resource_exhausted_with_retry_info() {
    let node = start_with(&[
        "--ingest-rate".into(),
        "100".into(),
        "--ingest-burst".into(),
        "150".into(),
        "--max-batch-events".into(),
        "100".into(),
        "--max-ingest-streams".into(),
        "2".into(),
        "--max-alert-subscribers".into(),
        "1".into(),
        "--max-message-bytes".into(),
        "8192".into(),
    ]);
    let ch = plain_channel(&node.addr).await;

    // Batch size.
    let st = expect_code(
        ingest_batch(&mut ingest(&ch, None), batch_of(101, "big")).await,
        Code::InvalidArgument,
        "a batch over --max-batch-events",
    );
    assert_eq!(bad_fields(&st), vec!["events"]);

    // Events a second per client: 100 then 100 more at once is over the 150 burst.
    let ack = ingest_batch(&mut ingest(&ch, None), batch_of(100, "r1"))
        .await
        .expect("within the burst");
    assert_eq!(ack.accepted, 100);
    let st = expect_code(
        ingest_batch(&mut ingest(&ch, None), batch_of(100, "r2")).await,
        Code::ResourceExhausted,
        "over the ingest rate",
    );
    let retry = tonic_types::StatusExt::get_error_details(&st)
        .retry_info()
        .cloned()
        .expect("RetryInfo");
    let delay = retry.retry_delay.expect("a retry delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(2),
        "{delay:?}"
    );
    tokio::time::sleep(delay + Duration::from_millis(100)).await;
    let ack = ingest_batch(&mut ingest(&ch, None), batch_of(100, "r2"))
        .await
        .expect("after the advised delay");
    assert_eq!(ack.accepted, 100);

    // Message size.
    let mut huge = batch_of(1, "huge");
    huge.events[0].event_id = "x".repeat(10_000);
    let st = ingest_batch(&mut ingest(&ch, None), huge)
        .await
        .expect_err("a message over --max-message-bytes");
    assert!(
        matches!(st.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{st:?}"
    );

    // Concurrent Ingest streams: two open, the third refused.
    let (tx1, rx1) = tokio::sync::mpsc::channel::<pb::IngestBatch>(1);
    let (tx2, rx2) = tokio::sync::mpsc::channel::<pb::IngestBatch>(1);
    let mut c1 = ingest(&ch, None);
    let mut c2 = ingest(&ch, None);
    let _s1 = c1
        .ingest(tokio_stream::wrappers::ReceiverStream::new(rx1))
        .await
        .expect("stream 1");
    let _s2 = c2
        .ingest(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .expect("stream 2");
    let st = expect_code(
        ingest_batch(&mut ingest(&ch, None), batch_of(1, "third")).await,
        Code::ResourceExhausted,
        "a third Ingest stream",
    );
    assert!(
        tonic_types::StatusExt::get_error_details(&st)
            .retry_info()
            .is_some()
    );
    drop((tx1, tx2, _s1, _s2));

    // WatchAlerts subscribers: one, the second refused.
    let mut r = rep(&ch, None);
    let _w = r
        .watch_alerts(pb::WatchAlertsRequest::default())
        .await
        .expect("first subscriber");
    let mut r2 = rep(&ch, None);
    expect_code(
        r2.watch_alerts(pb::WatchAlertsRequest::default()).await,
        Code::ResourceExhausted,
        "a second WatchAlerts subscriber",
    );
    // A subscriber that leaves frees its slot.
    drop(_w);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match r2.watch_alerts(pb::WatchAlertsRequest::default()).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the slot of a gone subscriber was not freed: {e:?}"),
        }
    }
}

// ------------------------------------------------------------------------ bad input

fn ev(id: &str, provider: &str, t: i64, payload: Payload) -> pb::TelemetryEvent {
    pb::TelemetryEvent {
        event_id: id.into(),
        provider_id: provider.into(),
        timestamp: Some(prost_types::Timestamp {
            seconds: t,
            nanos: 0,
        }),
        payload: Some(payload),
    }
}

fn good_spec() -> pb::ProviderSpec {
    pb::ProviderSpec {
        region: "us-east".into(),
        cpu_cores: 16,
        memory_gb: 64.0,
        gpus: vec![pb::GpuSpec {
            model: "A100".into(),
            count: 2,
            vram_gb: 80.0,
        }],
        storage_gb: 1000.0,
        price_per_hour: 3.5,
    }
}

#[tokio::test]
async fn every_class_of_bad_event_is_named_and_nothing_of_it_is_stored() {
    let node = start_with(&[]);
    let now = wall_seconds() - 60;
    let job = |status: i32, duration: f64, cost: f64| {
        Payload::JobOutcome(pb::JobOutcome {
            status,
            duration_seconds: duration,
            sla_met: true,
            error_code: 0,
            cost,
        })
    };
    let util = |cpu: f64, gpu: f64, memory: f64| {
        Payload::Utilization(pb::UtilizationSample { cpu, gpu, memory })
    };
    let spec = |f: &dyn Fn(&mut pb::ProviderSpec)| {
        let mut s = good_spec();
        f(&mut s);
        Payload::Spec(s)
    };
    let mut nanos = ev("bad-nanos", "bad-a", now, util(0.1, 0.1, 0.1));
    nanos.timestamp.as_mut().unwrap().nanos = 2_000_000_000;
    // (event, expected field, expected reason); None = good.
    let cases: Vec<(pb::TelemetryEvent, Option<(&str, &str)>)> = vec![
        (ev("ok-1", "good-1", now, util(0.2, 0.3, 0.4)), None),
        (
            ev(&"e".repeat(200), "bad-a", now, util(0.1, 0.1, 0.1)),
            Some(("event_id", "too_long")),
        ),
        (
            ev("bad-id", "prov/1", now, util(0.1, 0.1, 0.1)),
            Some(("provider_id", "invalid_characters")),
        ),
        (
            ev("bad-id2", &"p".repeat(129), now, util(0.1, 0.1, 0.1)),
            Some(("provider_id", "too_long")),
        ),
        (
            ev("bad-id3", "prov\u{0}1", now, util(0.1, 0.1, 0.1)),
            Some(("provider_id", "invalid_characters")),
        ),
        (nanos, Some(("timestamp.nanos", "out_of_range"))),
        (
            ev("bad-neg-t", "bad-a", -5, util(0.1, 0.1, 0.1)),
            Some(("timestamp", "out_of_range")),
        ),
        (
            ev("bad-future", "bad-a", now + 3600, util(0.1, 0.1, 0.1)),
            Some(("timestamp", "in_future")),
        ),
        (
            ev("bad-old", "bad-old", now - 30 * 86_400, util(0.1, 0.1, 0.1)),
            Some(("timestamp", "too_old")),
        ),
        (
            ev("bad-gpu-nan", "bad-a", now, util(0.1, f64::NAN, 0.1)),
            Some(("utilization.gpu", "not_finite")),
        ),
        (
            ev("bad-mem", "bad-a", now, util(0.1, 0.1, -0.1)),
            Some(("utilization.memory", "out_of_range")),
        ),
        (
            ev("bad-cpu-inf", "bad-a", now, util(f64::INFINITY, 0.1, 0.1)),
            Some(("utilization.cpu", "not_finite")),
        ),
        (
            ev("bad-job-enum", "bad-a", now, job(42, 10.0, 1.0)),
            Some(("job_outcome.status", "invalid_enum")),
        ),
        (
            ev("bad-job-neg", "bad-a", now, job(1, -1.0, 1.0)),
            Some(("job_outcome.duration_seconds", "out_of_range")),
        ),
        (
            ev("bad-job-long", "bad-a", now, job(1, 1e12, 1.0)),
            Some(("job_outcome.duration_seconds", "out_of_range")),
        ),
        (
            ev(
                "bad-job-cost",
                "bad-a",
                now,
                job(1, 10.0, f64::NEG_INFINITY),
            ),
            Some(("job_outcome.cost", "not_finite")),
        ),
        (
            ev(
                "bad-hb",
                "bad-a",
                now,
                Payload::Heartbeat(pb::Heartbeat { status: 9 }),
            ),
            Some(("heartbeat.status", "invalid_enum")),
        ),
        (
            ev(
                "bad-rt",
                "bad-a",
                now,
                Payload::ResponseTime(pb::ResponseTimeSample {
                    response_time_ms: 1e10,
                    is_error: false,
                }),
            ),
            Some(("response_time.response_time_ms", "out_of_range")),
        ),
        (
            ev(
                "bad-region",
                "bad-a",
                now,
                spec(&|s| s.region = "us east\n".into()),
            ),
            Some(("spec.region", "invalid_characters")),
        ),
        (
            ev("bad-gpus", "bad-a", now, spec(&|s| s.gpus[0].count = 0)),
            Some(("spec.gpus[0].count", "out_of_range")),
        ),
        (
            ev(
                "bad-model",
                "bad-a",
                now,
                spec(&|s| s.gpus[0].model = String::new()),
            ),
            Some(("spec.gpus[0].model", "required")),
        ),
        (
            ev(
                "bad-vram",
                "bad-a",
                now,
                spec(&|s| s.gpus[0].vram_gb = f64::NAN),
            ),
            Some(("spec.gpus[0].vram_gb", "not_finite")),
        ),
        (
            ev("bad-memgb", "bad-a", now, spec(&|s| s.memory_gb = -64.0)),
            Some(("spec.memory_gb", "out_of_range")),
        ),
        (
            ev(
                "bad-price",
                "bad-a",
                now,
                spec(&|s| s.price_per_hour = 1e300),
            ),
            Some(("spec.price_per_hour", "out_of_range")),
        ),
        (
            ev("bad-cores", "bad-a", now, spec(&|s| s.cpu_cores = u32::MAX)),
            Some(("spec.cpu_cores", "out_of_range")),
        ),
        (ev("ok-2", "good-2", now, spec(&|_| {})), None),
        (ev("ok-3", "good-1", now + 1, job(1, 30.0, 0.5)), None),
    ];
    // The node's "now" (newest event time) first, so that the too-old check does not depend
    // on which shard applies its events first.
    let warm = ingest_one(&node, &[heartbeat("warm", "good-0", now)]).await;
    assert_eq!(warm.accepted, 1);
    let events: Vec<pb::TelemetryEvent> = cases.iter().map(|(e, _)| e.clone()).collect();
    let ack = ingest_one(&node, &events).await;
    let expected: Vec<(u32, String, &str)> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, (_, want))| want.map(|(f, r)| (i as u32, format!("events[{i}].{f}"), r)))
        .collect();
    let got: Vec<(u32, String, &str)> = ack
        .rejections
        .iter()
        .map(|r| (r.index, r.field.clone(), r.reason.as_str()))
        .collect();
    assert_eq!(got, expected, "{:#?}", ack.rejections);
    assert_eq!(ack.accepted, 3, "the good events are accepted");
    for r in &ack.rejections {
        assert!(!r.description.is_empty());
        assert_eq!(r.event_id, events[r.index as usize].event_id);
    }

    // Nothing of a bad event was stored.
    let ch = plain_channel(&node.addr).await;
    let mut q = rep(&ch, None);
    let p = q
        .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
            provider_id: "good-1".into(),
        })
        .await
        .expect("good-1")
        .into_inner();
    assert_eq!(p.events_ingested, 2);
    for id in ["bad-a", "bad-old"] {
        let st = q
            .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
                provider_id: id.into(),
            })
            .await
            .expect_err(id);
        assert_eq!(st.code(), Code::NotFound, "{id}: {st:?}");
    }
    let status = cluster(&ch, None)
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.events_ingested, 4);
    assert_eq!(status.provider_count, 3);
}

#[tokio::test]
async fn bad_query_requests_name_every_bad_field() {
    let node = start_with(&["--max-page-size".into(), "50".into()]);
    let ch = plain_channel(&node.addr).await;
    let mut q = rep(&ch, None);

    // Rankings: several bad fields at once, each named.
    let st = q
        .get_provider_rankings(pb::GetProviderRankingsRequest {
            category: 99,
            region: "us east; drop".into(),
            gpu_model: "x".repeat(65),
            min_tier: 17,
            min_data_points: 0,
            page: Some(pb::PageRequest {
                page_size: 10,
                page_token: "abc".into(),
            }),
        })
        .await
        .expect_err("bad rankings request");
    let mut fields = bad_fields(&st);
    fields.sort();
    assert_eq!(
        fields,
        [
            "category",
            "gpu_model",
            "min_tier",
            "page.page_token",
            "region"
        ],
        "{st:?}"
    );
    let st = q
        .get_provider_rankings(pb::GetProviderRankingsRequest {
            page: Some(pb::PageRequest {
                page_size: 51,
                page_token: String::new(),
            }),
            ..Default::default()
        })
        .await
        .expect_err("page over --max-page-size");
    assert_eq!(bad_fields(&st), ["page.page_size"]);

    // Recommendations: numbers and strings of the job.
    let st = q
        .get_provider_recommendations(pb::GetProviderRecommendationsRequest {
            requirements: Some(pb::JobRequirements {
                gpu_model: "A100\u{7}".into(),
                regions: vec!["us-east".into(), String::new()],
                max_budget: f64::NAN,
                memory_gb: -1.0,
                min_uptime: 1.5,
                expected_duration_hours: f64::INFINITY,
                min_tier: 42,
                ..Default::default()
            }),
            max_results: 5,
            allow_relaxed: false,
        })
        .await
        .expect_err("bad recommendation request");
    let mut fields = bad_fields(&st);
    fields.sort();
    assert_eq!(
        fields,
        [
            "requirements.expected_duration_hours",
            "requirements.gpu_model",
            "requirements.max_budget",
            "requirements.memory_gb",
            "requirements.min_tier",
            "requirements.min_uptime",
            "requirements.regions[1]",
        ],
        "{st:?}"
    );
    let st = q
        .get_provider_recommendations(pb::GetProviderRecommendationsRequest {
            requirements: Some(pb::JobRequirements::default()),
            max_results: 1000,
            allow_relaxed: false,
        })
        .await
        .expect_err("max_results over 100");
    assert_eq!(bad_fields(&st), ["max_results"]);

    // Provider-keyed calls: the id.
    for id in ["", "bad id", &"p".repeat(200)] {
        let st = q
            .get_provider_trend_analysis(pb::GetProviderTrendAnalysisRequest {
                provider_id: id.to_string(),
                metric: "performance_score".into(),
            })
            .await
            .expect_err("bad provider id");
        assert_eq!(bad_fields(&st), ["provider_id"], "{id:?}");
    }
    let st = q
        .get_provider_forecasts(pb::GetProviderForecastsRequest {
            provider_id: "p-1".into(),
            metric: "performance_score".into(),
            horizon_hours: 10_000,
        })
        .await
        .expect_err("horizon over two weeks");
    assert_eq!(bad_fields(&st), ["horizon_hours"]);
    let st = q
        .get_provider_forecasts(pb::GetProviderForecastsRequest {
            provider_id: "p-1".into(),
            metric: "bogus".into(),
            horizon_hours: 0,
        })
        .await
        .expect_err("unknown metric");
    assert_eq!(bad_fields(&st), ["metric"]);

    // WatchAlerts: filters.
    let st = q
        .watch_alerts(pb::WatchAlertsRequest {
            provider_ids: vec!["ok-1".into(), "not ok".into()],
            regions: vec!["eu-west".into(), "\u{1b}[31m".into()],
            kinds: vec![],
        })
        .await
        .expect_err("bad filters");
    let mut fields = bad_fields(&st);
    fields.sort();
    assert_eq!(fields, ["provider_ids[1]", "regions[1]"], "{st:?}");
    let st = q
        .watch_alerts(pb::WatchAlertsRequest {
            kinds: vec!["nope".into()],
            ..Default::default()
        })
        .await
        .expect_err("unknown alert kind");
    assert_eq!(bad_fields(&st), ["kinds[0]"]);
    let st = q
        .watch_alerts(pb::WatchAlertsRequest {
            provider_ids: (0..300).map(|i| format!("p{i}")).collect(),
            ..Default::default()
        })
        .await
        .expect_err("too many filter entries");
    assert_eq!(bad_fields(&st), ["provider_ids"]);
}
