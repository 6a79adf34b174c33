//! The forwarder (`--peer forwarder`): the least an HTTP gateway built like ours does. A hyper
//! HTTP/1.1 server takes each request, reqwest sends its method, path and body upstream as they
//! are, and the answer streams back (so SSE passes through token by token). It parses no JSON,
//! routes nothing, queues nothing and logs nothing: its row is the cost of the two HTTP
//! exchanges alone, a floor to read the gateway's own work against.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, reqwest::Error>;

/// Serves on `listener`, forwarding everything to `upstream` (`http://host:port`), until the
/// process ends.
///
/// # Errors
/// When the upstream URL does not parse or accepting fails.
pub async fn serve(listener: TcpListener, upstream: &str) -> Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let upstream: Arc<reqwest::Url> = Arc::new(upstream.parse()?);
    loop {
        let (stream, _) = listener.accept().await?;
        // As the gateway does: the first byte of an answer goes out at once.
        stream.set_nodelay(true)?;
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
            // A client that goes away mid-request ends its connection; nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: reqwest::Client,
    upstream: Arc<reqwest::Url>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut url = (*upstream).clone();
    url.set_path(parts.uri.path());
    url.set_query(parts.uri.query());
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    let mut request = client.request(parts.method, url).body(body);
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        request = request.header(CONTENT_TYPE, content_type);
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(e) => return Ok(error(StatusCode::BAD_GATEWAY, &e.to_string())),
    };
    let mut response = Response::builder().status(answer.status());
    if let Some(content_type) = answer.headers().get(CONTENT_TYPE) {
        response = response.header(CONTENT_TYPE, content_type);
    }
    let frames = answer.bytes_stream().map_ok(Frame::data);
    Ok(response
        .body(UnsyncBoxBody::new(StreamBody::new(frames)))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())))
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(message.to_owned())).map_err(|never: Infallible| match never {});
    let mut response = Response::new(UnsyncBoxBody::new(body));
    *response.status_mut() = status;
    response
}
