//! TLS for the source connections (SQL and replication), with libpq's
//! meaning of `sslmode`, on rustls with the aws-lc-rs provider:
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | – |
//! | `prefer` (default) | if the server offers TLS | only when a root certificate file exists (as `require`) |
//! | `require` | yes | chain only, when a root certificate file exists (`sslrootcert`, or libpq's `~/.postgresql/root.crt`); otherwise not at all |
//! | `verify-ca` | yes | chain up to `sslrootcert` |
//! | `verify-full` | yes | chain up to `sslrootcert`, and the host name (or IP address) |
//!
//! A server that refuses TLS under `require` or stricter, and a certificate
//! that fails its check, are [`Error::Tls`] (for the replication connection)
//! or a TLS error inside [`Error::Postgres`] (for SQL): permanent, since
//! retrying does not change a certificate.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::protocol::{ReadHalf, WriteHalf};
use crate::{Error, Result};

/// libpq's `sslmode` (`allow` is not supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub(crate) fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// A server that refuses TLS is an error, not a plaintext connection.
    pub(crate) fn demands_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// The mode tokio-postgres runs the SSLRequest exchange in; checking
    /// the certificate is the connector's job.
    pub(crate) fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self {
            SslMode::Disable => T::Disable,
            SslMode::Prefer => T::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => T::Require,
        }
    }
}

/// How the server's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verify {
    Nothing,
    /// Signed by a root in the file; any name.
    Chain(PathBuf),
    /// Signed by a root in the file, for the host connected to.
    Full(PathBuf),
}

/// A DSN's TLS settings.
#[derive(Clone, Debug)]
pub(crate) struct TlsSettings {
    mode: SslMode,
    verify: Verify,
}

impl TlsSettings {
    /// Resolves libpq's rules for `mode` and `sslrootcert`.
    pub(crate) fn new(mode: SslMode, root_cert: Option<PathBuf>) -> Result<TlsSettings, String> {
        if root_cert.as_deref() == Some(Path::new("system")) {
            return Err("sslrootcert=system is not supported: give the path of a file with the CA certificates".into());
        }
        // libpq's default root certificate file.
        let root = root_cert.clone().or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
        });
        let verify = match mode {
            SslMode::Disable => Verify::Nothing,
            SslMode::Prefer | SslMode::Require => match root {
                Some(r) if r.exists() => Verify::Chain(r),
                _ => Verify::Nothing,
            },
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let Some(r) = root_cert.or(root.filter(|r| r.exists())) else {
                    return Err(format!(
                        "sslmode={} checks the server's certificate and needs sslrootcert (a file of the CA certificates that signed it)",
                        mode.as_str()
                    ));
                };
                if mode == SslMode::VerifyCa {
                    Verify::Chain(r)
                } else {
                    Verify::Full(r)
                }
            }
        };
        Ok(TlsSettings { mode, verify })
    }

    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }

    /// The root certificate file the server's certificate is checked
    /// against, if any.
    #[cfg(test)]
    pub(crate) fn root_cert(&self) -> Option<&Path> {
        match &self.verify {
            Verify::Nothing => None,
            Verify::Chain(file) | Verify::Full(file) => Some(file),
        }
    }

    /// The rustls configuration; `None` with `sslmode=disable`.
    pub(crate) fn client_config(&self) -> Result<Option<Arc<ClientConfig>>> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("TLS protocol versions: {e}")))?;
        let mut config = match &self.verify {
            Verify::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    provider,
                    chain: None,
                }))
                .with_no_client_auth(),
            Verify::Full(file) => builder
                .with_root_certificates(roots(file, self.mode)?)
                .with_no_client_auth(),
            Verify::Chain(file) => {
                let verifier = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(file, self.mode)?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| Error::Config(format!("sslrootcert {}: {e}", file.display())))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Lenient {
                        provider,
                        chain: Some(verifier),
                    }))
                    .with_no_client_auth()
            }
        };
        // What libpq 17 sends; servers before 17 ignore it, and 17 needs it
        // for `sslnegotiation=direct`.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Some(Arc::new(config)))
    }

    /// The connector for tokio-postgres (SQL connections).
    pub(crate) fn make_connect(&self) -> Result<MakeRustls> {
        Ok(MakeRustls(self.client_config()?))
    }
}

/// The CA certificates of a PEM file.
fn roots(file: &Path, mode: SslMode) -> Result<RootCertStore> {
    let unreadable = |why: String| {
        Error::Config(format!(
            "sslrootcert {} (sslmode={}): {why}",
            file.display(),
            mode.as_str()
        ))
    };
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(file).map_err(|e| unreadable(e.to_string()))? {
        let cert = cert.map_err(|e| unreadable(e.to_string()))?;
        store
            .add(cert)
            .map_err(|e| unreadable(format!("not a usable CA certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(unreadable("holds no PEM certificate".into()));
    }
    Ok(store)
}

/// The two checks rustls has no setting for. Without a chain verifier it
/// accepts any certificate (`prefer` and `require` without a root file:
/// encrypted against eavesdropping, not against a man in the middle, as
/// libpq does). With one (`verify-ca`), the chain must lead to a trusted
/// root and the name is not checked: rustls checks the chain before the
/// name, so a name error means the chain was good. The handshake signatures
/// are checked either way, with the provider's algorithms.
#[derive(Debug)]
struct Lenient {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The name the certificate is checked against (and sent as SNI): a DNS
/// name or an IP address.
fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a host name for TLS: {e}"),
        )
    })
}

