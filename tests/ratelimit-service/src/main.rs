//! A test-only rate limit service speaking Envoy's RLS v3 (`ShouldRateLimit`), with Kuadrant's `limitador`
//! engine and its Redis storage doing the counting. Not part of txngate: the end-to-end suite starts it in front
//! of a real `redis-server` to stand for the rate limit service of a mesh (envoyproxy/ratelimit or Limitador).
//!
//! Usage: `txngate-ratelimit-service --listen 127.0.0.1:PORT --redis redis://127.0.0.1:PORT --limits FILE`
//!
//! The limits file is a JSON array of Limitador limits (the `limits.yaml` format of limitador-server, as JSON):
//! `{"namespace": "<domain>", "max_value": 5, "seconds": 60, "conditions": ["descriptors[0].rule == 'x'"],
//! "variables": ["descriptors[0].agent"]}`. As in limitador-server, the request's domain is the namespace and
//! its descriptors are bound as `descriptors`, a list of maps from entry key to value.
//!
//! Admission is atomic across concurrent calls and service replicas: Limitador reservations (see
//! `should_rate_limit`).
//!
//! Answers: OK / OVER_LIMIT with one status per descriptor (`duration_until_reset` from the counter's TTL in
//! Redis); a storage error (Redis down) is gRPC status 14 UNAVAILABLE, as limitador-server answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use limitador::limit::{Context, Limit};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::storage::AsyncStorage;
use limitador::{AsyncRateLimiter, AsyncRateLimiterBuilder};
use prost::Message;
use tokio::net::TcpListener;

