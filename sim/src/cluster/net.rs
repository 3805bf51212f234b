//! The transport seam, simulated: tonic over turmoil's TCP.
//!
//! ```text
//!   Connector::new(|endpoint| endpoint.connect_with_connector_lazy(dial))   client side
//!   serve_incoming(node, accept(listener), …)                               server side
//! ```
//!
//! Nothing here changes what goes over the wire: the real tonic/hyper/h2 stacks run on both
//! ends, only the socket is turmoil's. Must be used inside a turmoil host.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use qm_shared::client::Connector;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::Uri;

/// The gRPC port every simulated coordinator listens on.
pub const GRPC_PORT: u16 = 7000;

/// The address of coordinator `id` on the simulated network.
pub fn node_host(id: u64) -> String {
    format!("n{id}")
}

pub fn node_endpoint(id: u64) -> String {
    format!("http://{}:{GRPC_PORT}", node_host(id))
}

/// A connector dialing turmoil TCP: every channel of a simulated client, worker or peer.
pub fn connector() -> Connector {
    Connector::new(|endpoint| {
        endpoint.connect_with_connector_lazy(tower::service_fn(|uri: Uri| async move {
            let host = uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?;
            let port = uri.port_u16().unwrap_or(80);
            let stream = turmoil::net::TcpStream::connect(format!("{host}:{port}")).await?;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }))
    })
}

/// An accepted simulated connection, as tonic's server wants it.
#[derive(Debug)]
pub struct Accepted(turmoil::net::TcpStream);

impl Connected for Accepted {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Accepted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The accepted connections of `listener`, forever.
pub fn incoming(listener: turmoil::net::TcpListener) -> impl futures::Stream<Item = io::Result<Accepted>> {
    futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| Accepted(stream));
        Some((next, listener))
    })
}
