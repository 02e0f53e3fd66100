//! Connections, and the answers hyper gives before routing.
//!
//! hyper refuses a request head it cannot take by itself, before any of our
//! code runs, and closes the connection: `414` for a request line over its
//! fixed 65,534-byte URI limit, `431` for more than 100 headers or a head
//! over its buffer, `400` for a head that is not HTTP/1.1. Those answers are
//! bare (no body, no request id) and offer no hook. [`serve`] wraps every
//! accepted connection in [`Conn`], which recognises such an answer as hyper
//! writes it — a `400`, `414` or `431` head without the `x-request-id` that
//! every answer of ours carries (see `track` in `mod.rs`) — and writes a
//! problem+json answer with a request id in its place, counted in
//! `stockflow_http_requests_total{route="unmatched",method="other"}`.
//!
//! [`serve`] is also where a client's hold on the server is bounded: a
//! connection cap and a header-read timeout ([`Limits`]), so that idle or
//! slow sockets cannot use up the process's file descriptors.

use crate::metrics::Metrics;
use crate::settings::Limits;
use crate::shutdown::Shutdown;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

/// hyper's longest request URI (its `MAX_URI_LEN`, not configurable).
const MAX_URI_BYTES: usize = 65_534;
/// hyper's most headers in a request (its default `max_headers`).
const MAX_HEADERS: usize = 100;

/// The cap's log line comes at most this often.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `tcp` under `limits` until `shutdown` fires, then lets
/// the open connections finish their answers (change streams end with the
/// shutdown) and returns once every one is closed.
///
/// HTTP/1.1 only (hyper's `http1` connection, with a timer so that its
/// header-read timeout applies to a new connection and to an idle kept-alive
/// one alike). At the cap the loop stops accepting — the kernel holds new
/// connections in the backlog — and says so once per episode in the log
/// (at most every 10 s) and in `stockflow_http_connection_cap_reached_total`.
pub async fn serve(
    tcp: tokio::net::TcpListener,
    app: axum::Router,
    limits: Limits,
    metrics: Metrics,
    shutdown: Shutdown,
) -> io::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS) as u32;
    let permits = Arc::new(Semaphore::new(max as usize));
    let mut warned: Option<std::time::Instant> = None;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics.http_connection_cap_reached.inc();
                if warned.is_none_or(|at| at.elapsed() >= CAP_WARNING_EVERY) {
                    warned = Some(std::time::Instant::now());
                    tracing::warn!(
                        max_connections = max,
                        "HTTP connection cap reached (--max-connections): new connections wait in the listen backlog until one closes"
                    );
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = shutdown.wait() => break,
                }
            }
        };
        let stream = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // As axum's own listener does: a failed accept (e.g. out of
                    // file descriptors) is logged and retried after a pause.
                    tracing::error!(%error, "accepting a connection failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            inner: stream,
            replacement: None,
            metrics: metrics.clone(),
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            metrics.http_connections.inc();
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = shutdown.wait() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "a connection ended with an error");
            }
            metrics.http_connections.dec();
            drop(permit);
        });
    }
    // Every permit back: every connection closed.
    let _all = permits.acquire_many(max).await;
    Ok(())
}

/// Raises the soft limit of open files to the hard limit (a common soft
/// limit, 1,024, is less than a busy server's connections); answers
/// `(before, after)`. Logged by the caller; on a failure the limit stays.
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    // `None` is "unlimited".
    let (before, hard) = (
        limit.current.unwrap_or(u64::MAX),
        limit.maximum.unwrap_or(u64::MAX),
    );
    if before < hard {
        setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok((before, hard.max(before)))
}

/// One accepted connection: reads pass through; hyper's bare answer to a
/// request head it refused is replaced by a problem (see the module doc).
pub struct Conn<T> {
    inner: T,
    /// The problem answer still to write, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
    metrics: Metrics,
}

