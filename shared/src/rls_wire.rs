//! Envoy's rate limit service protocol on the wire: the protobuf encoding of
//! `envoy.service.ratelimit.v3.RateLimitRequest` and the decoding of `RateLimitResponse`, written by hand
//! (a few fields; no protobuf runtime in the filter). Host-free: the filter hands the request bytes to
//! `dispatch_grpc_call` (Envoy adds the gRPC framing) and the response bytes back to [`decode_response`].
//!
//! The decoder reads untrusted bytes (whatever the configured cluster answers): it is bounded (message
//! size, number of statuses and headers), never panics, skips unknown fields of every valid wire type and
//! refuses anything malformed with a [`WireError`].

use core::fmt;

/// `envoy.service.ratelimit.v3.RateLimitResponse.Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unknown,
    Ok,
    OverLimit,
}

impl Code {
    fn from_wire(v: u64) -> Self {
        match v {
            1 => Self::Ok,
            2 => Self::OverLimit,
            _ => Self::Unknown,
        }
    }
}

/// `envoy.config.ratelimit.v3` / `RateLimitResponse.RateLimit.Unit`: the units a limit override can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second = 1,
    Minute = 2,
    Hour = 3,
    Day = 4,
}

impl Unit {
    /// The unit whose length is exactly `seconds`, if any.
    pub fn from_seconds(seconds: u64) -> Option<Self> {
        match seconds {
            1 => Some(Self::Second),
            60 => Some(Self::Minute),
            3600 => Some(Self::Hour),
            86_400 => Some(Self::Day),
            _ => None,
        }
    }
}

/// One `RateLimitDescriptor`: its entries, in order, and an optional limit override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    /// `limit { requests_per_unit, unit }`: honoured by envoyproxy/ratelimit, ignored by Limitador.
    pub limit: Option<(u32, Unit)>,
}

/// A `RateLimitRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitRequest {
    pub domain: String,
    pub descriptors: Vec<Descriptor>,
    pub hits_addend: u32,
}

/// One `RateLimitResponse.DescriptorStatus`, the fields txngate reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub code: Option<Code>,
    /// `current_limit.requests_per_unit`, when the service matched a limit.
    pub requests_per_unit: Option<u32>,
    pub limit_remaining: u32,
    /// `duration_until_reset`, in milliseconds (rounded up).
    pub until_reset_ms: Option<u64>,
}

/// The fields of a `RateLimitResponse` txngate reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitResponse {
    pub overall_code: Code,
    pub statuses: Vec<Status>,
    /// `response_headers_to_add` (Limitador reports `X-RateLimit-Reset` there).
    pub headers: Vec<(String, String)>,
}

/// Largest response accepted (a real answer is tens of bytes).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Most statuses or headers accepted.
pub const MAX_ITEMS: usize = 64;

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    TooLarge(usize),
    Truncated,
    BadVarint,
    /// Wire types 3 and 4 (groups) and 6, 7 do not occur in these messages.
    BadWireType(u8),
    /// A field that must be a string or a message had the wrong wire type.
    Shape(&'static str),
    TooMany(&'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(n) => write!(
                f,
                "response of {n} bytes exceeds {MAX_RESPONSE_BYTES} bytes"
            ),
            Self::Truncated => f.write_str("truncated protobuf"),
            Self::BadVarint => f.write_str("malformed varint"),
            Self::BadWireType(t) => write!(f, "unsupported wire type {t}"),
            Self::Shape(field) => write!(f, "field {field} has the wrong wire type"),
            Self::TooMany(field) => write!(f, "more than {MAX_ITEMS} {field}"),
        }
    }
}

impl std::error::Error for WireError {}

// ------------------------------------------------------------------------------------------------------
// Encoding
// ------------------------------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    // proto3: a zero scalar is not written.
    if v != 0 {
        put_tag(out, field, 0);
        put_varint(out, v);
    }
}

impl RateLimitRequest {
    /// The message bytes (without gRPC framing).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        if !self.domain.is_empty() {
            put_bytes(&mut out, 1, self.domain.as_bytes());
        }
        for d in &self.descriptors {
            let mut desc = Vec::with_capacity(48);
            for (k, v) in &d.entries {
                let mut entry = Vec::with_capacity(k.len() + v.len() + 4);
                put_bytes(&mut entry, 1, k.as_bytes());
                put_bytes(&mut entry, 2, v.as_bytes());
                put_bytes(&mut desc, 1, &entry);
            }
            if let Some((requests, unit)) = d.limit {
                let mut limit = Vec::with_capacity(8);
                put_uint(&mut limit, 1, u64::from(requests));
                put_uint(&mut limit, 2, unit as u64);
                put_bytes(&mut desc, 2, &limit);
            }
            put_bytes(&mut out, 2, &desc);
        }
        put_uint(&mut out, 3, u64::from(self.hits_addend));
        out
    }
}

