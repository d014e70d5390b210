//! JavaScript errors as text, for logs and replies.

use wasm_bindgen::JsCast;

/// The message of a JavaScript exception, else the value as a string, else its debug form.
pub fn js_error(e: &wasm_bindgen::JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}
