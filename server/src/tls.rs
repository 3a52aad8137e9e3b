//! TLS for the client and the peer port (`--tls-cert`, `--tls-key`, `--tls-ca`), with rustls.
//!
//! One certificate and key serve both ports. What a member dials (its peers' ports, and the
//! leader's client port when it hands a request on) it checks against the CA bundle of
//! `--tls-ca`, or, without one, against the certificate itself, which suits one self-signed
//! certificate shared by the cluster. A connection that does not speak TLS, or presents a
//! certificate the CA did not sign, gets no further than the handshake.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A connection's byte stream, plain TCP or TLS over it, for code that handles both
/// (the peer transport, the events relay) as `Box<dyn Io>`.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the certificate, its key and the CA are (the `serve` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA bundle that signs every member's certificate (default: `cert` itself).
    pub ca: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: String },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{path}: the certificate and key do not make a TLS server: {error}")]
    Server { path: PathBuf, error: String },
    #[error("{path}: not a CA certificate rustls accepts: {error}")]
    Ca { path: PathBuf, error: String },
    #[error(
        "{path}: peers would refuse this certificate: {error} (a self-signed certificate shared by \
         the cluster must be an end-entity one, basicConstraints CA:FALSE; or sign each member's with \
         a CA and pass it as --tls-ca)"
    )]
    Untrusted { path: PathBuf, error: String },
}

/// Whether a peer that trusts `roots` accepts `chain` (whatever name it dials: the name is
/// checked per connection).
fn check_chain(chain: &[CertificateDer<'static>], roots: &Arc<rustls::RootCertStore>) -> Result<(), String> {
    let verifier =
        rustls::client::WebPkiServerVerifier::builder(roots.clone()).build().map_err(|e| e.to_string())?;
    let Some((end, intermediates)) = chain.split_first() else { return Err("no certificate".into()) };
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let now = rustls::pki_types::UnixTime::now();
    match rustls::client::danger::ServerCertVerifier::verify_server_cert(
        &*verifier,
        end,
        intermediates,
        &name,
        &[],
        now,
    ) {
        Ok(_) | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)) => Ok(()),
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
            ..
        })) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// A node's TLS: what it serves with and what it trusts.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
    /// The CA certificates, for the client that hands requests on.
    roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("roots", &self.roots.len()).finish_non_exhaustive()
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |error: String| TlsError::Read { path: path.to_path_buf(), error };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

impl Tls {
    /// Loads the files and builds both sides.
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, TlsError> {
        let chain = certificates(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| TlsError::Read { path: files.key.clone(), error: format!("no private key: {e}") })?;
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key)
            .map_err(|e| TlsError::Server { path: files.cert.clone(), error: e.to_string() })?;
        let ca_path = files.ca.as_ref().unwrap_or(&files.cert);
        let roots = match &files.ca {
            Some(ca) => certificates(ca)?,
            None => chain.clone(),
        };
        let mut store = rustls::RootCertStore::empty();
        for cert in &roots {
            store
                .add(cert.clone())
                .map_err(|e| TlsError::Ca { path: ca_path.clone(), error: e.to_string() })?;
        }
        let store = Arc::new(store);
        check_chain(&chain, &store)
            .map_err(|error| TlsError::Untrusted { path: files.cert.clone(), error })?;
        let client = rustls::ClientConfig::builder().with_root_certificates(store).with_no_client_auth();
        Ok(Arc::new(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            roots,
        }))
    }

    /// The CA certificates, as the client that hands requests on trusts them.
    pub fn reqwest_roots(&self) -> Vec<reqwest::Certificate> {
        self.roots.iter().filter_map(|c| reqwest::Certificate::from_der(c).ok()).collect()
    }

    /// Dials TLS over `stream` to `addr` (`host:port`): the certificate must name `host`.
    pub async fn connect(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        dial(&self.connector, addr, stream).await
    }

    /// Answers TLS on an accepted `stream`.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake"))?
    }
}

/// Dials TLS with `connector` over `stream` to `addr` (`host:port`): the certificate must
/// name `host`.
pub async fn dial(
    connector: &TlsConnector,
    addr: &str,
    stream: TcpStream,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?}: {e}")))?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("TLS handshake with {addr}")))?
}

/// A WebSocket stream over plain TCP or TLS.
pub type WsStream = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// Opens the WebSocket of `request` (a `ws://` or `wss://` URL with its headers): dials
/// its host, over TLS with `connector` for `wss://` (without one, a `wss://` URL is
/// refused), and makes the upgrade. What the CLI's `events` and a member's events relay
/// share; the error says which step failed.
pub async fn dial_ws(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    connector: Option<&TlsConnector>,
) -> Result<WsStream, String> {
    let uri = request.uri().clone();
    let host = uri.host().ok_or_else(|| format!("{uri} names no host"))?;
    let secure = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => return Err(format!("{uri} is not a ws:// or wss:// URL ({other:?})")),
    };
    let addr = format!("{host}:{}", uri.port_u16().unwrap_or(if secure { 443 } else { 80 }));
    let tcp = TcpStream::connect(&addr).await.map_err(|e| format!("dialling {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = match (secure, connector) {
        (true, Some(connector)) => Box::new(dial(connector, &addr, tcp).await.map_err(|e| e.to_string())?),
        (true, None) => return Err(format!("{addr} serves TLS, and there is nothing to trust it with")),
        (false, _) => Box::new(tcp),
    };
    let (ws, _) = tokio_tungstenite::client_async(request, stream).await.map_err(|e| e.to_string())?;
    Ok(ws)
}

/// What a client (the CLI) dials an `https://` node with: trusting the PEM bundle `ca`
/// (`--ca`), or without it the system's roots.
pub fn client_connector(ca: Option<&Path>) -> Result<TlsConnector, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates(path)? {
                store
                    .add(cert)
                    .map_err(|e| TlsError::Ca { path: path.to_path_buf(), error: e.to_string() })?;
            }
        }
        None => {
            // Unreadable system certificates are skipped, as reqwest does: the handshake
            // then says the node's certificate is not trusted.
            let (added, _) = store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            tracing::debug!(roots = added, "trusting the system's roots");
        }
    }
    let client = rustls::ClientConfig::builder().with_root_certificates(store).with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(client)))
}

/// The client port over TLS, for `axum::serve`: accepts TCP, and runs each handshake in a
/// task of its own, so a slow or silent client holds up nobody else.
pub struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn spawn(listener: TcpListener, tls: Arc<Tls>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, accepted) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let (stream, remote) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a client connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tls.accept(stream).await {
                        Ok(s) => {
                            let _ = tx.send((s, remote)).await;
                        }
                        Err(e) => tracing::debug!(%remote, error = %e, "a client's TLS handshake failed"),
                    }
                });
            }
        });
        Ok(Self { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The accepting task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
