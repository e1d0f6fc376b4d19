//! Who may call what: bearer tokens with scopes, the path → scope table, the plaintext rule.
//!
//! - **Tokens** come from `--auth-tokens PATH`: one `<token> <scope>[,<scope>…]` a line,
//!   `#` starts a comment. Scopes: `ingest` (IngestService), `query` (ReputationService),
//!   `admin` (ClusterService; later drain/rebalance) and `cluster` (node-to-node calls).
//!   Clients send `authorization: Bearer <token>`. Tokens are kept as SHA-256 digests and a
//!   presented token is compared with every one of them in constant time.
//! - **Node-to-node**: `--cluster-token-file` holds the token a node sends on its internal
//!   calls ([`BearerInterceptor`]); it is also accepted for scope `cluster`.
//! - **Enforcement** is a tower layer over the whole server ([`AuthLayer`]): the request path
//!   picks the scope ([`ROUTES`]); health and reflection stay open; a path not in the table
//!   needs `admin`. A single service can use [`Authenticator::interceptor`] instead.
//! - **Off by default**: without `--auth-tokens` the public services are open, and without
//!   any `cluster` token the internal service is open (a warning is logged when such a node
//!   listens on a non-loopback address).
//! - **Errors leak nothing**: UNAUTHENTICATED ("missing or unknown credentials") or
//!   PERMISSION_DENIED ("the credentials do not allow this call"); never the token, never the
//!   scopes a token has.
//! - **Plaintext** is for loopback: without TLS a node binding any other address needs
//!   `--allow-plaintext` ([`check_plaintext`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, bail};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tonic::codegen::http;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::warn;

pub use crate::tls::{TlsFiles, client_tls_config, server_tls_config};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// IngestService.
    Ingest,
    /// ReputationService.
    Query,
    /// ClusterService (status; later drain, rebalance).
    Admin,
    /// The internal node-to-node service.
    Cluster,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Ingest, Scope::Query, Scope::Admin, Scope::Cluster];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Query => "query",
            Scope::Admin => "admin",
            Scope::Cluster => "cluster",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.name() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// gRPC path prefixes and the scope they need (`None`: open to anyone). The first match
/// wins; a path matching nothing needs [`Scope::Admin`].
pub const ROUTES: &[(&str, Option<Scope>)] = &[
    ("/grpc.health.v1.Health/", None),
    ("/grpc.reflection.v1.ServerReflection/", None),
    ("/grpc.reflection.v1alpha.ServerReflection/", None),
    ("/depin.analytics.v1.IngestService/", Some(Scope::Ingest)),
    ("/depin.analytics.v1.ReputationService/", Some(Scope::Query)),
    ("/depin.analytics.v1.ClusterService/", Some(Scope::Admin)),
    ("/depin.analytics.internal.", Some(Scope::Cluster)),
];

/// The scope a gRPC path needs (`None`: open).
pub fn scope_for_path(path: &str) -> Option<Scope> {
    ROUTES
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map_or(Some(Scope::Admin), |(_, s)| *s)
}

/// Who called, as far as rate limiting and logs are concerned: a short fingerprint of the
/// token (the first 8 bytes of its SHA-256, hex), never the token itself. Inserted into the
/// request extensions by [`AuthLayer`] and [`Authenticator::interceptor`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(pub String);

type Digest = [u8; 32];

fn digest(token: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn fingerprint(d: &Digest) -> String {
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

struct Entry {
    digest: Digest,
    scopes: u8,
}

/// Shortest token accepted in a tokens file.
pub const MIN_TOKEN_LEN: usize = 16;

/// The tokens of `--auth-tokens`, as digests with their scopes.
pub struct TokenTable {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenTable({} tokens)", self.entries.len())
    }
}

fn strip_comment(line: &str) -> &str {
    let mut prev_ws = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_ws {
            return &line[..i];
        }
        prev_ws = c.is_whitespace();
    }
    line
}

fn check_token_chars(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "a token must be at least {MIN_TOKEN_LEN} characters"
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token may hold only visible ASCII characters".into());
    }
    Ok(())
}