impl<T: AsyncWrite + Unpin> Conn<T> {
    /// Writes what is left of the replacement answer; `Ready` once it is all written.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// If `buf` starts with hyper's own answer to a refused head, queues the
    /// problem in its place and answers how many bytes of `buf` it stands for.
    fn replace(&mut self, buf: &[u8]) -> Option<usize> {
        let (status, head_len) = refused_head(buf)?;
        let id = format!("req_{:016x}", rand::random::<u64>());
        let detail = match status {
            414 => format!("the request's URI is longer than the {MAX_URI_BYTES} bytes this server reads"),
            431 => format!("the request's head is too large: more than {MAX_HEADERS} headers, or more bytes than the server buffers"),
            _ => "the request's head is not HTTP/1.1 this server can read (method, URI, a header or the version)".to_owned(),
        };
        tracing::info!(request_id = %id, status, "refused a request head before routing");
        let status_label = status.to_string();
        self.metrics
            .http_requests
            .with_label_values(&["unmatched", "other", status_label.as_str()])
            .inc();
        self.replacement = Some((problem_answer(status, &id, &detail), 0));
        Some(head_len)
    }
}

/// `(status, length)` of a head at the start of `buf` that hyper wrote by
/// itself: `400`, `414` or `431`, complete, without `x-request-id`.
fn refused_head(buf: &[u8]) -> Option<(u16, usize)> {
    let status = match buf.get(..13)? {
        b"HTTP/1.1 400 " => 400,
        b"HTTP/1.1 414 " => 414,
        b"HTTP/1.1 431 " => 431,
        _ => return None,
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.contains("\r\nx-request-id:") || head.contains("\r\ncontent-type:") {
        return None;
    }
    Some((status, end))
}

/// A whole HTTP/1.1 answer: the problem, its request id, and the connection closed.
fn problem_answer(status: u16, id: &str, detail: &str) -> Vec<u8> {
    let code = axum::http::StatusCode::from_u16(status).expect("a known status");
    let title = code.canonical_reason().unwrap_or("Error");
    let kind = match status {
        414 => "uri-too-long",
        431 => "headers-too-large",
        _ => "bad-request",
    };
    let body = serde_json::to_string(&super::error::Problem {
        kind: format!("https://stockflow.dev/problems/{kind}"),
        title,
        status,
        detail: detail.to_owned(),
        command_id: None,
    })
    .expect("a problem serializes");
    format!(
        "HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl<T: AsyncRead + Unpin> AsyncRead for Conn<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Conn<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        if let Some(taken) = self.replace(buf) {
            // Written or not yet, the replacement stands for hyper's bytes.
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(taken));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        // hyper writes a head as the first slice of its queue.
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(taken) = self.replace(first) {
                let _ = self.drain(cx)?;
                return Poll::Ready(Ok(taken));
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        // This test runs in a process of its own (nextest).
        let hard = getrlimit(Resource::Nofile).maximum;
        let lowered = hard.unwrap_or(u64::MAX).min(256);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(lowered),
                maximum: hard,
            },
        )
        .unwrap();
        let (before, after) = raise_open_files_limit().unwrap();
        assert_eq!((before, after), (lowered, hard.unwrap_or(u64::MAX)));
        assert_eq!(
            getrlimit(Resource::Nofile).current,
            hard,
            "the soft limit is the hard one now"
        );
    }

    #[test]
    fn only_hyper_s_own_bare_heads_are_replaced() {
        assert_eq!(
            refused_head(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n"),
            Some((414, 57))
        );
        assert_eq!(
            refused_head(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"
            )
            .map(|r| r.0),
            Some(431)
        );
        assert_eq!(
            refused_head(
                b"HTTP/1.1 400 Bad Request\r\nx-request-id: r1\r\ncontent-length: 0\r\n\r\n"
            ),
            None,
            "ours"
        );
        assert_eq!(
            refused_head(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\n\r\n{}"
            ),
            None,
            "ours"
        );
        assert_eq!(
            refused_head(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(
            refused_head(b"HTTP/1.1 414 URI Too Long\r\ncontent-len"),
            None,
            "incomplete"
        );
        let answer = String::from_utf8(problem_answer(414, "req_1", "too long")).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 414 URI Too Long\r\n")
                && head.contains("x-request-id: req_1")
        );
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            (problem["status"].as_u64(), problem["detail"].as_str()),
            (Some(414), Some("too long"))
        );
    }
}
