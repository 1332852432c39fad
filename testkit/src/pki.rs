//! Per-run PKI shaped like Istio's: one mesh CA (O=cluster.local), workload certificates with an empty
//! Subject and a single critical URI SAN `spiffe://<td>/ns/<ns>/sa/<sa>`, and a gateway certificate.
//! Everything is generated in memory (rcgen) and written into a temporary directory for Envoy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// DNS SAN of the gateway certificate; clients verify the gateway against this name (not against the SNI
/// they send, which names the external host), like a sidecar verifies the gateway's identity.
pub const GATEWAY_DNS: &str = "istio-egressgateway.istio-system.svc.cluster.local";
pub const GATEWAY_SPIFFE: &str =
    "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account";

/// The workload identities the Istio egress walkthrough uses, plus the identity edge cases.
pub const DEFAULT_SLEEP: &str = "default/sleep";
pub const OTHERNS_SLEEP: &str = "otherns/sleep";
pub const SLEEP_GOOGLE: &str = "otherns/sleep-google";
pub const SLEEP_YAHOO: &str = "otherns/sleep-yahoo";
/// Same namespace/SA as default/sleep, but issued for a foreign trust domain (same CA: a federated or
/// misconfigured mesh), so only the trust-domain check can stop it.
pub const FOREIGN_TD: &str = "foreign-td";
/// A CA-signed certificate without any URI SAN (Subject CN only): Envoy's principal becomes the Subject.
pub const NO_URI_SAN: &str = "no-uri-san";

/// Every workload the PKI issues a certificate for: the walkthrough's four, then the identity edge cases.
pub const WORKLOADS: [&str; 6] = [
    DEFAULT_SLEEP,
    OTHERNS_SLEEP,
    SLEEP_GOOGLE,
    SLEEP_YAHOO,
    FOREIGN_TD,
    NO_URI_SAN,
];

pub fn spiffe_of(workload: &str) -> Option<String> {
    match workload {
        FOREIGN_TD => Some("spiffe://evil.example/ns/default/sa/sleep".to_owned()),
        NO_URI_SAN => None,
        w => {
            let (ns, sa) = w.split_once('/').expect("workload is ns/sa");
            Some(format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"))
        }
    }
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_der: CertificateDer<'static>,
    pub workloads: BTreeMap<&'static str, Identity>,
}

fn leaf_params(spiffe: Option<&str>, dns: &[&str], cn: Option<&str>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new(); // Istio workload certs have an empty Subject
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    p.distinguished_name = dn;
    let mut sans = Vec::new();
    if let Some(uri) = spiffe {
        sans.push(SanType::URI(uri.try_into().expect("ia5 uri")));
    }
    for d in dns {
        sans.push(SanType::DnsName((*d).try_into().expect("ia5 dns")));
    }
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    p
}

fn sign(params: &CertificateParams, issuer: &Issuer<'_, KeyPair>) -> Identity {
    let key = KeyPair::generate().expect("keygen");
    let cert = params.signed_by(&key, issuer).expect("sign");
    Identity {
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

impl Pki {
    /// Generates the CA, the gateway certificate and all workload certificates, and writes
    /// `ca.crt`, `gateway.{crt,key}` and `<ns>_<sa>.{crt,key}` into `dir`.
    pub fn generate(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir certs");
        let mut ca_params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "cluster.local");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("ca keygen");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca self-sign");
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).expect("write ca");
        let issuer = Issuer::new(ca_params, ca_key);

        let gw = sign(
            &leaf_params(Some(GATEWAY_SPIFFE), &[GATEWAY_DNS], None),
            &issuer,
        );
        std::fs::write(dir.join("gateway.crt"), &gw.cert_pem).expect("write gw crt");
        std::fs::write(dir.join("gateway.key"), &gw.key_pem).expect("write gw key");

        let mut workloads = BTreeMap::new();
        for w in WORKLOADS {
            let spiffe = spiffe_of(w);
            let cn = if w == NO_URI_SAN {
                Some("legacy-client")
            } else {
                None
            };
            let id = sign(&leaf_params(spiffe.as_deref(), &[], cn), &issuer);
            let base = w.replace('/', "_");
            std::fs::write(dir.join(format!("{base}.crt")), &id.cert_pem).expect("write crt");
            std::fs::write(dir.join(format!("{base}.key")), &id.key_pem).expect("write key");
            workloads.insert(w, id);
        }
        Self {
            dir: dir.to_owned(),
            ca_der: ca_cert.der().clone(),
            workloads,
        }
    }

    /// The PEM files of `workload`'s certificate and key, for clients that are separate programs.
    pub fn files(&self, workload: &str) -> (PathBuf, PathBuf) {
        assert!(
            self.workloads.contains_key(workload),
            "unknown workload {workload}"
        );
        let base = workload.replace('/', "_");
        (
            self.dir.join(format!("{base}.crt")),
            self.dir.join(format!("{base}.key")),
        )
    }

    /// The mesh CA certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// rustls client config presenting `workload`'s certificate and verifying the gateway as
    /// [`GATEWAY_DNS`] whatever SNI is sent.
    pub fn client_config(&self, workload: &str, alpn: &[&str]) -> Arc<ClientConfig> {
        let id = self
            .workloads
            .get(workload)
            .unwrap_or_else(|| panic!("unknown workload {workload}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("add ca");
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("verifier");
        let verifier = GatewayVerifier {
            inner,
            name: ServerName::try_from(GATEWAY_DNS.to_owned()).expect("gw name"),
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone()));
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(vec![id.cert_der.clone()], key)
            .expect("client auth cert");
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(cfg)
    }
}

/// Verifies the gateway's chain against the mesh CA and its name against [`GATEWAY_DNS`], independent of
/// the SNI the client sends (Istio sidecars verify the gateway's SAN, not the external host name).
#[derive(Debug)]
struct GatewayVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for GatewayVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
