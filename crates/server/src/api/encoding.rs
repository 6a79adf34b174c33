//! Compressed request bodies: `Content-Encoding: gzip`, `deflate` or `zstd` is decoded, never to
//! more than `server.max_body_bytes`, so a small bomb cannot become a large body; any other
//! coding is refused with 415 naming the ones taken.

use std::io::Read;

use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;

use super::error::ApiError;

/// `body` decoded as its `Content-Encoding` says.
///
/// # Errors
/// 415 for a coding the gateway does not take; 400 when the body is not what its coding says;
/// 413 when it decodes to more than `limit` bytes.
pub fn decode(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let coding = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
    let decoded = match coding.as_str() {
        "" | "identity" => return Ok(body),
        "gzip" | "x-gzip" => read(flate2::read::GzDecoder::new(&body[..]), limit),
        "deflate" => read(flate2::read::ZlibDecoder::new(&body[..]), limit),
        "zstd" => zstd::stream::read::Decoder::new(&body[..]).and_then(|d| read(d, limit)),
        _ => return Err(unsupported(value.to_str().unwrap_or("(not text)"))),
    };
    match decoded {
        Ok(bytes) if bytes.len() > limit => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "body_too_large",
            format!(
                "The request body decodes to more than the limit of {limit} bytes \
                 (server.max_body_bytes)."
            ),
        )),
        Ok(bytes) => Ok(Bytes::from(bytes)),
        Err(e) => Err(ApiError::invalid_body(format!(
            "The request body is not valid {coding} (Content-Encoding: {coding}): {e}."
        ))),
    }
}

/// Reads at most one byte past `limit`: enough to know the limit was passed.
fn read(decoder: impl Read, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    decoder.take(limit as u64 + 1).read_to_end(&mut out)?;
    Ok(out)
}

fn unsupported(coding: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request_error",
        "unsupported_encoding",
        format!(
            "Content-Encoding {coding:?} is not supported; send the body uncompressed, or as \
             gzip, deflate or zstd."
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn encoded(coding: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, coding.parse().unwrap());
        headers
    }

    fn gzip(data: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        Bytes::from(encoder.finish().unwrap())
    }

    #[test]
    fn each_coding_taken_decodes_to_the_original() {
        let original = br#"{"model":"echo"}"#;
        assert_eq!(
            decode(&encoded("gzip"), gzip(original), 100).unwrap(),
            &original[..]
        );
        let zstd = zstd::encode_all(&original[..], 3).unwrap();
        assert_eq!(decode(&encoded("zstd"), zstd.into(), 100).unwrap(), &original[..]);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(original).unwrap();
        let zlib = Bytes::from(zlib.finish().unwrap());
        assert_eq!(decode(&encoded("deflate"), zlib, 100).unwrap(), &original[..]);
        let plain = Bytes::from_static(original);
        assert_eq!(decode(&HeaderMap::new(), plain, 100).unwrap(), &original[..]);
    }

    #[test]
    fn a_body_decoding_past_the_limit_is_413() {
        let bomb = gzip(&vec![b' '; 1_000_000]);
        assert!(bomb.len() < 10_000);
        let error = decode(&encoded("gzip"), bomb, 1000).unwrap_err();
        assert_eq!(error.status, 413);
        assert!(
            error
                .message
                .contains("decodes to more than the limit of 1000 bytes")
        );
    }

    #[test]
    fn other_codings_are_415_and_bad_data_400() {
        let error = decode(&encoded("br"), Bytes::from_static(b"x"), 100).unwrap_err();
        assert_eq!(error.status, 415);
        assert_eq!(error.code, "unsupported_encoding");
        let error = decode(&encoded("gzip"), Bytes::from_static(b"{}"), 100).unwrap_err();
        assert_eq!(error.status, 400);
        assert!(
            error.message.starts_with("The request body is not valid gzip"),
            "{}",
            error.message
        );
    }
}
