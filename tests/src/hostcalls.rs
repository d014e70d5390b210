//! The `env` imports of proxy-wasm ABI 0.2.1, with Envoy's semantics.

use crate::abi::{
    deserialize_pairs, pairs_to_headers, serialize_pairs, BufferKind, LogLevel, MapKind, Status,
};
use crate::state::{CallEntry, StreamData, VmState};
use crate::types::{
    header, CallState, GrpcTarget, HttpCall, LocalReply, LogSource, MetricKind, PropertySet,
};
use std::collections::BTreeSet;
use wasmtime::error::Context as _;
use wasmtime::{bail, format_err, Result};
use wasmtime::{Caller, IntoFunc, Linker};

pub(crate) type C<'a> = Caller<'a, VmState>;

/// Linker plus the set of names defined in it (to report unimplemented imports by name).
pub(crate) struct Registry<'a> {
    pub linker: &'a mut Linker<VmState>,
    pub names: BTreeSet<(String, String)>,
}

impl Registry<'_> {
    pub fn func<Params, Args>(
        &mut self,
        module: &str,
        name: &str,
        f: impl IntoFunc<VmState, Params, Args>,
    ) -> Result<()> {
        self.linker
            .func_wrap(module, name, f)
            .with_context(|| format!("defining {module}.{name}"))?;
        self.names.insert((module.to_string(), name.to_string()));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Guest memory helpers.

fn memory(c: &C) -> Result<wasmtime::Memory> {
    c.data()
        .memory
        .ok_or_else(|| format_err!("module does not export its memory"))
}

pub(crate) fn read(c: &C, ptr: i32, len: i32) -> Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let mem = memory(c)?;
    let start = ptr as u32 as usize;
    let len = len as u32 as usize;
    let end = start
        .checked_add(len)
        .ok_or_else(|| format_err!("guest pointer overflow"))?;
    mem.data(c)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| format_err!("host call read out of bounds: {start:#x}+{len}"))
}

fn read_str(c: &C, ptr: i32, len: i32) -> Result<String> {
    Ok(String::from_utf8_lossy(&read(c, ptr, len)?).into_owned())
}

pub(crate) fn write(c: &mut C, ptr: i32, bytes: &[u8]) -> Result<()> {
    let mem = memory(c)?;
    mem.write(&mut *c, ptr as u32 as usize, bytes)
        .map_err(|_| format_err!("host call write out of bounds at {:#x}", ptr as u32))
}

pub(crate) fn write_u32(c: &mut C, ptr: i32, v: u32) -> Result<()> {
    write(c, ptr, &v.to_le_bytes())
}

pub(crate) fn write_u64(c: &mut C, ptr: i32, v: u64) -> Result<()> {
    write(c, ptr, &v.to_le_bytes())
}

/// Copies `data` into guest memory allocated with the module's allocator and stores the
/// pointer and size (Envoy's `copyToPointerSize`: empty data gives a null pointer).
fn return_bytes(c: &mut C, data: &[u8], ptr_ptr: i32, size_ptr: i32) -> Result<()> {
    if data.is_empty() {
        write_u32(c, ptr_ptr, 0)?;
        return write_u32(c, size_ptr, 0);
    }
    let alloc =
        c.data().alloc.clone().ok_or_else(|| {
            format_err!("module exports neither proxy_on_memory_allocate nor malloc")
        })?;
    let len = i32::try_from(data.len()).map_err(|_| format_err!("buffer too large"))?;
    let p = alloc.call(&mut *c, len)?;
    if p == 0 {
        bail!("proxy_on_memory_allocate({len}) returned null");
    }
    write(c, p, data)?;
    write_u32(c, ptr_ptr, p as u32)?;
    write_u32(c, size_ptr, len as u32)
}

fn ok() -> Result<i32> {
    Ok(Status::Ok.code())
}

fn st(s: Status) -> Result<i32> {
    Ok(s.code())
}

// ---------------------------------------------------------------------------------------------
// Header maps.

fn map_name(kind: MapKind) -> &'static str {
    match kind {
        MapKind::RequestHeaders => "request headers",
        MapKind::RequestTrailers => "request trailers",
        MapKind::ResponseHeaders => "response headers",
        MapKind::ResponseTrailers => "response trailers",
        MapKind::GrpcInitialMetadata => "gRPC initial metadata",
        MapKind::GrpcTrailingMetadata => "gRPC trailing metadata",
        MapKind::CallResponseHeaders => "http call response headers",
        MapKind::CallResponseTrailers => "http call response trailers",
    }
}

fn unavailable_hint(kind: MapKind) -> &'static str {
    match kind {
        MapKind::RequestHeaders => {
            "Envoy only keeps them until on_http_request_headers returns Continue or the \
             stream is resumed (continue_stream)"
        }
        MapKind::ResponseHeaders => {
            "Envoy only keeps them until on_http_response_headers returns Continue"
        }
        MapKind::CallResponseHeaders | MapKind::CallResponseTrailers => {
            "they exist only inside on_http_call_response, and not at all when the call failed"
        }
        _ => "the map does not exist at this point of the stream",
    }
}

