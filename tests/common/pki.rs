//! Certificates for the TLS tests, made with rcgen: a CA, a node certificate for
//! localhost / 127.0.0.1 (server and client use) and a collector's client certificate.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// A CA, a server certificate for localhost / 127.0.0.1 and a client certificate.
    pub fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "depin test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, eku: Vec<ExtendedKeyUsagePurpose>, cn: &str| {
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = eku;
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        // a node's certificate serves its port and identifies it on calls to other nodes
        let (server_pem, server_key_pem) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            "node",
        );
        let (client_pem, client_key_pem) = leaf(
            vec!["collector".into()],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            "collector",
        );
        let w = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            ca: w("ca.pem", &ca_cert.pem()),
            server_cert: w("server.pem", &server_pem),
            server_key: w("server.key", &server_key_pem),
            client_cert: w("client.pem", &client_pem),
            client_key: w("client.key", &client_key_pem),
            dir,
        }
    }

    pub fn server_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            s(&self.server_cert).into(),
            "--tls-key".into(),
            s(&self.server_key).into(),
        ]
    }

    pub fn client_tls(&self, with_cert: bool) -> ClientTlsConfig {
        let mut cfg = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&self.ca).unwrap()));
        if with_cert {
            cfg = cfg.identity(Identity::from_pem(
                std::fs::read(&self.client_cert).unwrap(),
                std::fs::read(&self.client_key).unwrap(),
            ));
        }
        cfg
    }
}
