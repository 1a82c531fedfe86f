//! XEP-0363 HTTP File Upload as raw bytes: the disco answers and the slot a client sees, and
//! the HTTPS side driven by a hand-written HTTP/1.1 client over TLS (certificate checked for
//! `upload.<domain>` against the test CA). slixmpp drives the same service in
//! tests/real_clients/test_upload.py. Every wait is bounded (`common::WAIT`).

use std::net::SocketAddr;
use strait_tests::{RawClient, TestServer, WAIT, between, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn ask(c: &mut RawClient, id: &str, xml: &str) -> String {
    c.send(xml).await;
    c.expect_element(&["<iq", &format!("id='{id}'")]).await
}

/// The disco#items of the served domain `localhost`.
async fn domain_items(c: &mut RawClient) -> String {
    ask(
        c,
        "i1",
        "<iq type='get' id='i1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    )
    .await
}

/// One HTTP/1.1 request over TLS to `addr`, the certificate checked for `host`; the status,
/// the raw header block and the body.
async fn https(
    addr: SocketAddr,
    ca: &[u8],
    host: &str,
    head: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut tls = tls_connect(addr, ca, host, &[b"http/1.1"]).await;
    let mut request = format!("{head}\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    tls.write_all(&request).await.unwrap();
    // What TLS still holds goes out too (write_all does not flush).
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete header block");
    let headers = String::from_utf8(answer[..split].to_vec()).unwrap();
    let status = headers[9..12].parse().unwrap();
    (status, headers, answer[split + 4..].to_vec())
}

/// The path and query-less target of a slot URL, and its authority.
fn target(url: &str) -> (&str, &str) {
    let rest = url.strip_prefix("https://").unwrap();
    let slash = rest.find('/').unwrap();
    (&rest[..slash], &rest[slash..])
}

#[tokio::test]
async fn the_service_is_listed_grants_slots_and_serves_what_was_put() {
    let ts = TestServer::start(|c| {
        c.upload.max_file_bytes = 4096;
    })
    .await;
    let https_addr = ts.server.as_ref().unwrap().https_addrs()[0];
    let (mut alice, _bob) = ts.alice_and_bob().await;

    let items = domain_items(&mut alice).await;
    assert!(items.contains("<item jid='upload.localhost'/>"), "{items}");
    let info = ask(
        &mut alice,
        "i2",
        "<iq type='get' id='i2' to='upload.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    assert!(
        info.contains("<identity category='store' type='file'"),
        "{info}"
    );
    assert!(
        info.contains("<feature var='urn:xmpp:http:upload:0'/>"),
        "{info}"
    );
    assert!(
        info.contains("<field var='max-file-size'><value>4096</value></field>"),
        "{info}"
    );

    let slot = ask(
        &mut alice,
        "s1",
        "<iq type='get' id='s1' to='upload.localhost'><request xmlns='urn:xmpp:http:upload:0' filename='a b&amp;c.txt' size='11' content-type='text/plain'/></iq>",
    )
    .await;
    assert!(
        slot.contains("type='result'") && slot.contains("from='upload.localhost'"),
        "{slot}"
    );
    let url = between(&slot, "<get url='", "'").to_owned();
    assert_eq!(between(&slot, "<put url='", "'"), url);
    let auth = between(&slot, "<header name='Authorization'>", "</header>").to_owned();
    assert!(auth.starts_with("Bearer "), "{slot}");
    let (authority, path) = target(&url);
    assert_eq!(authority, format!("upload.localhost:{}", https_addr.port()));
    assert!(path.ends_with("/a%20b%26c.txt"), "{url}");

    let ca = ts.ca_pem();
    let put = |auth: &str| {
        format!(
            "PUT {path} HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nAuthorization: {auth}"
        )
    };
    let (status, _, _) = https(
        https_addr,
        &ca,
        "upload.localhost",
        &put("Bearer nope"),
        b"hello world",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = https(
        https_addr,
        &ca,
        "upload.localhost",
        &put(&auth),
        b"hello world",
    )
    .await;
    assert_eq!(status, 201);
    let (status, headers, body) = https(
        https_addr,
        &ca,
        "upload.localhost",
        &format!("GET {path} HTTP/1.1"),
        b"",
    )
    .await;
    assert_eq!(status, 200, "{headers}");
    assert_eq!(body, b"hello world");
    let lower = headers.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/plain"), "{headers}");
    assert!(
        lower.contains("content-disposition: inline; filename*=utf-8''a%20b%26c.txt"),
        "{headers}"
    );
    // One byte range: a resumed download, a player seeking.
    let (status, headers, body) = https(
        https_addr,
        &ca,
        "upload.localhost",
        &format!("GET {path} HTTP/1.1\r\nRange: bytes=6-"),
        b"",
    )
    .await;
    assert_eq!((status, body.as_slice()), (206, &b"world"[..]), "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-range: bytes 6-10/11"),
        "{headers}"
    );
    let (status, headers, _) = https(
        https_addr,
        &ca,
        "upload.localhost",
        &format!("GET {path} HTTP/1.1\r\nRange: bytes=11-"),
        b"",
    )
    .await;
    assert_eq!(status, 416, "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-range: bytes */11"),
        "{headers}"
    );
    // A path with a prefix before the id and name (a reverse proxy's) finds the same file.
    let (status, _, body) = https(
        https_addr,
        &ca,
        "upload.localhost",
        &format!("GET /media{path} HTTP/1.1"),
        b"",
    )
    .await;
    assert_eq!((status, body.as_slice()), (200, &b"hello world"[..]));

    // Too large: not-acceptable, with the XEP's own condition and the limit.
    let big = ask(
        &mut alice,
        "s2",
        "<iq type='get' id='s2' to='upload.localhost'><request xmlns='urn:xmpp:http:upload:0' filename='a.bin' size='4097'/></iq>",
    )
    .await;
    assert!(big.contains("<not-acceptable"), "{big}");
    assert!(
        big.contains("<file-too-large xmlns='urn:xmpp:http:upload:0'><max-file-size>4096</max-file-size></file-too-large></error>"),
        "{big}"
    );
    ts.stop().await;
}

#[tokio::test]
async fn with_uploads_off_there_is_no_service() {
    let ts = TestServer::start(|c| c.upload.enabled = false).await;
    assert!(ts.server.as_ref().unwrap().https_addrs().is_empty());
    let (mut alice, _bob) = ts.alice_and_bob().await;
    let items = domain_items(&mut alice).await;
    assert!(!items.contains("upload."), "{items}");
    let slot = ask(
        &mut alice,
        "s1",
        "<iq type='get' id='s1' to='upload.localhost'><request xmlns='urn:xmpp:http:upload:0' filename='a.txt' size='3'/></iq>",
    )
    .await;
    assert!(
        slot.contains("type='error'") && slot.contains("<remote-server-not-found"),
        "{slot}"
    );
    ts.stop().await;
}

/// A client that sends a whole body before it reads the answer (Python's http.client, most
/// simple ones) gets the refusal, not a broken connection: the server reads a refused body
/// no larger than a file may be before it answers.
#[tokio::test]
async fn a_refused_upload_is_answered_after_its_body() {
    let ts = TestServer::start(|c| c.upload.max_file_bytes = 64 << 20).await;
    let https_addr = ts.server.as_ref().unwrap().https_addrs()[0];
    let (mut alice, _bob) = ts.alice_and_bob().await;
    let size = 16 << 20; // more than loopback's socket buffers hold
    let slot = ask(
        &mut alice,
        "s1",
        &format!("<iq type='get' id='s1' to='upload.localhost'><request xmlns='urn:xmpp:http:upload:0' filename='big.bin' size='{size}'/></iq>"),
    )
    .await;
    let url = between(&slot, "<put url='", "'").to_owned();
    let (_, path) = target(&url);
    let body = vec![7u8; size];
    let (status, headers, _) = https(
        https_addr,
        &ts.ca_pem(),
        "upload.localhost",
        &format!("PUT {path} HTTP/1.1\r\nContent-Length: {size}\r\nAuthorization: Bearer forged"),
        &body,
    )
    .await;
    assert_eq!(status, 403, "{headers}");
    ts.stop().await;
}

/// A connection that completes TLS and then sends nothing is closed once the header timeout
/// passes (slowloris): it does not hold one of the listener's connections for good.
#[tokio::test]
async fn a_silent_connection_is_closed() {
    let ts = TestServer::start(|_| {}).await;
    let https_addr = ts.server.as_ref().unwrap().https_addrs()[0];
    let mut tls = tls_connect(https_addr, &ts.ca_pem(), "upload.localhost", &[]).await;
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        strait_server::http::HEADER_TIMEOUT + WAIT,
        tls.read_to_end(&mut buf),
    )
    .await;
    assert!(read.is_ok(), "the silent connection is still open");
    assert!(
        started.elapsed() >= strait_server::http::HEADER_TIMEOUT / 2,
        "closed before the header timeout: {:?}",
        started.elapsed()
    );
    ts.stop().await;
}