/// Read-only view of a map (Envoy's `getConstMap`).
fn const_map(s: &VmState, kind: MapKind) -> Option<&Vec<(String, String)>> {
    let stream = s.stream();
    match kind {
        MapKind::RequestHeaders => stream
            .filter(|d| d.log_phase || d.req_headers_avail)
            .map(|d| &d.req_headers),
        MapKind::RequestTrailers => stream
            .filter(|d| !d.log_phase)
            .and_then(|d| d.req_trailers.as_ref()),
        MapKind::ResponseHeaders => stream
            .filter(|d| (d.log_phase && d.resp_started) || d.resp_headers_avail)
            .map(|d| &d.resp_headers),
        MapKind::ResponseTrailers => stream.and_then(|d| d.resp_trailers.as_ref()),
        MapKind::GrpcInitialMetadata => s
            .call_response
            .as_ref()
            .and_then(|r| r.grpc_initial.as_ref()),
        MapKind::GrpcTrailingMetadata => s
            .call_response
            .as_ref()
            .and_then(|r| r.grpc_trailing.as_ref()),
        MapKind::CallResponseHeaders => s.call_response.as_ref().and_then(|r| r.headers.as_ref()),
        MapKind::CallResponseTrailers => s.call_response.as_ref().and_then(|r| r.trailers.as_ref()),
    }
}

/// Mutable map (Envoy's `getMap`); trailers are created on demand in the last body callback.
fn mut_map(s: &mut VmState, kind: MapKind) -> Option<&mut Vec<(String, String)>> {
    let d: &mut StreamData = s.stream_mut().filter(|d| !d.log_phase)?;
    match kind {
        MapKind::RequestHeaders => d.req_headers_avail.then_some(&mut d.req_headers),
        MapKind::RequestTrailers => {
            if d.req_trailers.is_none() && d.req_body.is_some() && d.end_of_stream {
                d.req_trailers = Some(Vec::new());
            }
            d.req_trailers.as_mut()
        }
        MapKind::ResponseHeaders => d.resp_headers_avail.then_some(&mut d.resp_headers),
        MapKind::ResponseTrailers => {
            if d.resp_trailers.is_none() && d.resp_body.is_some() && d.end_of_stream {
                d.resp_trailers = Some(Vec::new());
            }
            d.resp_trailers.as_mut()
        }
        _ => None,
    }
}

fn bad_map(c: &mut C, call: &str, kind: MapKind, key: &str) -> Result<i32> {
    let msg = format!(
        "{call}({kind:?}{key}) while the {} are not available: Envoy returns BadArgument (the \
         Rust SDK panics on it); {}",
        map_name(kind),
        unavailable_hint(kind)
    );
    c.data_mut().diag(msg);
    st(Status::BadArgument)
}

fn map_kind(v: i32) -> Option<MapKind> {
    MapKind::from_abi(v)
}

fn get_header_map_pairs(c: &mut C, t: i32, ptr_ptr: i32, size_ptr: i32) -> Result<i32> {
    let Some(kind) = map_kind(t) else {
        return st(Status::BadArgument);
    };
    let pairs = const_map(c.data(), kind).cloned().unwrap_or_default();
    let bytes = if pairs.is_empty() {
        Vec::new()
    } else {
        serialize_pairs(&pairs)
    };
    return_bytes(c, &bytes, ptr_ptr, size_ptr)?;
    ok()
}

fn set_header_map_pairs(c: &mut C, t: i32, ptr: i32, size: i32) -> Result<i32> {
    let Some(kind) = map_kind(t) else {
        return st(Status::BadArgument);
    };
    let data = read(c, ptr, size)?;
    let Some(pairs) = deserialize_pairs(&data) else {
        return st(Status::BadArgument);
    };
    let pairs = pairs_to_headers(pairs);
    match mut_map(c.data_mut(), kind) {
        Some(map) => {
            *map = pairs;
            ok()
        }
        None => bad_map(c, "set_header_map_pairs", kind, ""),
    }
}