/// Whether an I/O error of a handshake is rustls refusing the server (a
/// certificate or protocol error), rather than the connection failing.
fn is_rejection(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// Whether a tokio-postgres connection error is TLS that cannot work as
/// configured: the server refused TLS that `sslmode` demands, or the
/// certificate was rejected. Retrying does not cure either.
pub(crate) fn tls_rejected(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            // The connector's own error: a rejection, or a connection lost
            // during the handshake (transient).
            return is_rejection(io);
        }
        source = s.source();
    }
    // tokio-postgres' own TLS errors ("server does not support TLS", "no
    // hostname provided") carry no I/O error; it has no public error kind,
    // so its message is the only sign.
    e.to_string().starts_with("error performing TLS handshake")
}

/// Turns a plain replication connection into what `sslmode` asks for:
/// the SSLRequest exchange (unless `direct`), then the TLS handshake.
pub(crate) async fn negotiate(
    mut tcp: TcpStream,
    settings: &TlsSettings,
    host: &str,
    direct: bool,
    target: &str,
) -> Result<(ReadHalf, WriteHalf)> {
    let plain = |tcp: TcpStream| -> (ReadHalf, WriteHalf) {
        let (r, w) = tcp.into_split();
        (Box::new(r), Box::new(w))
    };
    let Some(config) = settings.client_config()? else {
        return Ok(plain(tcp));
    };
    let lost = |source| Error::Connect {
        target: target.to_string(),
        source,
    };
    if !direct {
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await.map_err(lost)?;
        match tcp.read_u8().await.map_err(lost)? {
            b'S' => {}
            b'N' if !settings.mode.demands_tls() => return Ok(plain(tcp)),
            b'N' => {
                return Err(Error::Tls {
                    target: target.to_string(),
                    source: io::Error::other(format!(
                        "the server does not accept TLS, which sslmode={} demands",
                        settings.mode.as_str()
                    )),
                });
            }
            other => {
                return Err(Error::Protocol(format!(
                    "{target}: unexpected answer {:?} to SSLRequest",
                    other as char
                )));
            }
        }
    }
    let name = server_name(host).map_err(|source| Error::Tls {
        target: target.to_string(),
        source,
    })?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|source| {
            if is_rejection(&source) {
                Error::Tls {
                    target: target.to_string(),
                    source,
                }
            } else {
                lost(source)
            }
        })?;
    let (r, w) = tokio::io::split(stream);
    Ok((Box::new(r), Box::new(w)))
}

/// tokio-postgres' TLS connector over tokio-rustls. `None` inside only with
/// `sslmode=disable`, where tokio-postgres never asks for TLS.
#[derive(Clone)]
pub(crate) struct MakeRustls(Option<Arc<ClientConfig>>);

impl fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MakeRustls")
            .field(&self.0.is_some())
            .finish()
    }
}

/// One connection's connector: the configuration and the server's name.
pub(crate) struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
    name: io::Result<ServerName<'static>>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        // Called for Unix-socket hosts too, with an empty name, where
        // PostgreSQL never does TLS: fail only if a handshake is attempted.
        Ok(RustlsConnect {
            config: self.0.clone(),
            name: server_name(domain),
        })
    }
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self
                .config
                .ok_or_else(|| io::Error::other("TLS asked for with sslmode=disable"))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(self.name?, stream)
                .await?;
            Ok(RustlsStream(stream))
        })
    }
}

/// A TLS connection to PostgreSQL for tokio-postgres.
pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// No channel binding: SCRAM runs without it (`SCRAM-SHA-256`, not
    /// `-PLUS`), as with libpq's `channel_binding=prefer` on a server whose
    /// certificate hash it cannot compute.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_libpq() {
        let v = |mode, root: Option<&str>| {
            TlsSettings::new(mode, root.map(PathBuf::from)).map(|s| s.verify)
        };
        let existing = std::env::temp_dir();
        let existing_str = existing.to_str().unwrap();
        assert_eq!(
            v(SslMode::Require, Some("/no/such/file")).unwrap(),
            Verify::Nothing
        );
        assert_eq!(
            v(SslMode::Require, Some(existing_str)).unwrap(),
            Verify::Chain(existing.clone())
        );
        assert_eq!(
            v(SslMode::VerifyCa, Some("/ca.pem")).unwrap(),
            Verify::Chain("/ca.pem".into())
        );
        assert_eq!(
            v(SslMode::VerifyFull, Some("/ca.pem")).unwrap(),
            Verify::Full("/ca.pem".into())
        );
        assert!(SslMode::parse("allow").is_err());
        assert!(SslMode::Require.demands_tls() && !SslMode::Prefer.demands_tls());
    }

    #[test]
    fn without_a_chain_any_certificate_passes_with_the_providers_signatures() {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let lenient = Lenient {
            provider: provider.clone(),
            chain: None,
        };
        let name = ServerName::try_from("db1").unwrap();
        let garbage = CertificateDer::from(vec![1, 2, 3]);
        assert!(
            lenient
                .verify_server_cert(&garbage, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        assert_eq!(
            lenient.supported_verify_schemes(),
            provider
                .signature_verification_algorithms
                .supported_schemes()
        );
    }

    #[test]
    fn a_missing_root_file_is_a_clear_error() {
        let s = TlsSettings::new(SslMode::VerifyFull, Some("/no/such/ca.pem".into())).unwrap();
        let e = s.client_config().unwrap_err().to_string();
        assert!(
            e.contains("/no/such/ca.pem") && e.contains("verify-full"),
            "{e}"
        );
    }
}
