//! Request paths as an MCP server's router may read them: whether a request is for the MCP endpoint.

/// A request path as an MCP server's router may read it, to decide whether a request is for the MCP
/// endpoint: query and fragment dropped, percent-escapes decoded once, `\` read as `/`, `;parameters` dropped
/// from each segment, empty and `.` segments removed, `..` resolved, ASCII letters lowercased. The result
/// starts with `/` and has no trailing `/` (the root is `/`).
///
/// Routers differ on each of these (Express matches routes case-insensitively and ignores a trailing slash by
/// default, servlet containers drop `;jsessionid=...`, many merge slashes or decode escapes), and a spelling
/// the gate took for another path while the server routes it to its MCP endpoint would skip tool
/// authorization. Erring towards "the MCP endpoint" only puts more requests under tool authorization.
pub fn normalize_path(path: &str) -> String {
    let raw = path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(raw);
    let mut segments: Vec<String> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        match segment.split(';').next().unwrap_or("") {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            name => segments.push(name.to_ascii_lowercase()),
        }
    }
    if segments.is_empty() {
        return "/".into();
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in segments {
        out.push('/');
        out.push_str(&segment);
    }
    out
}

/// Whether [`normalize_path`] would return `path` (before any `?` or `#`) unchanged: it starts with `/`,
/// has only lowercase letters, digits and `-_.~`, no empty, `.` or `..` segment and no trailing `/` (or is
/// `/`). The common case; it lets the per-request path check skip the allocations of the full normalisation.
pub fn is_normalized(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    rest.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'-' | b'_' | b'.' | b'~')
            })
    })
}

fn percent_decode(text: &str) -> String {
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            if let (Some(high), Some(low)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                out.push(u8::try_from((high << 4) | low).unwrap_or(b'%'));
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normal_paths() {
        for path in ["/", "/mcp", "/a/b.c/d~e-f_g", "/..."] {
            assert!(is_normalized(path), "{path}");
        }
        for path in [
            "", "mcp", "/mcp/", "//mcp", "/MCP", "/a/./b", "/a/../b", "/.", "/a;b", "/a%2f",
            "/a\\b", "/mcp?x",
        ] {
            assert!(!is_normalized(path), "{path}");
        }
    }

    proptest! {
        /// The fast path agrees with the full normalisation: a path it calls normal is normalised to itself.
        #[test]
        fn is_normalized_means_normalize_is_identity(path in "[/a-zA-Z0-9._~%;?#\\\\-]{0,24}") {
            if is_normalized(&path) {
                prop_assert_eq!(normalize_path(&path), path.clone());
            }
        }
    }
}
