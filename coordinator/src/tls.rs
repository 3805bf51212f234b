//! TLS on the gRPC ports: certificates and keys from PEM files, reloaded without a restart,
//! handshakes off the accept path, and which cluster node a peer certificate names.
//!
//! ```text
//!   TcpListener ─accept─▶ spawn handshake (bounded: HANDSHAKES_MAX at once, HANDSHAKE_MS_MAX each)
//!                              │ the ServerConfig current at accept time (reload swaps it)
//!                              ▼
//!                         TlsStream ─▶ channel ─▶ tonic (peer certificates in the request)
//! ```
//!
//! A client certificate is optional on the client port (tokens authenticate principals); when
//! one is presented it must chain to the cluster CA. On the peer port (`--peer-listen`) it is
//! required: a handshake without one is refused (mutual TLS). The Raft RPCs, on either port,
//! need one that is valid for `node-<id>.peer.qm` with `id` a member of the cluster
//! (`api/auth.rs`): `qm cert node` puts that name in every node certificate and in no other.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::Port;

/// Most TLS handshakes in progress at once; further connections wait to be accepted.
pub const HANDSHAKES_MAX: usize = 256;
/// Longest a handshake may take before the connection is dropped.
pub const HANDSHAKE_MS_MAX: u64 = 10_000;
/// Largest PEM file read.
const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// The DNS name a node certificate carries for node `id` (never a real host name).
pub fn node_dns_name(id: u64) -> String {
    format!("node-{id}.peer.qm")
}

/// Where a node's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster CA (PEM): peers' and clients' certificates must chain to it.
    pub ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    let err = |message: String| TlsError::File { path: path.display().to_string(), message };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > PEM_FILE_BYTES_MAX {
        return Err(err(format!("is {} bytes, at most {PEM_FILE_BYTES_MAX} allowed", meta.len())));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

/// The certificates in a PEM file (at least one).
pub fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes).collect::<Result<_, _>>().map_err(|e| {
        TlsError::File { path: path.display().to_string(), message: format!("not PEM certificates: {e}") }
    })?;
    if certs.is_empty() {
        return Err(TlsError::File { path: path.display().to_string(), message: "holds no certificate".into() });
    }
    Ok(certs)
}

fn key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        message: format!("not a PEM private key: {e}"),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA's certificates as trust roots.
pub fn roots(ca: &std::path::Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).map_err(|e| TlsError::File { path: ca.display().to_string(), message: e.to_string() })?;
    }
    Ok(roots)
}

/// The server side of a port: a client certificate, if presented, must chain to the CA;
/// `mutual`: one must be presented.
fn server_config(files: &TlsFiles, mutual: bool) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let roots = Arc::new(roots(&files.ca)?);
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider());
    let builder = if mutual { builder } else { builder.allow_unauthenticated() };
    let verifier = builder.build().map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| TlsError::Config(format!("{} with {}: {e}", files.cert.display(), files.key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The configurations in force: the client port's and the peer port's (mutual TLS).
#[derive(Debug)]
struct Configs {
    client: Arc<rustls::ServerConfig>,
    peer: Arc<rustls::ServerConfig>,
}

/// A node's server-side TLS: the configurations in force, swapped by [`ServerTls::reload`].
#[derive(Clone, Debug)]
pub struct ServerTls {
    files: TlsFiles,
    current: Arc<RwLock<Configs>>,
}

fn configs(files: &TlsFiles) -> Result<Configs, TlsError> {
    Ok(Configs { client: server_config(files, false)?, peer: server_config(files, true)? })
}

impl ServerTls {
    /// Loads the files; fails naming the file that is missing or malformed.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let configs = configs(&files)?;
        Ok(ServerTls { files, current: Arc::new(RwLock::new(configs)) })
    }

    /// Reads the files again; connections accepted from now on, on either port, use them. On
    /// an error the configurations in force stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = configs(&self.files)?;
        *self.current.write().expect("tls lock") = configs;
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// TLS connections accepted on `listener`, serving `port`, each handshaken on its own task
    /// (bounded in number and time), until the returned stream is dropped.
    pub fn incoming(
        &self,
        listener: TcpListener,
        port: Port,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = mpsc::channel(64);
        let current = self.current.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(HANDSHAKES_MAX));
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else { return };
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let _ = stream.set_nodelay(true);
                let config = {
                    let configs = current.read().expect("tls lock");
                    match port {
                        Port::Client => configs.client.clone(),
                        Port::Peer => configs.peer.clone(),
                    }
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_millis(HANDSHAKE_MS_MAX), acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake refused"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// The DNS name a client certificate carries for principal `name` (`qm cert client`):
/// `<name>.client.qm`. A principal is taken from a certificate only by this name, so a node's
/// certificate names no principal.
pub const CLIENT_DNS_SUFFIX: &str = ".client.qm";

/// The principal a client's certificate names, if any: the leaf's first subject-alternative
/// DNS name ending in [`CLIENT_DNS_SUFFIX`] (the chain was verified against the CA by the
/// handshake).
pub fn principal_of(chain: &[CertificateDer<'static>]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let leaf = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(dns) => dns
            .strip_suffix(CLIENT_DNS_SUFFIX)
            .filter(|p| !p.is_empty() && p.len() <= qm_shared::limits::TOKEN_NAME_LEN_MAX_BYTES)
            .map(str::to_string),
        _ => None,
    })
}

/// Whether `chain` (a peer's certificates, already verified against the CA by the
/// handshake) is valid for node `id`'s name.
pub fn names_node(chain: &[CertificateDer<'static>], id: u64) -> bool {
    let Some(leaf) = chain.first() else { return false };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else { return false };
    let Ok(name) = ServerName::try_from(node_dns_name(id)) else { return false };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The client side of a node's TLS: trust the cluster CA, present the node's certificate.
pub fn client_tls(files: &TlsFiles) -> Result<qm_shared::client::ClientTls, TlsError> {
    let (ca, cert, key) = (read(&files.ca)?, read(&files.cert)?, read(&files.key)?);
    Ok(qm_shared::client::ClientTls::new(&ca, Some((&cert, &key))))
}