impl TokenTable {
    /// Parses a tokens file's text; `name` (the path) appears in errors with the line number.
    /// Errors never contain a token.
    pub fn parse(name: &str, text: &str) -> anyhow::Result<TokenTable> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, scopes] = fields[..] else {
                bail!("{name}, line {n}: expected `<token> <scope>[,<scope>…]`");
            };
            check_token_chars(token).map_err(|e| anyhow::anyhow!("{name}, line {n}: {e}"))?;
            let mut bits = 0u8;
            for s in scopes.split(',') {
                let scope = Scope::parse(s.trim()).with_context(|| {
                    format!(
                        "{name}, line {n}: unknown scope {s:?} (ingest, query, admin or cluster)"
                    )
                })?;
                bits |= scope.bit();
            }
            let d = digest(token.as_bytes());
            if entries.iter().any(|e| e.digest == d) {
                bail!("{name}, line {n}: this token already appears on an earlier line");
            }
            entries.push(Entry {
                digest: d,
                scopes: bits,
            });
        }
        if entries.is_empty() {
            bail!("{name}: no tokens (lines of `<token> <scope>[,<scope>…]`)");
        }
        Ok(TokenTable { entries })
    }

    pub fn from_file(path: &Path) -> anyhow::Result<TokenTable> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the tokens file {}", path.display()))?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn grants(&self, scope: Scope) -> bool {
        self.entries.iter().any(|e| e.scopes & scope.bit() != 0)
    }

    /// The scopes of a presented token (0 when unknown), comparing with every entry in
    /// constant time.
    fn lookup(&self, d: &Digest) -> (bool, u8) {
        let mut found = subtle::Choice::from(0);
        let mut scopes = 0u8;
        for e in &self.entries {
            let eq = e.digest[..].ct_eq(&d[..]);
            scopes = u8::conditional_select(&scopes, &e.scopes, eq);
            found |= eq;
        }
        (found.into(), scopes)
    }
}

/// Reads the token of a `--cluster-token-file`: the first line that is not empty or a
/// comment, trimmed.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text
        .lines()
        .map(|l| strip_comment(l).trim())
        .find(|l| !l.is_empty())
        .with_context(|| format!("{}: no token in the file", path.display()))?;
    check_token_chars(token).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(token.to_string())
}

/// Why a call was refused (mapped to a status without any detail about the credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Unauthenticated,
    PermissionDenied,
}

impl Denied {
    pub fn status(self) -> Status {
        match self {
            Denied::Unauthenticated => Status::unauthenticated("missing or unknown credentials"),
            Denied::PermissionDenied => {
                Status::permission_denied("the credentials do not allow this call")
            }
        }
    }
}

/// Checks credentials against the tokens file and the cluster token.
#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: Option<TokenTable>,
    cluster_token: Option<Digest>,
}

impl Authenticator {
    /// Everything open.
    pub fn disabled() -> Authenticator {
        Authenticator::default()
    }

    pub fn new(tokens: Option<TokenTable>, cluster_token: Option<&str>) -> Authenticator {
        Authenticator {
            tokens,
            cluster_token: cluster_token.map(|t| digest(t.as_bytes())),
        }
    }

    /// Loads `--auth-tokens` and `--cluster-token-file`.
    pub fn from_files(
        tokens: Option<&Path>,
        cluster_token: Option<&Path>,
    ) -> anyhow::Result<Authenticator> {
        let tokens = tokens.map(TokenTable::from_file).transpose()?;
        let cluster = cluster_token.map(read_token_file).transpose()?;
        Ok(Authenticator::new(tokens, cluster.as_deref()))
    }

    /// Whether calls needing `scope` are checked at all. Public scopes are checked when a
    /// tokens file is loaded; `cluster` when any token grants it (a tokens-file line or the
    /// cluster token).
    pub fn enforces(&self, scope: Scope) -> bool {
        match scope {
            Scope::Cluster => {
                self.cluster_token.is_some()
                    || self
                        .tokens
                        .as_ref()
                        .is_some_and(|t| t.grants(Scope::Cluster))
            }
            _ => self.tokens.is_some(),
        }
    }

    /// Whether the public services are protected by tokens.
    pub fn public_auth_on(&self) -> bool {
        self.tokens.is_some()
    }

