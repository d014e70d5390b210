//! Reading bodies with a hard cap: a declared length over the cap is refused before reading anything, and a
//! stream is read only until it passes the cap.

use futures_util::StreamExt;
use js_sys::{ArrayBuffer, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::ReadableStream;
use worker::ByteStream;

use crate::error::js_error;

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

/// Reads a request body up to `cap` bytes: with a declared length within the cap in one `arrayBuffer()`
/// call (the runtime enforces the declared length), otherwise chunk by chunk. With the `ArrayBuffer` the
/// runtime produced, when there is one, so the caller can forward it without another copy.
pub async fn read_body(
    req: &web_sys::Request,
    declared: Option<u64>,
    cap: usize,
) -> Result<(Capped, Option<ArrayBuffer>), String> {
    match declared {
        Some(len) if len > cap as u64 => Ok((Capped::TooLarge, None)),
        Some(0) => Ok((Capped::Complete(Vec::new()), None)),
        Some(_) => {
            let promise = req
                .array_buffer()
                .map_err(|e| format!("reading body: {}", js_error(&e)))?;
            let buffer = JsFuture::from(promise)
                .await
                .map_err(|e| format!("reading body: {}", js_error(&e)))?;
            let bytes = Uint8Array::new(&buffer).to_vec();
            if bytes.len() > cap {
                return Ok((Capped::TooLarge, None));
            }
            Ok((
                Capped::Complete(bytes),
                buffer.dyn_into::<ArrayBuffer>().ok(),
            ))
        }
        None => Ok((read_capped(req.body(), None, cap).await?, None)),
    }
}
