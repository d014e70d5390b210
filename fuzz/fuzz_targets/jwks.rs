//! JWK sets through `KeySet::parse` (fetched and inline strictness, all and one algorithm), then every key
//! that loads verifies signatures of every length without panicking. Invariant: a loaded key is bound to
//! exactly one algorithm the issuer allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txngate_core::keys::{KeySet, Strictness};
use txngate_core::Algorithm;

fuzz_target!(|data: &[u8]| {
    for allowed in [
        &Algorithm::ALL[..],
        &[Algorithm::EdDSA][..],
        &[Algorithm::RS256][..],
    ] {
        for strictness in [Strictness::Fetched, Strictness::Inline] {
            let Ok((set, _skipped)) = KeySet::parse(data, allowed, strictness) else {
                continue;
            };
            for key in set.keys() {
                assert!(allowed.contains(&key.algorithm()));
                if let Some(kid) = key.kid() {
                    assert!(set.by_kid(kid).is_some());
                }
                let _ = (key.jwk(), key.fingerprint());
                for len in [0usize, 1, 63, 64, 65, 255, 256, 512] {
                    let sig: Vec<u8> = data.iter().copied().cycle().take(len).collect();
                    let _ = key.verify(b"header.payload", &sig);
                }
            }
        }
    }
});