    /// Checks the `authorization` header for `scope` (`None`: open). The principal is `None`
    /// when the call was let through unchecked.
    pub fn check(
        &self,
        scope: Option<Scope>,
        authorization: Option<&[u8]>,
    ) -> Result<Option<Principal>, Denied> {
        let Some(scope) = scope else { return Ok(None) };
        if !self.enforces(scope) {
            return Ok(None);
        }
        let token = authorization
            .and_then(|h| {
                let prefix = b"Bearer ";
                (h.len() > prefix.len() && h[..prefix.len()].eq_ignore_ascii_case(prefix))
                    .then(|| &h[prefix.len()..])
            })
            .map(|t| t.trim_ascii())
            .ok_or(Denied::Unauthenticated)?;
        let d = digest(token);
        let (found, mut scopes) = self.tokens.as_ref().map_or((false, 0), |t| t.lookup(&d));
        let mut known = found;
        if let Some(c) = &self.cluster_token
            && bool::from(c[..].ct_eq(&d[..]))
        {
            known = true;
            scopes |= Scope::Cluster.bit();
        }
        if !known {
            return Err(Denied::Unauthenticated);
        }
        if scopes & scope.bit() == 0 {
            return Err(Denied::PermissionDenied);
        }
        Ok(Some(Principal(fingerprint(&d))))
    }

    /// Checks a request by its gRPC path and headers.
    pub fn check_http<B>(&self, req: &http::Request<B>) -> Result<Option<Principal>, Denied> {
        let scope = scope_for_path(req.uri().path());
        let auth = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        self.check(scope, auth)
    }

    /// A tonic interceptor enforcing one scope, for a service served on its own (e.g.
    /// `NodeServiceServer::with_interceptor(svc, auth.interceptor(Scope::Cluster))`). Not
    /// needed for services added to the node's server, which [`AuthLayer`] already covers.
    pub fn interceptor(
        self: &Arc<Self>,
        scope: Scope,
    ) -> impl Interceptor + Clone + Send + Sync + 'static {
        let auth = self.clone();
        move |mut req: Request<()>| {
            let header = req
                .metadata()
                .get("authorization")
                .map(|v| v.as_bytes().to_vec());
            match auth.check(Some(scope), header.as_deref()) {
                Ok(p) => {
                    if let Some(p) = p {
                        req.extensions_mut().insert(p);
                    }
                    Ok(req)
                }
                Err(d) => Err(d.status()),
            }
        }
    }
}

/// A tower layer that checks every request of the server against an [`Authenticator`] by
/// its path ([`ROUTES`]): `Server::builder().layer(AuthLayer::new(auth))`.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the server's routes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        futures::future::Ready<Result<http::Response<RB>, S::Error>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.auth.check_http(&req) {
            Ok(principal) => {
                if let Some(p) = principal {
                    req.extensions_mut().insert(p);
                }
                futures::future::Either::Right(self.inner.call(req))
            }
            Err(d) => {
                let reason = match d {
                    Denied::Unauthenticated => "unauthenticated",
                    Denied::PermissionDenied => "permission_denied",
                };
                metrics::counter!("depin_auth_denied_total", "reason" => reason).increment(1);
                futures::future::Either::Left(futures::future::ready(Ok(d.status().into_http())))
            }
        }
    }
}

/// Adds `authorization: Bearer <token>` to outgoing calls (nothing when built without a
/// token): `NodeServiceClient::with_interceptor(channel, BearerInterceptor::new(Some(t))?)`.
#[derive(Clone, Debug, Default)]
pub struct BearerInterceptor {
    value: Option<AsciiMetadataValue>,
}

impl BearerInterceptor {
    pub fn new(token: Option<&str>) -> anyhow::Result<BearerInterceptor> {
        let value = token
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse::<AsciiMetadataValue>()
                    .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot"))
            })
            .transpose()?;
        Ok(BearerInterceptor { value })
    }

    /// The interceptor of a `--cluster-token-file` (none: no header).
    pub fn from_file(path: Option<&Path>) -> anyhow::Result<BearerInterceptor> {
        let token = path.map(read_token_file).transpose()?;
        Self::new(token.as_deref())
    }

    /// Adds the header to a metadata map (for hand-built requests).
    pub fn apply(&self, md: &mut MetadataMap) {
        if let Some(v) = &self.value {
            md.insert("authorization", v.clone());
        }
    }
}

impl Interceptor for BearerInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        self.apply(req.metadata_mut());
        Ok(req)
    }
}

