//! XEP-0363 over HTTP: the PUT that stores a slot's file and the GET and HEAD that serve it
//! (the slot itself is granted over XMPP, in `features::upload`). Paths end in
//! `/<slot id>/<file name>`; whatever comes before (a reverse proxy's prefix) is ignored.
//!
//! Downloads honour a single byte range (resumed downloads, seeking in a video).
//!
//! Downloads are served as the uploader's content type, but never as an active page on this
//! origin: `Content-Security-Policy: sandbox` and `nosniff`, and `attachment` for anything but
//! images, audio, video and plain text. Any origin may fetch them (CORS), since web clients
//! download from their own origin.

use crate::features::upload::{PutError, PutHeaders, Slot, Uploads, decode_segment};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// An upload that sends nothing for this long is dropped.
pub const BODY_IDLE: Duration = Duration::from_secs(60);
/// Longest a refused upload's body is read before the refusal is sent (and the connection
/// closed).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Bytes read from a file per chunk of a download.
const READ_CHUNK: usize = 64 * 1024;

pub type Body = BoxBody<Bytes, std::io::Error>;

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Headers on every answer: any origin may read it.
fn cors(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// A plain-text error answer.
fn error(status: u16, message: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{message}\n")));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    cors(r)
}

/// Answers one request.
pub async fn respond(uploads: &Arc<Uploads>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let mut segments = path.rsplitn(3, '/');
    let name = segments.next().and_then(decode_segment);
    let id = segments.next().unwrap_or("");
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return preflight();
    }
    let Some(name) = name.filter(|_| segments.next().is_some()) else {
        return error(404, "not found");
    };
    match method {
        Method::PUT => put(uploads, id, &name, req).await,
        Method::GET => {
            let range = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            download(uploads, id, &name, false, range.as_deref()).await
        }
        Method::HEAD => download(uploads, id, &name, true, None).await,
        _ => {
            let mut r = error(405, "only GET, HEAD, PUT and OPTIONS are served here");
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
            );
            r
        }
    }
}

/// CORS preflight: what a web client may send.
fn preflight() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    cors(r)
}

/// Gives the slot back (and removes the part file) unless the upload finished: also when
/// the connection drops mid-upload and hyper drops this request's future.
struct PutGuard<'a> {
    uploads: &'a Uploads,
    id: &'a str,
    finished: bool,
}

impl Drop for PutGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.uploads.abort_put(self.id);
        }
    }
}

async fn put(
    uploads: &Arc<Uploads>,
    id: &str,
    name: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let text = |h: header::HeaderName| req.headers().get(h).and_then(|v| v.to_str().ok());
    let length = match text(header::CONTENT_LENGTH).map(str::parse::<u64>) {
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return error(400, "Content-Length is not a number"),
        None => None,
    };
    let headers = PutHeaders {
        length,
        content_type: text(header::CONTENT_TYPE),
        authorization: text(header::AUTHORIZATION),
    };
    let (slot, part) = match uploads.begin_put(id, name, &headers) {
        Ok(claimed) => claimed,
        Err(e) => {
            // Most clients send the whole body before they read the answer; closing on them
            // mid-body makes them report a broken connection instead of the refusal. So a
            // body no larger than a file could be is read and dropped first.
            if length.is_some_and(|n| n <= uploads.max_file_bytes) {
                drain(req.into_body()).await;
            }
            return error(e.status, &e.message);
        }
    };
    let mut guard = PutGuard {
        uploads,
        id,
        finished: false,
    };
    if let Err(e) = receive(req.into_body(), &part, &slot).await {
        tracing::debug!(%id, "upload refused: {}", e.message);
        return error(e.status, &e.message);
    }
    // Renames and fsyncs: off the async threads.
    let stored = {
        let (u, id, slot) = (uploads.clone(), id.to_owned(), slot.clone());
        tokio::task::spawn_blocking(move || u.finish_put(&id, &slot)).await
    };
    match stored {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(%id, "storing an upload: {e}");
            guard.finished = true; // finish_put cleaned up
            return error(500, "the file could not be stored");
        }
        Err(e) => {
            tracing::error!(%id, "storing an upload: {e}");
            return error(500, "the file could not be stored");
        }
    }
    guard.finished = true;
    tracing::info!(account = %slot.owner, %id, bytes = slot.size, "file uploaded");
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::CREATED;
    cors(r)
}

