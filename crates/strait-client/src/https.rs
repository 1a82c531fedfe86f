//! HTTPS for file sharing: the PUT of an upload slot (XEP-0363) and the GET of a shared file,
//! one request per connection, on hyper's HTTP/1 client over rustls (the TLS configuration is
//! the XMPP connection's, so the same certificates are trusted).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long one request may take, the transfer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("{0:?} is not an https:// URL with a host")]
    BadUrl(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("{0}: {1}")]
    Http(String, String),
    #[error("{0} answered {1}")]
    Status(String, StatusCode),
    #[error("{0}: larger than {1} bytes")]
    TooLarge(String, usize),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
}

/// An HTTPS client.
#[derive(Clone)]
pub struct Https {
    tls: Arc<rustls::ClientConfig>,
    /// Connect here instead of resolving URLs' hosts (whose names are still what the
    /// certificate must carry): for a server whose upload host name does not resolve.
    via: Option<SocketAddr>,
}

impl Https {
    pub fn new(tls: Arc<rustls::ClientConfig>, via: Option<SocketAddr>) -> Https {
        Https { tls, via }
    }

    /// Uploads `body` with a PUT to `url`, with the slot's extra `headers`.
    pub async fn put(
        &self,
        url: &str,
        headers: &[(String, String)],
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(), HttpsError> {
        let mut req = Request::builder()
            .method(Method::PUT)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::CONTENT_LENGTH, body.len());
        for (name, value) in headers {
            req = req.header(name.as_str(), value.as_str());
        }
        self.send(url, req, Full::new(Bytes::from(body)), 64 * 1024)
            .await
            .map(|_| ())
    }

    /// Downloads `url`, at most `max` bytes.
    pub async fn get(&self, url: &str, max: usize) -> Result<Vec<u8>, HttpsError> {
        let req = Request::builder().method(Method::GET);
        self.send(url, req, Full::new(Bytes::new()), max).await
    }

    async fn send(
        &self,
        url: &str,
        req: hyper::http::request::Builder,
        body: Full<Bytes>,
        max: usize,
    ) -> Result<Vec<u8>, HttpsError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.send_now(url, req, body, max))
            .await
            .map_err(|_| HttpsError::Timeout(url.to_owned(), REQUEST_TIMEOUT))?
    }

    async fn send_now(
        &self,
        url: &str,
        req: hyper::http::request::Builder,
        body: Full<Bytes>,
        max: usize,
    ) -> Result<Vec<u8>, HttpsError> {
        let bad = || HttpsError::BadUrl(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("https") {
            return Err(bad());
        }
        let host = uri.host().ok_or_else(bad)?.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let addr = match self.via {
            Some(a) => a,
            None => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| HttpsError::Connect(host.clone(), e))?
                .next()
                .ok_or_else(|| {
                    HttpsError::Connect(host.clone(), std::io::ErrorKind::NotFound.into())
                })?,
        };
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| HttpsError::Connect(format!("{host} ({addr})"), e))?;
        let name = ServerName::try_from(host.clone()).map_err(|_| bad())?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| HttpsError::Connect(format!("{host} ({addr})"), e))?;
        let http = |e: hyper::Error| HttpsError::Http(url.to_owned(), e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(http)?;
        let driver = tokio::spawn(conn);
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or(host);
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let req = req
            .uri(path)
            .header(hyper::header::HOST, authority)
            .body(body)
            .map_err(|e| HttpsError::Http(url.to_owned(), e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let collected = Limited::new(resp.into_body(), max).collect().await;
        driver.abort();
        if !status.is_success() {
            return Err(HttpsError::Status(url.to_owned(), status));
        }
        match collected {
            Ok(b) => Ok(b.to_bytes().to_vec()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(HttpsError::TooLarge(url.to_owned(), max))
            }
            Err(e) => Err(HttpsError::Http(url.to_owned(), e.to_string())),
        }
    }
}
