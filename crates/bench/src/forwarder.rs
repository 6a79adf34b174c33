//! The forwarder (`--peer forwarder`): the least an HTTP gateway built like ours does. A hyper
//! HTTP/1.1 server takes each request, hyper's pooled client (the gateway's, for direct
//! upstreams) sends its method, path and body upstream as they are, and the answer streams back
//! (so SSE passes through token by token). It parses no JSON, routes nothing, queues nothing and
//! logs nothing: its row is the cost of the two HTTP exchanges alone, a floor to read the
//! gateway's own work against.

use std::convert::Infallible;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;
type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// Serves on `listener`, forwarding everything to `upstream` (`http://host:port`), until the
/// process ends.
///
/// # Errors
/// When the upstream URL does not parse or accepting fails.
pub async fn serve(listener: TcpListener, upstream: &str) -> Result<()> {
    let upstream: Uri = upstream.parse()?;
    let authority = upstream
        .authority()
        .cloned()
        .context("the upstream URL names no host")?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        // As the gateway does: the first byte of an answer goes out at once.
        stream.set_nodelay(true)?;
        let client = client.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), authority.clone(), req));
            // A client that goes away mid-request ends its connection; nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: Client,
    upstream: hyper::http::uri::Authority,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut uri = Uri::builder().scheme("http").authority(upstream);
    if let Some(path) = parts.uri.path_and_query() {
        uri = uri.path_and_query(path.clone());
    }
    let uri = match uri.build() {
        Ok(uri) => uri,
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    let mut request = Request::builder().method(parts.method).uri(uri);
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        request = request.header(CONTENT_TYPE, content_type);
    }
    let request = match request.body(Full::new(body)) {
        Ok(request) => request,
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    let answer = match client.request(request).await {
        Ok(answer) => answer,
        Err(e) => return Ok(error(StatusCode::BAD_GATEWAY, &e.to_string())),
    };
    let (head, body) = answer.into_parts();
    let mut response = Response::builder().status(head.status);
    if let Some(content_type) = head.headers.get(CONTENT_TYPE) {
        response = response.header(CONTENT_TYPE, content_type);
    }
    Ok(response
        .body(UnsyncBoxBody::new(body))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())))
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(message.to_owned())).map_err(|never: Infallible| match never {});
    let mut response = Response::new(UnsyncBoxBody::new(body));
    *response.status_mut() = status;
    response
}