/// The security settings of a node (flags `--tls-*`, `--allow-plaintext`, `--auth-tokens`,
/// `--cluster-token-file`).
#[derive(Clone, Debug, Default)]
pub struct SecurityConfig {
    pub tls: Option<TlsFiles>,
    /// The CA trusted on node-to-node calls (default: the client CA).
    pub peer_ca: Option<PathBuf>,
    /// Serve plaintext on a non-loopback address.
    pub allow_plaintext: bool,
    pub auth_tokens: Option<PathBuf>,
    pub cluster_token_file: Option<PathBuf>,
}

/// Refuses plaintext on anything but loopback unless allowed; warns when allowed.
pub fn check_plaintext(addr: SocketAddr, cfg: &SecurityConfig) -> anyhow::Result<()> {
    if cfg.tls.is_some() || addr.ip().is_loopback() {
        return Ok(());
    }
    if !cfg.allow_plaintext {
        bail!(
            "refusing to serve plaintext gRPC on {addr}, which is not a loopback address: \
             give --tls-cert and --tls-key (TLS_CERT, TLS_KEY), or --allow-plaintext \
             (ALLOW_PLAINTEXT) to accept unencrypted traffic"
        );
    }
    warn!(addr = %addr, "--allow-plaintext: serving unencrypted gRPC on a non-loopback address");
    Ok(())
}

/// What the server needs from the security settings, loaded (and checked) before binding.
pub struct ServerSecurity {
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    pub auth: Arc<Authenticator>,
}

impl ServerSecurity {
    /// Loads certificates and tokens, applies the plaintext rule, warns about an open node on
    /// a non-loopback address.
    pub fn load(addr: SocketAddr, cfg: &SecurityConfig) -> anyhow::Result<ServerSecurity> {
        check_plaintext(addr, cfg)?;
        let tls = cfg.tls.as_ref().map(server_tls_config).transpose()?;
        let auth = Authenticator::from_files(
            cfg.auth_tokens.as_deref(),
            cfg.cluster_token_file.as_deref(),
        )?;
        if !addr.ip().is_loopback() && !auth.public_auth_on() {
            warn!(addr = %addr, "no --auth-tokens: anyone who reaches this address may ingest and query");
        }
        Ok(ServerSecurity {
            tls,
            auth: Arc::new(auth),
        })
    }
}

/// The `serve` flags of this module (flattened into `ServeArgs`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecurityArgs {
    /// TLS certificate chain (PEM) of the gRPC port; with --tls-key turns TLS on.
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) client certificates must chain to: mutual TLS, a client without a
    /// valid certificate cannot connect. Needs --tls-cert.
    #[arg(long, env = "TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// CA bundle (PEM) this node trusts when it calls the other nodes of its cluster (they
    /// serve TLS too; the name checked is the host of their advertised address). Defaults
    /// to --tls-client-ca. The node presents --tls-cert/--tls-key as its client certificate.
    #[arg(long, env = "TLS_PEER_CA", requires = "tls_cert")]
    pub tls_peer_ca: Option<PathBuf>,
    /// Serve plaintext gRPC on a non-loopback address (without TLS a node refuses to).
    #[arg(long, env = "ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,
    /// Tokens file: `<token> <scope>[,<scope>…]` lines (scopes: ingest, query, admin,
    /// cluster; `#` comments). Without it the public services need no token.
    #[arg(long, env = "AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,
    /// File with the token this node sends on node-to-node calls; accepted for scope
    /// `cluster`.
    #[arg(long, env = "CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
}

impl SecurityArgs {
    pub fn config(&self) -> SecurityConfig {
        SecurityConfig {
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                }),
                _ => None,
            },
            peer_ca: self.tls_peer_ca.clone().or(self.tls_client_ca.clone()),
            allow_plaintext: self.allow_plaintext,
            auth_tokens: self.auth_tokens.clone(),
            cluster_token_file: self.cluster_token_file.clone(),
        }
    }
}