/// `envoy.service.ratelimit.v3` messages, only the fields this service reads or writes.
mod rls {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitRequest {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(message, repeated, tag = "2")]
        pub descriptors: Vec<RateLimitDescriptor>,
        #[prost(uint32, tag = "3")]
        pub hits_addend: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitDescriptor {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitResponse {
        #[prost(int32, tag = "1")]
        pub overall_code: i32,
        #[prost(message, repeated, tag = "2")]
        pub statuses: Vec<DescriptorStatus>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DescriptorStatus {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(message, optional, tag = "2")]
        pub current_limit: Option<RateLimit>,
        #[prost(uint32, tag = "3")]
        pub limit_remaining: u32,
        #[prost(message, optional, tag = "4")]
        pub duration_until_reset: Option<Duration>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimit {
        #[prost(uint32, tag = "1")]
        pub requests_per_unit: u32,
        #[prost(int32, tag = "2")]
        pub unit: i32,
        #[prost(string, tag = "3")]
        pub name: String,
    }

    /// `google.protobuf.Duration`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    pub const OK: i32 = 1;
    pub const OVER_LIMIT: i32 = 2;
    pub const UNIT_SECOND: i32 = 1;
}

const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

struct Args {
    listen: SocketAddr,
    redis: String,
    limits: String,
}

fn args() -> Result<Args, String> {
    let mut listen = None;
    let mut redis = None;
    let mut limits = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen: {e}"))?),
            "--redis" => redis = Some(value),
            "--limits" => limits = Some(value),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        redis: redis.ok_or("--redis is required")?,
        limits: limits.ok_or("--limits is required")?,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("ratelimit-service: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let args = args()?;
    let text =
        std::fs::read_to_string(&args.limits).map_err(|e| format!("{}: {e}", args.limits))?;
    let limits: Vec<Limit> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", args.limits))?;
    let storage = AsyncRedisStorage::new(&args.redis)
        .await
        .map_err(|e| format!("redis {}: {e}", args.redis))?;
    let limiter =
        AsyncRateLimiterBuilder::new(AsyncStorage::with_counter_storage(Box::new(storage))).build();
    for limit in limits {
        limiter.add_limit(limit);
    }
    let limiter = Arc::new(limiter);
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("{}: {e}", args.listen))?;
    eprintln!("ratelimit-service: listening on {}", args.listen);
    loop {
        let (socket, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move {
            if let Err(e) = serve_connection(socket, limiter).await {
                eprintln!("ratelimit-service: connection: {e}");
            }
        });
    }
}

async fn serve_connection(
    socket: tokio::net::TcpStream,
    limiter: Arc<AsyncRateLimiter>,
) -> Result<(), h2::Error> {
    let mut conn = h2::server::handshake(socket).await?;
    while let Some(request) = conn.accept().await {
        let (request, respond) = request?;
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move {
            if let Err(e) = serve_call(request, respond, limiter).await {
                eprintln!("ratelimit-service: call: {e}");
            }
        });
    }
    Ok(())
}

async fn serve_call(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    limiter: Arc<AsyncRateLimiter>,
) -> Result<(), h2::Error> {
    let path = request.uri().path().to_owned();
    let mut body = request.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    let outcome = if path != PATH {
        Err((12, format!("unimplemented: {path}")))
    } else {
        match unframe(buf.freeze()) {
            Some(message) => match rls::RateLimitRequest::decode(message) {
                Ok(req) => should_rate_limit(&limiter, req).await,
                Err(e) => Err((3, format!("bad request: {e}"))),
            },
            None => Err((3, "bad gRPC frame".to_owned())),
        }
    };
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap_or_default();
    let mut send = respond.send_response(head, false)?;
    let mut trailers = http::HeaderMap::new();
    match outcome {
        Ok(response) => {
            let message = response.encode_to_vec();
            let mut framed = BytesMut::with_capacity(message.len() + 5);
            framed.put_u8(0);
            framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
            framed.extend_from_slice(&message);
            send.send_data(framed.freeze(), false)?;
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        }
        Err((status, message)) => {
            trailers.insert("grpc-status", http::HeaderValue::from(status));
            if let Ok(v) = http::HeaderValue::from_str(&message.replace(['\r', '\n'], " ")) {
                trailers.insert("grpc-message", v);
            }
        }
    }
    send.send_trailers(trailers)
}

/// The one message of a unary gRPC body: 1 byte "compressed" flag (must be 0), 4 bytes big-endian length.
fn unframe(mut buf: Bytes) -> Option<Bytes> {
    if buf.len() < 5 || buf.get_u8() != 0 {
        return None;
    }
    let len = usize::try_from(buf.get_u32()).ok()?;
    (buf.len() == len).then_some(buf)
}

async fn should_rate_limit(
    limiter: &AsyncRateLimiter,
    req: rls::RateLimitRequest,
) -> Result<rls::RateLimitResponse, (u32, String)> {
    if req.domain.is_empty() {
        return Err((3, "domain must not be empty".to_owned()));
    }
    let descriptors: Vec<HashMap<String, String>> = req
        .descriptors
        .iter()
        .map(|d| {
            d.entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect()
        })
        .collect();
    let mut ctx = Context::default();
    ctx.list_binding("descriptors".to_owned(), descriptors);
    let delta = u64::from(req.hits_addend.max(1));
    let namespace = req.domain.as_str().into();
    // Limitador's plain `check_rate_limited_and_update` reads the counters, then increments them in a second
    // round trip: concurrent calls can all read "below the limit" and all pass. Its reservations are atomic
    // (one Lua script checks every counter against its value plus the live holds, and holds `delta` on all or
    // none), so admission goes through them: reserve, then commit the hits (increment, release the hold).
    let mut result = limiter
        .reserve(&namespace, &ctx, delta, None)
        .await
        .map_err(|e| (14, format!("storage: {e}")))?;
    if !result.limited {
        if let Some(id) = &result.reservation_id {
            limiter
                .commit_reservation(&namespace, &ctx, Some(id), delta)
                .await
                .map_err(|e| (14, format!("storage: {e}")))?;
        }
    }
    let code = if result.limited {
        rls::OVER_LIMIT
    } else {
        rls::OK
    };
    // The most restrictive counter first (fewest remaining), its reset time is what the caller waits for.
    result
        .counters
        .sort_by_key(|c| c.remaining().unwrap_or(c.max_value()));
    let status = result.counters.first().map(|c| rls::DescriptorStatus {
        code,
        current_limit: Some(rls::RateLimit {
            requests_per_unit: u32::try_from(c.max_value()).unwrap_or(u32::MAX),
            unit: rls::UNIT_SECOND,
            name: c.limit().name().unwrap_or_default().to_owned(),
        }),
        limit_remaining: u32::try_from(c.remaining().unwrap_or(c.max_value())).unwrap_or(u32::MAX),
        duration_until_reset: c.expires_in().map(|d| rls::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        }),
    });
    let statuses = req
        .descriptors
        .iter()
        .map(|_| {
            status.clone().unwrap_or(rls::DescriptorStatus {
                code: rls::OK,
                ..Default::default()
            })
        })
        .collect();
    Ok(rls::RateLimitResponse {
        overall_code: code,
        statuses,
    })
}