// ------------------------------------------------------------------------------------------------------
// Decoding
// ------------------------------------------------------------------------------------------------------

/// One field: its number and value.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let (&b, rest) = self.rest.split_first().ok_or(WireError::Truncated)?;
            self.rest = rest;
            if i == 9 && b > 1 {
                return Err(WireError::BadVarint);
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::BadVarint)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// The next field, or None at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, WireError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        let value = match (key & 7) as u8 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            t => return Err(WireError::BadWireType(t)),
        };
        Ok(Some((number, value)))
    }
}

fn as_bytes<'a>(v: Value<'a>, field: &'static str) -> Result<&'a [u8], WireError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(WireError::Shape(field)),
    }
}

fn varint(v: Value<'_>, field: &'static str) -> Result<u64, WireError> {
    match v {
        Value::Varint(n) => Ok(n),
        _ => Err(WireError::Shape(field)),
    }
}

fn decode_status(bytes: &[u8]) -> Result<Status, WireError> {
    let mut status = Status::default();
    let mut r = Reader::new(bytes);
    while let Some((number, value)) = r.field()? {
        match number {
            1 => status.code = Some(Code::from_wire(varint(value, "statuses.code")?)),
            2 => {
                let mut limit = Reader::new(as_bytes(value, "statuses.current_limit")?);
                let mut requests = 0u32;
                while let Some((n, v)) = limit.field()? {
                    if n == 1 {
                        let raw = varint(v, "current_limit.requests_per_unit")?;
                        requests = u32::try_from(raw).unwrap_or(u32::MAX);
                    }
                }
                status.requests_per_unit = Some(requests);
            }
            3 => {
                let raw = varint(value, "statuses.limit_remaining")?;
                status.limit_remaining = u32::try_from(raw).unwrap_or(u32::MAX);
            }
            4 => {
                let mut d = Reader::new(as_bytes(value, "statuses.duration_until_reset")?);
                let (mut seconds, mut nanos) = (0u64, 0u64);
                while let Some((n, v)) = d.field()? {
                    match n {
                        // int64 / int32 as varints: a negative value is 10 bytes and reads as huge;
                        // clamp it to zero (a reset in the past).
                        1 => {
                            let raw = varint(v, "duration.seconds")?;
                            seconds = if raw > i64::MAX as u64 { 0 } else { raw };
                        }
                        2 => {
                            let raw = varint(v, "duration.nanos")?;
                            nanos = if raw > 999_999_999 { 0 } else { raw };
                        }
                        _ => {}
                    }
                }
                let ms = seconds
                    .saturating_mul(1000)
                    .saturating_add(nanos.div_ceil(1_000_000));
                status.until_reset_ms = Some(ms);
            }
            _ => {}
        }
    }
    Ok(status)
}

fn decode_header(bytes: &[u8]) -> Result<(String, String), WireError> {
    let mut r = Reader::new(bytes);
    let (mut key, mut value) = (String::new(), String::new());
    while let Some((n, v)) = r.field()? {
        match n {
            1 => key = String::from_utf8_lossy(as_bytes(v, "header.key")?).into_owned(),
            2 | 3 => value = String::from_utf8_lossy(as_bytes(v, "header.value")?).into_owned(),
            _ => {}
        }
    }
    Ok((key, value))
}

/// Reads a `RateLimitResponse` (message bytes, without gRPC framing).
pub fn decode_response(bytes: &[u8]) -> Result<RateLimitResponse, WireError> {
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let mut response = RateLimitResponse {
        overall_code: Code::Unknown,
        statuses: Vec::new(),
        headers: Vec::new(),
    };
    let mut r = Reader::new(bytes);
    while let Some((number, value)) = r.field()? {
        match number {
            1 => response.overall_code = Code::from_wire(varint(value, "overall_code")?),
            2 => {
                if response.statuses.len() >= MAX_ITEMS {
                    return Err(WireError::TooMany("statuses"));
                }
                response
                    .statuses
                    .push(decode_status(as_bytes(value, "statuses")?)?);
            }
            3 => {
                if response.headers.len() >= MAX_ITEMS {
                    return Err(WireError::TooMany("response_headers_to_add"));
                }
                response
                    .headers
                    .push(decode_header(as_bytes(value, "response_headers_to_add")?)?);
            }
            _ => {}
        }
    }
    Ok(response)
}

