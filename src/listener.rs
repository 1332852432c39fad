//! Accepting gRPC connections: at most `max_connections` at a time, each with `TCP_NODELAY`.
//!
//! tonic sets socket options only on listeners it binds itself; with an incoming stream (needed for a
//! graceful shutdown on a listener bound before serving) they are the caller's job, so a small answer
//! would otherwise wait for Nagle's algorithm. The connection cap bounds what a flood of connections
//! can make the server hold: past it, new connections wait in the kernel's accept queue instead of
//! each taking HTTP/2 buffers here.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// After an accept error (out of file descriptors, most often), wait this long before accepting again,
/// instead of spinning on an error that needs a connection to close first.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// How many connections accepted by one `incoming` are open now.
#[derive(Clone, Debug, Default)]
pub struct OpenConnections(Arc<AtomicUsize>);

impl OpenConnections {
    /// Connections open now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The accepted connections of `listener`, for `serve_with_incoming_shutdown`, and a count of those
/// open. The accept loop ends when the stream is dropped.
pub(crate) fn incoming(
    listener: TcpListener,
    max_connections: usize,
) -> (ReceiverStream<io::Result<Connection>>, OpenConnections) {
    let (sender, receiver) = mpsc::channel(1);
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let open = OpenConnections::default();
    let counted = open.clone();
    tokio::spawn(async move {
        loop {
            // Wait for a free slot before accepting, so the kernel holds the excess, not us.
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let stream = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            match stream {
                Ok((stream, _peer)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "Cannot set TCP_NODELAY on a gRPC connection");
                    }
                    counted.0.fetch_add(1, Ordering::Relaxed);
                    let connection = Connection {
                        stream,
                        _slot: slot,
                        open: counted.clone(),
                    };
                    if sender.send(Ok(connection)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "Cannot accept a gRPC connection");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    });
    (ReceiverStream::new(receiver), open)
}

/// An accepted connection holding one of the `max_connections` slots until it closes.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    open: OpenConnections,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connection {
    /// Whether `TCP_NODELAY` is set (tests check it really is).
    pub fn nodelay(&self) -> io::Result<bool> {
        self.stream.nodelay()
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_and_wait_for_a_free_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut incoming, open) = incoming(listener, 1);
        let _first_client = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        assert!(
            first.nodelay().unwrap(),
            "TCP_NODELAY on the accepted socket"
        );

        // The second connection completes in the kernel but is not handed out while the slot is held.
        let _second_client = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
        assert!(waiting.is_err(), "a second connection past the cap");
        drop(first);
        let second = incoming.next().await.unwrap().unwrap();
        assert_eq!(open.get(), 1, "the first closed, the second open");
        assert!(second.nodelay().unwrap());
    }
}
