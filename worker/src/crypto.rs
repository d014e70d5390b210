//! Signature checks with the runtime's WebCrypto (native code in workerd, much cheaper than verifying in
//! Wasm). The key is always the configured key the core selected ([`PendingSignature::key`]), never anything
//! from the token. Imported `CryptoKey`s are cached per isolate by the key's fingerprint. Whatever WebCrypto
//! cannot do (an import or a call that throws) goes to the core's `verify_native`: in the default build (no
//! `rust-verify`, no Rust signature code linked) that refuses the signature, fail closed; built with the
//! `native-fallback` feature it is the core's own verifier.

use std::cell::RefCell;
use std::collections::HashMap;

use js_sys::{Array, Object, Reflect, Uint8Array};
use txngate_core::{Algorithm, PendingSignature};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{CryptoKey, SubtleCrypto};

/// Imported keys by fingerprint; `None` marks a key WebCrypto refused (`verify_native` decides from then on).
type KeyCache = HashMap<String, Option<CryptoKey>>;

thread_local! {
    static KEYS: RefCell<KeyCache> = RefCell::new(HashMap::new());
    /// `crypto.subtle` and the verify parameters per algorithm, looked up and built once per isolate rather
    /// than on every fresh token (each is several calls across the Wasm boundary).
    static SUBTLE: RefCell<Option<SubtleCrypto>> = const { RefCell::new(None) };
    static VERIFY_PARAMS: RefCell<HashMap<&'static str, Object>> = RefCell::new(HashMap::new());
}

/// How a signature was checked (for diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verifier {
    WebCrypto,
    Native,
}

/// Checks the pending signature. Never fails: any WebCrypto trouble means `verify_native` decides (a refusal
/// unless the `native-fallback` feature is on).
pub async fn verify(pending: &PendingSignature) -> (bool, Verifier) {
    match webcrypto_verify(pending).await {
        Some(valid) => (valid, Verifier::WebCrypto),
        None => (pending.verify_native(), Verifier::Native),
    }
}

/// `Some(valid)` when WebCrypto gave an answer, `None` when it could not be used.
async fn webcrypto_verify(pending: &PendingSignature) -> Option<bool> {
    let subtle = subtle()?;
    let alg = pending.algorithm();
    let key = crypto_key(&subtle, pending).await?;
    let params = cached_verify_params(alg)?;
    let signature = Uint8Array::from(pending.signature());
    let data = Uint8Array::from(pending.signing_input());
    let promise = subtle
        .verify_with_object_and_buffer_source_and_buffer_source(
            &params,
            &key,
            signature.unchecked_ref(),
            data.unchecked_ref(),
        )
        .ok()?;
    let result = JsFuture::from(promise).await.ok()?;
    result.as_bool()
}

fn subtle() -> Option<SubtleCrypto> {
    if let Some(subtle) = SUBTLE.with(|s| s.borrow().clone()) {
        return Some(subtle);
    }
    let crypto = Reflect::get(&js_sys::global(), &JsValue::from_str("crypto")).ok()?;
    let crypto: web_sys::Crypto = crypto.dyn_into().ok()?;
    let subtle = crypto.subtle();
    SUBTLE.with(|s| *s.borrow_mut() = Some(subtle.clone()));
    Some(subtle)
}

/// The verify parameters of `alg`, built on first use. WebCrypto only reads them, so one object per
/// algorithm serves every call.
fn cached_verify_params(alg: Algorithm) -> Option<Object> {
    if let Some(params) = VERIFY_PARAMS.with(|p| p.borrow().get(alg.name()).cloned()) {
        return Some(params);
    }
    let params = verify_params(alg).ok()?;
    VERIFY_PARAMS.with(|p| p.borrow_mut().insert(alg.name(), params.clone()));
    Some(params)
}

async fn crypto_key(subtle: &SubtleCrypto, pending: &PendingSignature) -> Option<CryptoKey> {
    let public = pending.key();
    let fingerprint = public.fingerprint();
    if let Some(cached) = KEYS.with(|k| k.borrow().get(fingerprint).cloned()) {
        return cached;
    }
    let imported = import(subtle, public.jwk(), public.algorithm()).await;
    if imported.is_none() {
        worker::console_warn!(
            "{}",
            serde_json::json!({"txngate": "webcrypto.import_failed", "kid": public.kid(), "alg": public.algorithm().name(), "fallback": "native"})
        );
    }
    KEYS.with(|k| {
        let mut keys = k.borrow_mut();
        if keys.len() >= txngate_core::host::MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(fingerprint.to_string(), imported.clone());
    });
    imported
}

async fn import(
    subtle: &SubtleCrypto,
    jwk: &serde_json::Value,
    alg: Algorithm,
) -> Option<CryptoKey> {
    let jwk: Object = js_sys::JSON::parse(&jwk.to_string())
        .ok()?
        .dyn_into()
        .ok()?;
    // WebCrypto checks a JWK's `alg` against the algorithm it imports for, and runtimes know only "EdDSA" for
    // Ed25519 keys; RFC 9864's "Ed25519" is dropped here (the core already bound the key to it).
    if alg == Algorithm::Ed25519 {
        Reflect::delete_property(&jwk, &JsValue::from_str("alg")).ok()?;
    }
    let params = import_params(alg).ok()?;
    let usages = Array::of1(&JsValue::from_str("verify"));
    let promise = subtle
        .import_key_with_object("jwk", &jwk, &params, false, &usages)
        .ok()?;
    JsFuture::from(promise).await.ok()?.dyn_into().ok()
}

fn object(pairs: &[(&str, JsValue)]) -> Result<Object, JsValue> {
    let o = Object::new();
    for (k, v) in pairs {
        Reflect::set(&o, &JsValue::from_str(k), v)?;
    }
    Ok(o)
}

fn import_params(alg: Algorithm) -> Result<Object, JsValue> {
    let s = JsValue::from_str;
    match alg {
        Algorithm::EdDSA | Algorithm::Ed25519 => object(&[("name", s("Ed25519"))]),
        Algorithm::ES256 => object(&[("name", s("ECDSA")), ("namedCurve", s("P-256"))]),
        Algorithm::ES384 => object(&[("name", s("ECDSA")), ("namedCurve", s("P-384"))]),
        Algorithm::RS256 => object(&[("name", s("RSASSA-PKCS1-v1_5")), ("hash", s("SHA-256"))]),
        Algorithm::PS256 => object(&[("name", s("RSA-PSS")), ("hash", s("SHA-256"))]),
    }
}

fn verify_params(alg: Algorithm) -> Result<Object, JsValue> {
    let s = JsValue::from_str;
    match alg {
        Algorithm::EdDSA | Algorithm::Ed25519 => object(&[("name", s("Ed25519"))]),
        Algorithm::ES256 => object(&[("name", s("ECDSA")), ("hash", s("SHA-256"))]),
        // WebCrypto's ECDSA signature is IEEE P1363 `r ‖ s`, as JWS carries it (96 bytes for P-384).
        Algorithm::ES384 => object(&[("name", s("ECDSA")), ("hash", s("SHA-384"))]),
        Algorithm::RS256 => object(&[("name", s("RSASSA-PKCS1-v1_5"))]),
        // RFC 7518 §3.5: PS256 uses a salt as long as the hash.
        Algorithm::PS256 => object(&[
            ("name", s("RSA-PSS")),
            ("saltLength", JsValue::from_f64(32.0)),
        ]),
    }
}