/// Reads a body to its end and drops it, for at most [`DRAIN_DEADLINE`]: a courtesy to the
/// client, not a way to hold a connection with a trickle.
async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(DRAIN_DEADLINE, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// Writes the request body to `part`: exactly the slot's size, or an error.
async fn receive(mut body: Incoming, part: &Path, slot: &Slot) -> Result<(), PutError> {
    let io = |e: std::io::Error| {
        tracing::error!(path = %part.display(), "writing an upload: {e}");
        PutError {
            status: 500,
            message: "the file could not be stored".into(),
        }
    };
    let mut file = tokio::fs::File::create(part).await.map_err(io)?;
    let mut got = 0u64;
    loop {
        let frame = match tokio::time::timeout(BODY_IDLE, body.frame()).await {
            Err(_) => {
                return Err(PutError {
                    status: 408,
                    message: format!("the upload sent nothing for {} s", BODY_IDLE.as_secs()),
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(PutError {
                    status: 400,
                    message: format!("reading the upload: {e}"),
                });
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        got += data.len() as u64;
        if got > slot.size {
            return Err(PutError {
                status: 413,
                message: format!("more than the slot's {} bytes", slot.size),
            });
        }
        file.write_all(&data).await.map_err(io)?;
    }
    if got != slot.size {
        return Err(PutError {
            status: 400,
            message: format!("the upload ended after {got} of {} bytes", slot.size),
        });
    }
    file.sync_all().await.map_err(io)
}

/// Whether a browser may show this type inline.
fn inline(content_type: &str) -> bool {
    let t = crate::features::upload::essence(content_type);
    t.starts_with("image/")
        || t.starts_with("audio/")
        || t.starts_with("video/")
        || t == "text/plain"
}

/// What a `Range` header asks of a file (RFC 9110 §14). Clients resume interrupted downloads
/// this way, and players seek.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// No range, several ranges, or one this server does not read: the whole file (a server
    /// may ignore Range).
    Whole,
    /// One range, as its first and last byte.
    Part(u64, u64),
    /// A range wholly past the end: 416.
    Unsatisfiable,
}

/// The [`ByteRange`] of a `Range` header for a file of `size` bytes.
pub fn byte_range(range: Option<&str>, size: u64) -> ByteRange {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        // The last N bytes.
        (true, false) => match last.parse::<u64>() {
            Ok(0) => return ByteRange::Unsatisfiable,
            Ok(n) => Some((size.saturating_sub(n), size.saturating_sub(1))),
            Err(_) => None,
        },
        (false, true) => first
            .parse::<u64>()
            .ok()
            .map(|f| (f, size.saturating_sub(1))),
        (false, false) => match (first.parse::<u64>(), last.parse::<u64>()) {
            (Ok(f), Ok(l)) if l >= f => Some((f, l.min(size.saturating_sub(1)))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        Some((first, _)) if size == 0 || first >= size => ByteRange::Unsatisfiable,
        Some((first, last)) => ByteRange::Part(first, last),
        None => ByteRange::Whole,
    }
}

async fn download(
    uploads: &Arc<Uploads>,
    id: &str,
    name: &str,
    head: bool,
    range: Option<&str>,
) -> Response<Body> {
    let found = {
        let (u, id, name) = (uploads.clone(), id.to_owned(), name.to_owned());
        tokio::task::spawn_blocking(move || u.file(&id, &name)).await
    };
    let Ok(Some((meta, path))) = found else {
        return error(404, "no such file (or it expired)");
    };
    let range = match byte_range(range, meta.size) {
        ByteRange::Whole => None,
        ByteRange::Part(first, last) => Some((first, last)),
        ByteRange::Unsatisfiable => {
            let mut r = error(416, "the range lies past the end of the file");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", meta.size)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return error(404, "no such file (or it expired)"),
    };
    let (start, length) = match range {
        Some((first, last)) => (first, last - first + 1),
        None => (0, meta.size),
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return error(500, "the file could not be read");
    }
    let body = if head {
        empty()
    } else {
        let chunks = tokio_util::io::ReaderStream::with_capacity(file.take(length), READ_CHUNK)
            .map(|chunk| chunk.map(Frame::data));
        BodyExt::boxed(StreamBody::new(chunks))
    };
    let mut r = Response::new(body);
    let value = |s: &str| HeaderValue::from_str(s).ok();
    if let Some((first, last)) = range {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Some(v) = value(&format!("bytes {first}-{last}/{}", meta.size)) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    let h = r.headers_mut();
    if let Some(v) = value(&meta.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let disposition = if inline(&meta.content_type) {
        "inline"
    } else {
        "attachment"
    };
    if let Some(v) = value(&format!(
        "{disposition}; filename*=UTF-8''{}",
        crate::features::upload::encode_segment(&meta.name)
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; sandbox"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A file never changes under its URL.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    cors(r)
}

#[cfg(test)]
mod tests {
    use super::{ByteRange, byte_range};

    #[test]
    fn one_byte_range_is_read_and_everything_else_served_whole() {
        let r = |h: &str| byte_range(Some(h), 100);
        assert_eq!(byte_range(None, 100), ByteRange::Whole);
        assert_eq!(r("bytes=0-9"), ByteRange::Part(0, 9));
        assert_eq!(r("bytes=90-"), ByteRange::Part(90, 99));
        assert_eq!(r("bytes=90-200"), ByteRange::Part(90, 99));
        assert_eq!(r("bytes=-10"), ByteRange::Part(90, 99));
        assert_eq!(r("bytes=-500"), ByteRange::Part(0, 99));
        assert_eq!(r("bytes=99-99"), ByteRange::Part(99, 99));
        assert_eq!(r("bytes=100-"), ByteRange::Unsatisfiable);
        assert_eq!(r("bytes=-0"), ByteRange::Unsatisfiable);
        for ignored in [
            "bytes=0-1,5-6",
            "bytes=5-1",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=0",
        ] {
            assert_eq!(r(ignored), ByteRange::Whole, "{ignored}");
        }
        assert_eq!(byte_range(Some("bytes=0-"), 0), ByteRange::Unsatisfiable);
    }
}