fn get_header_map_value(
    c: &mut C,
    t: i32,
    kp: i32,
    ks: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<i32> {
    let Some(kind) = map_kind(t) else {
        return st(Status::BadArgument);
    };
    let key = read_str(c, kp, ks)?.to_ascii_lowercase();
    let found = match const_map(c.data(), kind) {
        Some(map) => header(map, &key).map(str::to_string),
        None => {
            if c.data().stream().is_some_and(|d| d.log_phase) {
                return st(Status::NotFound);
            }
            return bad_map(c, "get_header_map_value", kind, &format!(", {key:?}"));
        }
    };
    match found {
        Some(v) => {
            return_bytes(c, v.as_bytes(), ptr_ptr, size_ptr)?;
            ok()
        }
        None => st(Status::NotFound),
    }
}

fn remove_header_map_value(c: &mut C, t: i32, kp: i32, ks: i32) -> Result<i32> {
    let Some(kind) = map_kind(t) else {
        return st(Status::BadArgument);
    };
    let key = read_str(c, kp, ks)?.to_ascii_lowercase();
    match mut_map(c.data_mut(), kind) {
        Some(map) => {
            map.retain(|(k, _)| *k != key);
            ok()
        }
        None => bad_map(c, "remove_header_map_value", kind, &format!(", {key:?}")),
    }
}

fn replace_header_map_value(c: &mut C, t: i32, kp: i32, ks: i32, vp: i32, vs: i32) -> Result<i32> {
    let Some(kind) = map_kind(t) else {
        return st(Status::BadArgument);
    };
    let key = read_str(c, kp, ks)?.to_ascii_lowercase();
    let value = read_str(c, vp, vs)?;
    match mut_map(c.data_mut(), kind) {
        Some(map) => {
            // Envoy's setCopy: replace the first occurrence and drop the others, or append.
            match map.iter().position(|(k, _)| *k == key) {
                Some(pos) => {
                    let mut seen = 0usize;
                    map.retain(|(k, _)| {
                        if *k == key {
                            seen += 1;
                            seen == 1
                        } else {
                            true
                        }
                    });
                    if let Some(entry) = map.get_mut(pos) {
                        entry.1 = value;
                    }
                }
                None => map.push((key, value)),
            }
            ok()
        }
        None => bad_map(c, "replace_header_map_value", kind, &format!(", {key:?}")),
    }
}

fn add_header_map_value(c: &mut C, t: i32, kp: i32, ks: i32, vp: i32, vs: i32) -> Result<i32> {
    let Some(kind) = map_kind(t) else {
        return st(Status::BadArgument);
    };
    let key = read_str(c, kp, ks)?.to_ascii_lowercase();
    let value = read_str(c, vp, vs)?;
    match mut_map(c.data_mut(), kind) {
        Some(map) => {
            map.push((key, value));
            ok()
        }
        None => bad_map(c, "add_header_map_value", kind, &format!(", {key:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Buffers.

fn get_buffer_bytes(
    c: &mut C,
    t: i32,
    start: i32,
    max: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<i32> {
    let Some(kind) = BufferKind::from_abi(t) else {
        return st(Status::BadArgument);
    };
    let s = c.data();
    let data: Option<Vec<u8>> = match kind {
        BufferKind::RequestBody => Some(
            s.stream()
                .and_then(|d| d.req_body.clone())
                .unwrap_or_default(),
        ),
        BufferKind::ResponseBody => Some(
            s.stream()
                .and_then(|d| d.resp_body.clone())
                .unwrap_or_default(),
        ),
        BufferKind::GrpcReceive => s
            .call_response
            .as_ref()
            .and_then(|r| r.grpc_message.clone()),
        BufferKind::DownstreamData | BufferKind::UpstreamData | BufferKind::CallData => {
            Some(Vec::new())
        }
        BufferKind::CallResponseBody => s.call_response.as_ref().and_then(|r| r.body.clone()),
        BufferKind::VmConfiguration => Some(s.vm_config.clone()),
        BufferKind::PluginConfiguration => s.in_configure.then(|| s.plugin_config.clone()),
    };
    let Some(data) = data else {
        return st(Status::NotFound);
    };
    let start = u64::from(start as u32);
    let mut len = u64::from(max as u32);
    let size = data.len() as u64;
    if start + len > size {
        len = size.saturating_sub(start);
    }
    if len > 0 {
        let slice = data
            .get(start as usize..(start + len) as usize)
            .ok_or_else(|| format_err!("buffer slice out of range"))?
            .to_vec();
        return_bytes(c, &slice, ptr_ptr, size_ptr)?;
    }
    ok()
}

/// Envoy's `Buffer::copyFrom` on a body buffer.
fn splice_body(buf: &mut Vec<u8>, start: usize, size: usize, data: &[u8]) -> Status {
    if start == 0 {
        if size == 0 {
            let mut v = data.to_vec();
            v.append(buf);
            *buf = v;
            Status::Ok
        } else if size >= buf.len() {
            *buf = data.to_vec();
            Status::Ok
        } else {
            Status::BadArgument
        }
    } else if start >= buf.len() {
        buf.extend_from_slice(data);
        Status::Ok
    } else {
        Status::BadArgument
    }
}

fn set_buffer_bytes(c: &mut C, t: i32, start: i32, size: i32, dp: i32, ds: i32) -> Result<i32> {
    let Some(kind) = BufferKind::from_abi(t) else {
        return st(Status::BadArgument);
    };
    let data = read(c, dp, ds)?;
    let (start, size) = (start as u32 as usize, size as u32 as usize);
    let target = match kind {
        BufferKind::RequestBody => c.data_mut().stream_mut().and_then(|d| d.req_body.as_mut()),
        BufferKind::ResponseBody => c.data_mut().stream_mut().and_then(|d| d.resp_body.as_mut()),
        BufferKind::CallResponseBody => return st(Status::BadArgument),
        _ => return ok(),
    };
    match target {
        Some(buf) => {
            let len = buf.len();
            let status = splice_body(buf, start, size, &data);
            if status != Status::Ok {
                c.data_mut().diag(format!(
                    "set_buffer_bytes({kind:?}, start={start}, size={size}) on a {len}-byte \
                     buffer: Envoy only supports prepend (0,0), replace (0,>=len) and append \
                     (>=len,_) and returns BadArgument (the Rust SDK panics on it)"
                ));
            }
            st(status)
        }
        None => {
            c.data_mut().diag(format!(
                "set_buffer_bytes({kind:?}) outside a body callback has no effect in Envoy"
            ));
            ok()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties.

fn i64_bytes(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn dynamic_property(d: &StreamData, path: &[&str]) -> Option<Vec<u8>> {
    let req = |name: &str| header(&d.req_headers, name).map(|v| v.as_bytes().to_vec());
    match path {
        ["request", "path"] => req(":path"),
        ["request", "url_path"] => header(&d.req_headers, ":path")
            .map(|p| p.split('?').next().unwrap_or("").as_bytes().to_vec()),
        ["request", "query"] => header(&d.req_headers, ":path").map(|p| {
            p.split_once('?')
                .map(|(_, q)| q)
                .unwrap_or("")
                .as_bytes()
                .to_vec()
        }),
        ["request", "host"] => req(":authority"),
        ["request", "method"] => req(":method"),
        ["request", "scheme"] => req(":scheme"),
        ["request", "id"] => req("x-request-id"),
        ["request", "useragent"] => req("user-agent"),
        ["request", "referer"] => req("referer"),
        ["request", "headers"] => Some(serialize_pairs(&d.req_headers)),
        ["request", "headers", name] => req(&name.to_ascii_lowercase()),
        ["response", "code"] if d.resp_started => header(&d.resp_headers, ":status")
            .and_then(|s| s.parse::<i64>().ok())
            .map(i64_bytes),
        ["response", "headers"] if d.resp_started => Some(serialize_pairs(&d.resp_headers)),
        ["response", "headers", name] if d.resp_started => {
            header(&d.resp_headers, &name.to_ascii_lowercase()).map(|v| v.as_bytes().to_vec())
        }
        _ => None,
    }
}

fn lookup_property(s: &VmState, key: &str) -> Option<Vec<u8>> {
    let path: Vec<&str> = key.split('\0').collect();
    if let Some(d) = s.stream() {
        // Values set by the plugin (Envoy filter state) are readable back.
        if let Some(p) = d
            .props_set
            .iter()
            .rev()
            .find(|p| p.path.iter().map(String::as_str).eq(path.iter().copied()))
        {
            return Some(p.value.clone());
        }
        if let Some(v) = d.props.get(key) {
            return Some(v.clone());
        }
        if let Some(v) = dynamic_property(d, &path) {
            return Some(v);
        }
    }
    let shared = &s.shared;
    match path.as_slice() {
        ["plugin_name"] => Some(shared.options.plugin_name.as_bytes().to_vec()),
        ["plugin_root_id"] => Some(shared.options.root_id.as_bytes().to_vec()),
        ["plugin_vm_id"] => Some(shared.options.vm_id.as_bytes().to_vec()),
        _ => shared.options.properties.get(key).cloned(),
    }
}

fn get_property(c: &mut C, pp: i32, ps: i32, ptr_ptr: i32, size_ptr: i32) -> Result<i32> {
    let key = read_str(c, pp, ps)?;
    match lookup_property(c.data(), &key) {
        Some(v) => {
            return_bytes(c, &v, ptr_ptr, size_ptr)?;
            ok()
        }
        None => st(Status::NotFound),
    }
}

fn set_property(c: &mut C, pp: i32, ps: i32, vp: i32, vs: i32) -> Result<i32> {
    let key = read_str(c, pp, ps)?;
    let value = read(c, vp, vs)?;
    match c.data_mut().stream_mut() {
        Some(d) => {
            d.props_set.push(PropertySet {
                path: key.split('\0').map(str::to_string).collect(),
                value,
            });
            ok()
        }
        None => {
            c.data_mut().diag(format!(
                "set_property({:?}) outside an HTTP stream: Envoy has no stream info and returns \
                 NotFound (the Rust SDK panics on it)",
                key.replace('\0', ".")
            ));
            st(Status::NotFound)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared data and queues.

fn get_shared_data(
    c: &mut C,
    kp: i32,
    ks: i32,
    ptr_ptr: i32,
    size_ptr: i32,
    cas_ptr: i32,
) -> Result<i32> {
    let key = read_str(c, kp, ks)?;
    let found = c.data().world()?.get_shared(&key);
    match found {
        Some((value, cas)) => {
            return_bytes(c, &value, ptr_ptr, size_ptr)?;
            write_u32(c, cas_ptr, cas)?;
            ok()
        }
        None => st(Status::NotFound),
    }
}

fn set_shared_data(c: &mut C, kp: i32, ks: i32, vp: i32, vs: i32, cas: i32) -> Result<i32> {
    let key = read_str(c, kp, ks)?;
    let value = read(c, vp, vs)?;
    let status = c.data().world()?.set_shared(&key, value, cas as u32);
    st(status)
}

fn register_shared_queue(c: &mut C, np: i32, ns: i32, id_ptr: i32) -> Result<i32> {
    let name = read_str(c, np, ns)?;
    let owner = (c.data().vm_index, c.data().root_id);
    let vm_id = c.data().shared.options.vm_id.clone();
    let id = c.data().world()?.register_queue(&vm_id, &name, owner);
    write_u32(c, id_ptr, id)?;
    ok()
}

fn resolve_shared_queue(c: &mut C, vp: i32, vs: i32, np: i32, ns: i32, id_ptr: i32) -> Result<i32> {
    let mut vm_id = read_str(c, vp, vs)?;
    if vm_id.is_empty() {
        vm_id = c.data().shared.options.vm_id.clone();
    }
    let name = read_str(c, np, ns)?;
    let id = c.data().world()?.resolve_queue(&vm_id, &name);
    match id {
        Some(id) => {
            write_u32(c, id_ptr, id)?;
            ok()
        }
        None => st(Status::NotFound),
    }
}

fn dequeue_shared_queue(c: &mut C, id: i32, ptr_ptr: i32, size_ptr: i32) -> Result<i32> {
    let item = c.data().world()?.dequeue(id as u32);
    match item {
        Ok(v) => {
            return_bytes(c, &v, ptr_ptr, size_ptr)?;
            ok()
        }
        Err(s) => st(s),
    }
}

fn enqueue_shared_queue(c: &mut C, id: i32, vp: i32, vs: i32) -> Result<i32> {
    let value = read(c, vp, vs)?;
    let status = c.data().world()?.enqueue(id as u32, value);
    st(status)
}

// ---------------------------------------------------------------------------------------------
// Stream control and local replies.

fn continue_stream(c: &mut C, t: i32) -> Result<i32> {
    match t {
        0 | 1 => {
            if let Some(d) = c.data_mut().stream_mut() {
                if t == 0 {
                    d.resume_request = true;
                } else {
                    d.resume_response = true;
                }
                // Envoy's continueStream forgets the request maps right away.
                d.req_headers_avail = false;
            }
            ok()
        }
        2 => ok(),
        3 => st(Status::Unimplemented),
        _ => st(Status::BadArgument),
    }
}

fn close_stream(c: &mut C, t: i32) -> Result<i32> {
    match t {
        0 | 1 => {
            if let Some(d) = c.data_mut().stream_mut() {
                d.reset = true;
            }
            ok()
        }
        2 | 3 => ok(),
        _ => st(Status::BadArgument),
    }
}

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    c: &mut C,
    status: i32,
    dp: i32,
    ds: i32,
    bp: i32,
    bs: i32,
    hp: i32,
    hs: i32,
    grpc: i32,
) -> Result<i32> {
    let details = read_str(c, dp, ds)?;
    let body = read(c, bp, bs)?;
    let raw = read(c, hp, hs)?;
    let Some(pairs) = deserialize_pairs(&raw) else {
        return st(Status::BadArgument);
    };
    let reply = LocalReply {
        status: u16::try_from(status as u32).unwrap_or(u16::MAX),
        headers: pairs_to_headers(pairs),
        body,
        details,
        grpc_status: grpc,
    };
    match c.data_mut().stream_mut() {
        Some(d) => {
            if d.local_reply.is_none() {
                d.local_reply = Some(reply);
            }
        }
        None => c
            .data_mut()
            .diag("send_local_response outside an HTTP stream is ignored by Envoy".to_string()),
    }
    ok()
}

// ---------------------------------------------------------------------------------------------
// HTTP and gRPC callouts.

#[allow(clippy::too_many_arguments)]
fn http_call(
    c: &mut C,
    up: i32,
    us: i32,
    hp: i32,
    hs: i32,
    bp: i32,
    bs: i32,
    tp: i32,
    ts: i32,
    timeout: i32,
    token_ptr: i32,
) -> Result<i32> {
    let cluster = read_str(c, up, us)?;
    let raw_headers = read(c, hp, hs)?;
    let body = read(c, bp, bs)?;
    let raw_trailers = read(c, tp, ts)?;
    let (Some(h), Some(t)) = (
        deserialize_pairs(&raw_headers),
        deserialize_pairs(&raw_trailers),
    ) else {
        return st(Status::BadArgument);
    };
    let mut headers = pairs_to_headers(h);
    let trailers = pairs_to_headers(t);
    if let Some(known) = &c.data().shared.options.clusters {
        if !known.contains(&cluster) {
            c.data_mut().diag(format!(
                "dispatch_http_call to unknown cluster {cluster:?}: Envoy returns BadArgument"
            ));
            return st(Status::BadArgument);
        }
    }
    for required in [":path", ":method", ":authority"] {
        if header(&headers, required).is_none() {
            c.data_mut().diag(format!(
                "dispatch_http_call to {cluster:?} without {required}: Envoy returns BadArgument"
            ));
            return st(Status::BadArgument);
        }
    }
    if !body.is_empty() {
        headers.retain(|(k, _)| k != "content-length");
        headers.push(("content-length".to_string(), body.len().to_string()));
    }
    let now_ms = c.data().now_ms();
    let s = c.data_mut();
    let token = s.next_token;
    s.next_token += 1;
    let call = HttpCall {
        token,
        grpc: None,
        context_id: s.effective,
        vm: s.vm_index,
        cluster,
        headers,
        body,
        trailers,
        timeout_ms: timeout as u32,
        dispatched_at_ms: now_ms,
        state: CallState::Pending,
    };
    s.calls.push(CallEntry {
        call,
        offered: false,
    });
    write_u32(c, token_ptr, token)?;
    ok()
}

/// `proxy_grpc_call`: a unary call, recorded like an http call (see [`HttpCall::grpc`]).
#[allow(clippy::too_many_arguments)]
fn grpc_call(
    c: &mut C,
    up: i32,
    us: i32,
    sp: i32,
    ss: i32,
    mp: i32,
    ms: i32,
    hp: i32,
    hs: i32,
    bp: i32,
    bs: i32,
    timeout: i32,
    token_ptr: i32,
) -> Result<i32> {
    let cluster = read_str(c, up, us)?;
    let service = read_str(c, sp, ss)?;
    let method = read_str(c, mp, ms)?;
    let raw_metadata = read(c, hp, hs)?;
    let message = read(c, bp, bs)?;
    let Some(metadata) = deserialize_pairs(&raw_metadata) else {
        return st(Status::BadArgument);
    };
    if let Some(known) = &c.data().shared.options.clusters {
        if !known.contains(&cluster) {
            c.data_mut().diag(format!(
                "dispatch_grpc_call to unknown cluster {cluster:?}: Envoy returns BadArgument (the Rust SDK 0.2.5 panics on it)"
            ));
            return st(Status::BadArgument);
        }
    }
    if service.is_empty() || method.is_empty() {
        c.data_mut()
            .diag("dispatch_grpc_call without a service or method name".to_string());
        return st(Status::BadArgument);
    }
    let now_ms = c.data().now_ms();
    let s = c.data_mut();
    let token = s.next_token;
    s.next_token += 1;
    let call = HttpCall {
        token,
        grpc: Some(GrpcTarget { service, method }),
        context_id: s.effective,
        vm: s.vm_index,
        cluster,
        headers: pairs_to_headers(metadata),
        body: message,
        trailers: Vec::new(),
        timeout_ms: timeout as u32,
        dispatched_at_ms: now_ms,
        state: CallState::Pending,
    };
    s.calls.push(CallEntry {
        call,
        offered: false,
    });
    write_u32(c, token_ptr, token)?;
    ok()
}

/// `proxy_grpc_cancel`: a pending call is dropped without any callback, as in Envoy.
fn grpc_cancel(c: &mut C, token: i32) -> Result<i32> {
    let s = c.data_mut();
    match s
        .calls
        .iter_mut()
        .find(|e| e.call.token == token as u32 && e.call.grpc.is_some())
    {
        Some(e) if e.call.state == CallState::Pending => {
            e.call.state = CallState::Cancelled;
            e.offered = true;
            ok()
        }
        _ => st(Status::NotFound),
    }
}

fn grpc_unsupported(c: &mut C) -> Result<i32> {
    c.data_mut()
        .diag("gRPC streams are not supported by the harness (InternalFailure)".to_string());
    st(Status::InternalFailure)
}

// ---------------------------------------------------------------------------------------------
// Metrics.

fn metric_kind(id: u32) -> Option<MetricKind> {
    match id & 3 {
        0 => Some(MetricKind::Counter),
        1 => Some(MetricKind::Gauge),
        2 => Some(MetricKind::Histogram),
        _ => None,
    }
}

fn define_metric(c: &mut C, t: i32, np: i32, ns: i32, id_ptr: i32) -> Result<i32> {
    let Some(kind) = metric_kind(t as u32).filter(|_| (0..=2).contains(&t)) else {
        return st(Status::BadArgument);
    };
    let name = read_str(c, np, ns)?;
    let s = c.data_mut();
    s.next_metric_seq += 1;
    let id = (s.next_metric_seq << 2) | (t as u32);
    s.metric_ids.insert(id, name.clone());
    s.world()?.metric_entry(&name, kind);
    write_u32(c, id_ptr, id)?;
    ok()
}

fn get_metric(c: &mut C, id: i32, ret: i32) -> Result<i32> {
    let id = id as u32;
    if !matches!(
        metric_kind(id),
        Some(MetricKind::Counter | MetricKind::Gauge)
    ) {
        return st(Status::BadArgument);
    }
    let Some(name) = c.data().metric_ids.get(&id).cloned() else {
        return st(Status::NotFound);
    };
    let value = c
        .data()
        .world()?
        .metrics
        .get(&name)
        .map(|m| m.value)
        .unwrap_or(0);
    write_u64(c, ret, value as u64)?;
    ok()
}

fn record_metric(c: &mut C, id: i32, value: i64) -> Result<i32> {
    let id = id as u32;
    let (Some(kind), Some(name)) = (metric_kind(id), c.data().metric_ids.get(&id).cloned()) else {
        return st(Status::NotFound);
    };
    let mut w = c.data().world()?;
    let m = w.metric_entry(&name, kind);
    match kind {
        MetricKind::Counter => m.value = m.value.wrapping_add(value),
        MetricKind::Gauge => m.value = value,
        MetricKind::Histogram => {
            m.samples.push(value as u64);
            m.value = m.samples.len() as i64;
        }
    }
    ok()
}

fn increment_metric(c: &mut C, id: i32, offset: i64) -> Result<i32> {
    let id = id as u32;
    let kind = metric_kind(id);
    if !matches!(kind, Some(MetricKind::Counter | MetricKind::Gauge)) {
        return st(Status::BadArgument);
    }
    let Some(name) = c.data().metric_ids.get(&id).cloned() else {
        return st(Status::NotFound);
    };
    if kind == Some(MetricKind::Counter) && offset <= 0 {
        return st(Status::BadArgument);
    }
    let mut w = c.data().world()?;
    let m = w.metric_entry(&name, kind.unwrap_or(MetricKind::Counter));
    m.value = m.value.wrapping_add(offset);
    ok()
}

// ---------------------------------------------------------------------------------------------

pub(crate) fn define_env(r: &mut Registry) -> Result<()> {
    const E: &str = "env";
    r.func(
        E,
        "proxy_log",
        |mut c: C, level: i32, p: i32, s: i32| -> Result<i32> {
            let Some(level) = LogLevel::from_abi(level) else {
                return st(Status::BadArgument);
            };
            let msg = read_str(&c, p, s)?;
            c.data_mut().log(level, LogSource::Plugin, msg);
            ok()
        },
    )?;
    r.func(
        E,
        "proxy_get_log_level",
        |mut c: C, ret: i32| -> Result<i32> {
            let level = c.data().log_level as u32;
            write_u32(&mut c, ret, level)?;
            ok()
        },
    )?;
    r.func(
        E,
        "proxy_get_current_time_nanoseconds",
        |mut c: C, ret: i32| -> Result<i32> {
            let now = c.data().world()?.now_ns;
            write_u64(&mut c, ret, now)?;
            ok()
        },
    )?;
    r.func(
        E,
        "proxy_set_tick_period_milliseconds",
        |mut c: C, period: i32| -> Result<i32> {
            let now = c.data().world()?.now_ns;
            let s = c.data_mut();
            s.tick_period_ms = period as u32;
            s.next_tick_ns = now + u64::from(period as u32) * 1_000_000;
            ok()
        },
    )?;
    r.func(
        E,
        "proxy_get_buffer_bytes",
        |mut c: C, t: i32, a: i32, b: i32, pp: i32, sp: i32| {
            get_buffer_bytes(&mut c, t, a, b, pp, sp)
        },
    )?;
    r.func(
        E,
        "proxy_set_buffer_bytes",
        |mut c: C, t: i32, a: i32, b: i32, dp: i32, ds: i32| {
            set_buffer_bytes(&mut c, t, a, b, dp, ds)
        },
    )?;
    r.func(
        E,
        "proxy_get_header_map_pairs",
        |mut c: C, t: i32, pp: i32, sp: i32| get_header_map_pairs(&mut c, t, pp, sp),
    )?;
    r.func(
        E,
        "proxy_set_header_map_pairs",
        |mut c: C, t: i32, p: i32, s: i32| set_header_map_pairs(&mut c, t, p, s),
    )?;
    r.func(
        E,
        "proxy_get_header_map_value",
        |mut c: C, t: i32, kp: i32, ks: i32, pp: i32, sp: i32| {
            get_header_map_value(&mut c, t, kp, ks, pp, sp)
        },
    )?;
    r.func(
        E,
        "proxy_remove_header_map_value",
        |mut c: C, t: i32, kp: i32, ks: i32| remove_header_map_value(&mut c, t, kp, ks),
    )?;
    r.func(
        E,
        "proxy_replace_header_map_value",
        |mut c: C, t: i32, kp: i32, ks: i32, vp: i32, vs: i32| {
            replace_header_map_value(&mut c, t, kp, ks, vp, vs)
        },
    )?;
    r.func(
        E,
        "proxy_add_header_map_value",
        |mut c: C, t: i32, kp: i32, ks: i32, vp: i32, vs: i32| {
            add_header_map_value(&mut c, t, kp, ks, vp, vs)
        },
    )?;
    r.func(
        E,
        "proxy_get_property",
        |mut c: C, p: i32, s: i32, pp: i32, sp: i32| get_property(&mut c, p, s, pp, sp),
    )?;
    r.func(
        E,
        "proxy_set_property",
        |mut c: C, p: i32, s: i32, vp: i32, vs: i32| set_property(&mut c, p, s, vp, vs),
    )?;
    r.func(
        E,
        "proxy_get_shared_data",
        |mut c: C, kp: i32, ks: i32, pp: i32, sp: i32, cp: i32| {
            get_shared_data(&mut c, kp, ks, pp, sp, cp)
        },
    )?;
    r.func(
        E,
        "proxy_set_shared_data",
        |mut c: C, kp: i32, ks: i32, vp: i32, vs: i32, cas: i32| {
            set_shared_data(&mut c, kp, ks, vp, vs, cas)
        },
    )?;
    r.func(
        E,
        "proxy_register_shared_queue",
        |mut c: C, np: i32, ns: i32, ip: i32| register_shared_queue(&mut c, np, ns, ip),
    )?;
    r.func(
        E,
        "proxy_resolve_shared_queue",
        |mut c: C, vp: i32, vs: i32, np: i32, ns: i32, ip: i32| {
            resolve_shared_queue(&mut c, vp, vs, np, ns, ip)
        },
    )?;
    r.func(
        E,
        "proxy_dequeue_shared_queue",
        |mut c: C, id: i32, pp: i32, sp: i32| dequeue_shared_queue(&mut c, id, pp, sp),
    )?;
    r.func(
        E,
        "proxy_enqueue_shared_queue",
        |mut c: C, id: i32, vp: i32, vs: i32| enqueue_shared_queue(&mut c, id, vp, vs),
    )?;
    r.func(E, "proxy_continue_stream", |mut c: C, t: i32| {
        continue_stream(&mut c, t)
    })?;
    r.func(E, "proxy_close_stream", |mut c: C, t: i32| {
        close_stream(&mut c, t)
    })?;
    r.func(
        E,
        "proxy_send_local_response",
        |mut c: C, s: i32, dp: i32, ds: i32, bp: i32, bs: i32, hp: i32, hs: i32, g: i32| {
            send_local_response(&mut c, s, dp, ds, bp, bs, hp, hs, g)
        },
    )?;
    r.func(
        E,
        "proxy_http_call",
        |mut c: C,
         up: i32,
         us: i32,
         hp: i32,
         hs: i32,
         bp: i32,
         bs: i32,
         tp: i32,
         ts: i32,
         timeout: i32,
         token: i32| { http_call(&mut c, up, us, hp, hs, bp, bs, tp, ts, timeout, token) },
    )?;
    r.func(
        E,
        "proxy_grpc_call",
        |mut c: C,
         up: i32,
         us: i32,
         sp: i32,
         ss: i32,
         mp: i32,
         ms: i32,
         hp: i32,
         hs: i32,
         bp: i32,
         bs: i32,
         timeout: i32,
         token: i32| {
            grpc_call(
                &mut c, up, us, sp, ss, mp, ms, hp, hs, bp, bs, timeout, token,
            )
        },
    )?;
    r.func(
        E,
        "proxy_grpc_stream",
        |mut c: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            grpc_unsupported(&mut c)
        },
    )?;
    r.func(
        E,
        "proxy_grpc_send",
        |_: C, _: i32, _: i32, _: i32, _: i32| st(Status::NotFound),
    )?;
    r.func(E, "proxy_grpc_cancel", |mut c: C, token: i32| {
        grpc_cancel(&mut c, token)
    })?;
    r.func(E, "proxy_grpc_close", |_: C, _: i32| st(Status::NotFound))?;
    r.func(
        E,
        "proxy_get_status",
        |mut c: C, code: i32, pp: i32, sp: i32| -> Result<i32> {
            write_u32(&mut c, code, 0)?;
            write_u32(&mut c, pp, 0)?;
            write_u32(&mut c, sp, 0)?;
            ok()
        },
    )?;
    r.func(
        E,
        "proxy_set_effective_context",
        |mut c: C, id: i32| -> Result<i32> {
            let id = id as u32;
            let s = c.data_mut();
            if id == s.root_id || s.streams.contains_key(&id) {
                s.effective = id;
                ok()
            } else {
                st(Status::BadArgument)
            }
        },
    )?;
    r.func(
        E,
        "proxy_call_foreign_function",
        |_: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| st(Status::NotFound),
    )?;
    r.func(E, "proxy_done", |_: C| ok())?;
    r.func(
        E,
        "proxy_define_metric",
        |mut c: C, t: i32, np: i32, ns: i32, ip: i32| define_metric(&mut c, t, np, ns, ip),
    )?;
    r.func(E, "proxy_get_metric", |mut c: C, id: i32, ret: i32| {
        get_metric(&mut c, id, ret)
    })?;
    r.func(E, "proxy_record_metric", |mut c: C, id: i32, v: i64| {
        record_metric(&mut c, id, v)
    })?;
    r.func(E, "proxy_increment_metric", |mut c: C, id: i32, v: i64| {
        increment_metric(&mut c, id, v)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_body_follows_envoy_copy_from() {
        let mut b = b"hello".to_vec();
        assert_eq!(splice_body(&mut b, 0, 0, b">"), Status::Ok);
        assert_eq!(b, b">hello");
        assert_eq!(splice_body(&mut b, 0, 6, b"new"), Status::Ok);
        assert_eq!(b, b"new");
        assert_eq!(splice_body(&mut b, 3, 0, b"!"), Status::Ok);
        assert_eq!(b, b"new!");
        assert_eq!(splice_body(&mut b, 1, 1, b"x"), Status::BadArgument);
        assert_eq!(splice_body(&mut b, 0, 2, b"x"), Status::BadArgument);
        assert_eq!(b, b"new!");
    }
}