/// Encodes a response (the harness and tests script service answers with it).
pub fn encode_response(response: &RateLimitResponse) -> Vec<u8> {
    let mut out = Vec::new();
    let code = |c: Code| match c {
        Code::Unknown => 0,
        Code::Ok => 1,
        Code::OverLimit => 2,
    };
    put_uint(&mut out, 1, code(response.overall_code));
    for s in &response.statuses {
        let mut status = Vec::new();
        if let Some(c) = s.code {
            put_uint(&mut status, 1, code(c));
        }
        if let Some(requests) = s.requests_per_unit {
            let mut limit = Vec::new();
            put_uint(&mut limit, 1, u64::from(requests));
            put_uint(&mut limit, 2, Unit::Second as u64);
            put_bytes(&mut status, 2, &limit);
        }
        put_uint(&mut status, 3, u64::from(s.limit_remaining));
        if let Some(ms) = s.until_reset_ms {
            let mut d = Vec::new();
            put_uint(&mut d, 1, ms / 1000);
            put_uint(&mut d, 2, (ms % 1000) * 1_000_000);
            put_bytes(&mut status, 4, &d);
        }
        put_bytes(&mut out, 2, &status);
    }
    for (k, v) in &response.headers {
        let mut h = Vec::new();
        put_bytes(&mut h, 1, k.as_bytes());
        put_bytes(&mut h, 2, v.as_bytes());
        put_bytes(&mut out, 3, &h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_matches_protoc_bytes() {
        // protoc --encode=envoy.service.ratelimit.v3.RateLimitRequest of
        //   domain: "d" descriptors { entries { key: "k" value: "v" } limit { requests_per_unit: 5 unit: MINUTE } }
        //   hits_addend: 1
        let req = RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![Descriptor {
                entries: vec![("k".into(), "v".into())],
                limit: Some((5, Unit::Minute)),
            }],
            hits_addend: 1,
        };
        let expected: &[u8] = &[
            0x0a, 1, b'd', // domain
            0x12, 14, // descriptors, 14 bytes
            0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', // entries
            0x12, 4, 0x08, 5, 0x10, 2, // limit
            0x18, 1, // hits_addend
        ];
        assert_eq!(req.encode(), expected);
    }

    #[test]
    fn long_strings_use_multibyte_lengths() {
        let long = "x".repeat(300);
        let req = RateLimitRequest {
            domain: long.clone(),
            descriptors: vec![],
            hits_addend: 1,
        };
        let bytes = req.encode();
        assert_eq!(&bytes[..3], &[0x0a, 0xac, 0x02]);
        assert_eq!(bytes.len(), 3 + 300 + 2);
    }

    #[test]
    fn response_round_trips() {
        let response = RateLimitResponse {
            overall_code: Code::OverLimit,
            statuses: vec![
                Status {
                    code: Some(Code::Ok),
                    requests_per_unit: Some(10),
                    limit_remaining: 3,
                    until_reset_ms: Some(1500),
                },
                Status {
                    code: Some(Code::OverLimit),
                    requests_per_unit: Some(2),
                    limit_remaining: 0,
                    until_reset_ms: Some(42_000),
                },
            ],
            headers: vec![("x-ratelimit-reset".into(), "42".into())],
        };
        assert_eq!(
            decode_response(&encode_response(&response)).unwrap(),
            response
        );
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // overall_code OK, then field 5 raw_body (bytes), field 7 (message), a fixed64 and a fixed32 field.
        let bytes = [
            0x08, 1, 0x2a, 2, b'h', b'i', 0x3a, 0, 0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0x4d, 0, 0, 0, 0,
        ];
        let r = decode_response(&bytes).unwrap();
        assert_eq!(r.overall_code, Code::Ok);
        assert!(r.statuses.is_empty());
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(decode_response(&[0x08]), Err(WireError::Truncated));
        assert_eq!(decode_response(&[0x12, 5, 0]), Err(WireError::Truncated));
        assert_eq!(decode_response(&[0x0b]), Err(WireError::BadWireType(3)));
        assert_eq!(
            decode_response(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(WireError::BadVarint)
        );
        // overall_code as a string.
        assert_eq!(
            decode_response(&[0x0a, 0]),
            Err(WireError::Shape("overall_code"))
        );
        let big = vec![0u8; MAX_RESPONSE_BYTES + 1];
        assert!(matches!(decode_response(&big), Err(WireError::TooLarge(_))));
        let many: Vec<u8> = std::iter::repeat_n([0x12u8, 0], MAX_ITEMS + 1)
            .flatten()
            .collect();
        assert_eq!(decode_response(&many), Err(WireError::TooMany("statuses")));
    }

    #[test]
    fn negative_durations_clamp_to_zero() {
        // duration_until_reset { seconds: -1 }
        let mut d = vec![0x08];
        d.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let mut status = vec![0x22, d.len() as u8];
        status.extend_from_slice(&d);
        let mut bytes = vec![0x08, 2, 0x12, status.len() as u8];
        bytes.extend_from_slice(&status);
        let r = decode_response(&bytes).unwrap();
        assert_eq!(r.statuses[0].until_reset_ms, Some(0));
    }
}
