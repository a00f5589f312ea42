//! Per-run certificates for etcd's mutual TLS, written as PEM files (keys PKCS#8).
//!
//! Go and rustls both ignore the CN, so the server certificate carries IP SANs; rustls also
//! insists on `CA:TRUE` for the CA and `CA:FALSE` for leaves, so both are explicit.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tempfile::TempDir;

/// A name every server certificate also carries, so a test can reach a server through DNS
/// (e.g. SRV discovery, with a [`crate::DnsStandIn`] resolving it); `.test` is reserved
/// (RFC 2606), so it can never name a real host.
pub const SERVER_DNS_NAME: &str = "server.testkit.test";

/// A CA, a server certificate, a client certificate and a wrong client identity (signed by
/// another CA), in a temporary directory removed on drop.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// Generates everything. The server certificate's SANs are `IP:127.0.0.1`,
    /// `DNS:localhost`, [`SERVER_DNS_NAME`] and `server_ips`.
    pub fn generate(server_ips: &[IpAddr]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("testkit-pki.").tempdir()?;
        let pki = Self { dir };

        let ca = pki.ca("testkit-ca", "ca")?;
        let mut sans = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into()?),
            SanType::DnsName(SERVER_DNS_NAME.try_into()?),
        ];
        sans.extend(server_ips.iter().copied().map(SanType::IpAddress));
        let both = [
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        pki.leaf("etcd-server", sans, &both, &ca, "server")?;
        pki.leaf(
            "calico-cni",
            vec![],
            &[ExtendedKeyUsagePurpose::ClientAuth],
            &ca,
            "client",
        )?;

        let wrong_ca = pki.ca("testkit-wrong-ca", "wrong-ca")?;
        pki.leaf(
            "intruder",
            vec![],
            &[ExtendedKeyUsagePurpose::ClientAuth],
            &wrong_ca,
            "wrong",
        )?;
        Ok(pki)
    }

    /// The directory holding all files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA that signed the server and client certificates.
    pub fn ca_path(&self) -> PathBuf {
        self.file("ca.crt")
    }

    /// Server certificate (`serverAuth` + `clientAuth`, etcd uses it as a client of itself).
    pub fn server_cert_path(&self) -> PathBuf {
        self.file("server.crt")
    }

    /// Server private key.
    pub fn server_key_path(&self) -> PathBuf {
        self.file("server.key")
    }

    /// Client certificate signed by [`Pki::ca_path`].
    pub fn client_cert_path(&self) -> PathBuf {
        self.file("client.crt")
    }

    /// Client private key.
    pub fn client_key_path(&self) -> PathBuf {
        self.file("client.key")
    }

    /// A client certificate signed by a different CA: the server must refuse it.
    pub fn wrong_cert_path(&self) -> PathBuf {
        self.file("wrong.crt")
    }

    /// The key of [`Pki::wrong_cert_path`].
    pub fn wrong_key_path(&self) -> PathBuf {
        self.file("wrong.key")
    }

    /// The CA that signed the wrong client certificate.
    pub fn wrong_ca_path(&self) -> PathBuf {
        self.file("wrong-ca.crt")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A self-signed CA written as `<stem>.crt`; returns what signs leaves.
    fn ca(&self, cn: &str, stem: &str) -> Result<Issuer<'static, KeyPair>> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        self.write(stem, &cert.pem(), None)?;
        Ok(Issuer::new(params, key))
    }

    /// A leaf signed by `issuer`, written as `<stem>.crt` and `<stem>.key`.
    fn leaf(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        usages: &[ExtendedKeyUsagePurpose],
        issuer: &Issuer<'_, KeyPair>,
        stem: &str,
    ) -> Result<()> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, issuer)?;
        self.write(stem, &cert.pem(), Some(&key.serialize_pem()))
    }

    fn write(&self, stem: &str, cert_pem: &str, key_pem: Option<&str>) -> Result<()> {
        let crt = self.file(&format!("{stem}.crt"));
        fs::write(&crt, cert_pem).with_context(|| format!("writing {}", crt.display()))?;
        if let Some(key_pem) = key_pem {
            let key = self.file(&format!("{stem}.key"));
            fs::write(&key, key_pem).with_context(|| format!("writing {}", key.display()))?;
        }
        Ok(())
    }
}