/// A client's credentials and TLS (`query`, `simulate`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientSecurityArgs {
    /// Bearer token sent as `authorization: Bearer <token>`.
    #[arg(long, env = "TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust: TLS to the target (implied by an https:// target).
    #[arg(long, env = "TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a node that demands mutual TLS.
    #[arg(
        long,
        env = "TLS_CLIENT_CERT",
        global = true,
        requires = "tls_client_key"
    )]
    pub tls_client_cert: Option<PathBuf>,
    /// Key (PEM) of --tls-client-cert.
    #[arg(
        long,
        env = "TLS_CLIENT_KEY",
        global = true,
        requires = "tls_client_cert"
    )]
    pub tls_client_key: Option<PathBuf>,
    /// The name the node's certificate must carry (default: the target's host), e.g. a
    /// pod's DNS name when a probe connects to 127.0.0.1.
    #[arg(long, env = "TLS_SERVER_NAME", global = true)]
    pub tls_server_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaa-ingest";
    const Q: &str = "qqqqqqqqqqqqqqqq-query";
    const C: &str = "cccccccccccccccc-cluster";

    fn table() -> TokenTable {
        TokenTable::parse(
            "t",
            &format!("# tokens\n{A} ingest\n\n{Q}   query,admin  # scheduler\n"),
        )
        .unwrap()
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn parses_and_checks_scopes() {
        let auth = Authenticator::new(Some(table()), Some(C));
        let ok = |scope, t: &str| auth.check(Some(scope), Some(&bearer(t)));
        assert!(ok(Scope::Ingest, A).unwrap().is_some());
        assert_eq!(ok(Scope::Query, A), Err(Denied::PermissionDenied));
        assert!(ok(Scope::Query, Q).is_ok());
        assert!(ok(Scope::Admin, Q).is_ok());
        assert_eq!(ok(Scope::Cluster, Q), Err(Denied::PermissionDenied));
        assert!(ok(Scope::Cluster, C).is_ok());
        assert_eq!(ok(Scope::Ingest, C), Err(Denied::PermissionDenied));
        assert_eq!(
            ok(Scope::Ingest, "nope-nope-nope-nope"),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            auth.check(Some(Scope::Ingest), None),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            auth.check(Some(Scope::Ingest), Some(A.as_bytes())),
            Err(Denied::Unauthenticated),
            "the Bearer prefix is required"
        );
        assert_eq!(auth.check(None, None), Ok(None), "open paths");
    }

    #[test]
    fn off_without_tokens() {
        let auth = Authenticator::disabled();
        for s in Scope::ALL {
            assert_eq!(auth.check(Some(s), None), Ok(None));
        }
        let cluster_only = Authenticator::new(None, Some(C));
        assert_eq!(cluster_only.check(Some(Scope::Query), None), Ok(None));
        assert_eq!(
            cluster_only.check(Some(Scope::Cluster), None),
            Err(Denied::Unauthenticated)
        );
    }

    #[test]
    fn bad_files_name_the_line_and_not_the_token() {
        let cases = [
            ("ok-token-0123456789 ingest\nshort query\n", "line 2"),
            (
                "ok-token-0123456789 ingest,bogus\n",
                "unknown scope \"bogus\"",
            ),
            ("ok-token-0123456789\n", "line 1: expected"),
            ("ok-token-0123456789 ingest extra\n", "line 1: expected"),
            (
                "ok-token-0123456789 ingest\nok-token-0123456789 query\n",
                "line 2",
            ),
            ("# nothing\n", "no tokens"),
        ];
        for (text, want) in cases {
            let err = TokenTable::parse("f", text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains("ok-token-0123456789"), "{err}");
        }
    }

    #[test]
    fn path_table() {
        assert_eq!(scope_for_path("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            scope_for_path("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            scope_for_path("/depin.analytics.v1.IngestService/Ingest"),
            Some(Scope::Ingest)
        );
        assert_eq!(
            scope_for_path("/depin.analytics.internal.v1.NodeService/Forward"),
            Some(Scope::Cluster)
        );
        assert_eq!(scope_for_path("/x.Y/Z"), Some(Scope::Admin));
    }

    #[test]
    fn plaintext_rule() {
        let cfg = SecurityConfig::default();
        assert!(check_plaintext("127.0.0.1:1".parse().unwrap(), &cfg).is_ok());
        assert!(check_plaintext("[::1]:1".parse().unwrap(), &cfg).is_ok());
        let err = check_plaintext("0.0.0.0:9090".parse().unwrap(), &cfg).unwrap_err();
        assert!(err.to_string().contains("--allow-plaintext"), "{err}");
        let allowed = SecurityConfig {
            allow_plaintext: true,
            ..Default::default()
        };
        assert!(check_plaintext("0.0.0.0:9090".parse().unwrap(), &allowed).is_ok());
    }
}
