//! TLS for the gRPC port (rustls through tonic's `tls-ring` feature) and for clients.
//!
//! Server side: a certificate chain and its key in PEM (`--tls-cert`, `--tls-key`); with
//! `--tls-client-ca` the node also demands a client certificate signed by that CA (mutual
//! TLS) and refuses a handshake without one. Client side: [`client_tls_config`] trusts one CA
//! (PEM) and, for mutual TLS, presents a certificate and key; node-to-node channels and the
//! CLI use it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The PEM files of a node's TLS identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle (PEM) client certificates must chain to; `Some` turns on mutual TLS.
    pub client_ca: Option<PathBuf>,
}

fn read_pem(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        anyhow::bail!("the {what} {} is not a PEM file", path.display());
    }
    Ok(bytes)
}

/// The server's rustls configuration from PEM files. Errors name the file.
pub fn server_tls_config(files: &TlsFiles) -> anyhow::Result<ServerTlsConfig> {
    let cert = read_pem("TLS certificate", &files.cert)?;
    let key = read_pem("TLS key", &files.key)?;
    let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &files.client_ca {
        cfg = cfg
            .client_ca_root(Certificate::from_pem(read_pem("client CA", ca)?))
            .client_auth_optional(false);
    }
    Ok(cfg)
}

/// A client's TLS configuration: trust `ca` (PEM; without it the channel has no trust
/// anchors and only works against… nothing, so pass one), and present `identity`
/// (certificate chain, key; PEM) when the server demands mutual TLS.
///
/// For node-to-node channels: `Endpoint::from_shared("https://host:port")?.tls_config(
/// client_tls_config(Some(ca), Some((cert, key)))?)`. The server name checked is the URL's
/// host unless `domain_name` is set on the returned config.
pub fn client_tls_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<ClientTlsConfig> {
    let mut cfg = ClientTlsConfig::new();
    if let Some(ca) = ca {
        cfg = cfg.ca_certificate(Certificate::from_pem(read_pem("CA certificate", ca)?));
    }
    if let Some((cert, key)) = identity {
        cfg = cfg.identity(Identity::from_pem(
            read_pem("client certificate", cert)?,
            read_pem("client key", key)?,
        ));
    }
    Ok(cfg)
}
