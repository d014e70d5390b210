//! Reading bodies with a hard cap: a declared length over the cap is refused before reading anything, and a
//! stream is read only until it passes the cap.

use futures_util::StreamExt;
use web_sys::ReadableStream;
use worker::ByteStream;

/// A body as far as it was read.
#[derive(Debug)]
pub enum Capped {
    Complete(Vec<u8>),
    TooLarge,
}

/// The `Content-Length` a message declares, if it declares a valid one.
pub fn declared_length(headers: &web_sys::Headers) -> Option<u64> {
    headers
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Reads `stream` (None: no body) up to `cap` bytes.
pub async fn read_capped(
    stream: Option<ReadableStream>,
    declared: Option<u64>,
    cap: usize,
) -> Result<Capped, String> {
    if declared.is_some_and(|len| len > cap as u64) {
        return Ok(Capped::TooLarge);
    }
    let Some(stream) = stream else {
        return Ok(Capped::Complete(Vec::new()));
    };
    let mut chunks = ByteStream::from(stream);
    let mut out = Vec::with_capacity(
        declared
            .map_or(0, |d| usize::try_from(d).unwrap_or(0))
            .min(cap),
    );
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| format!("reading body: {e}"))?;
        if out.len() + chunk.len() > cap {
            return Ok(Capped::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Capped::Complete(out))
}
