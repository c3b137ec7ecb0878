//! The request signing scheme of the API contract (HMAC over a canonical string,
//! with a key derived from the date and the host), legacy Sorna headers included.
//! Pure functions; the gateway middleware applies them to requests.

use std::cell::RefCell;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::error::{ApiError, Problem};

/// The hash behind `signMethod=HMAC-<NAME>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// The default.
    Sha256,
    /// Stronger.
    Sha512,
    /// Legacy clients.
    Sha1,
    /// Legacy clients.
    Md5,
}

impl HashAlgorithm {
    fn parse(name: &str) -> Option<Self> {
        [("SHA256", Self::Sha256), ("SHA512", Self::Sha512), ("SHA1", Self::Sha1), ("MD5", Self::Md5)]
            .into_iter()
            .find_map(|(known, algorithm)| name.eq_ignore_ascii_case(known).then_some(algorithm))
    }

    /// The hex digest of an empty body (GET requests, multipart uploads, upgrades).
    pub fn empty_hex_digest(self) -> &'static str {
        match self {
            Self::Sha256 => "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            Self::Sha512 => {
                "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
                 47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
            }
            Self::Sha1 => "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            Self::Md5 => "d41d8cd98f00b204e9800998ecf8427e",
        }
    }

    /// The hex digest of `data`.
    pub fn hex_digest(self, data: &[u8]) -> String {
        match self {
            Self::Sha256 => hex::encode(sha2::Sha256::digest(data)),
            Self::Sha512 => hex::encode(sha2::Sha512::digest(data)),
            Self::Sha1 => hex::encode(sha1::Sha1::digest(data)),
            Self::Md5 => hex::encode(md5::Md5::digest(data)),
        }
    }

    /// HMAC of `message` under `key`.
    pub fn hmac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            // HMAC takes keys of any length, so this cannot fail.
            match <M as hmac::digest::KeyInit>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(message);
                    mac.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            }
        }
        match self {
            Self::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
            Self::Sha512 => run::<Hmac<sha2::Sha512>>(key, message),
            Self::Sha1 => run::<Hmac<sha1::Sha1>>(key, message),
            Self::Md5 => run::<Hmac<md5::Md5>>(key, message),
        }
    }
}

/// The parsed `Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential<'a> {
    /// The hash of the signature.
    pub algorithm: HashAlgorithm,
    /// The access key that signed.
    pub access_key: &'a str,
    /// The hex signature as sent (either case).
    pub signature: &'a str,
}

fn invalid(detail: &str) -> ApiError {
    ApiError::new(Problem::InvalidAuthParams).with_detail(detail)
}

/// Parses `BackendAI signMethod=HMAC-SHA256, credential=<ACCESS_KEY>:<SIGNATURE>`
/// (or the legacy `Sorna` type name).
pub fn parse_authorization(value: &str) -> Result<Credential<'_>, ApiError> {
    let (kind, params) =
        value.trim().split_once(char::is_whitespace).ok_or_else(|| invalid("malformed Authorization header"))?;
    if !(kind == "BackendAI" || kind == "Sorna") {
        return Err(invalid("unsupported authorization type"));
    }
    let mut algorithm = None;
    let mut credential = None;
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("signMethod", method)) => algorithm = Some(method.trim()),
            Some(("credential", value)) => credential = Some(value.trim()),
            _ => {}
        }
    }
    let method = algorithm.ok_or_else(|| invalid("signMethod is missing"))?;
    let algorithm =
        method.strip_prefix("HMAC-").and_then(HashAlgorithm::parse).ok_or_else(|| invalid("unsupported signMethod"))?;
    let (access_key, signature) =
        credential.and_then(|c| c.split_once(':')).ok_or_else(|| invalid("credential is missing or malformed"))?;
    let valid_key =
        !access_key.is_empty() && access_key.len() <= 64 && access_key.bytes().all(|b| b.is_ascii_alphanumeric());
    let valid_signature =
        !signature.is_empty() && signature.len() <= 256 && signature.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_key || !valid_signature {
        return Err(invalid("credential is malformed"));
    }
    Ok(Credential { algorithm, access_key, signature })
}

/// Parses an ISO 8601 date (no offset means UTC), or an RFC 2822 HTTP date.
pub fn parse_date(value: &str) -> Result<DateTime<FixedOffset>, ApiError> {
    let value = value.trim();
    if let Ok(date) = DateTime::parse_from_rfc3339(value) {
        return Ok(date);
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(date) = DateTime::parse_from_str(value, format) {
            return Ok(date);
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S", "%Y%m%dT%H%M%SZ"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(value, format) {
            return Ok(Utc.from_utc_datetime(&naive).fixed_offset());
        }
    }
    DateTime::parse_from_rfc2822(value).map_err(|_| invalid("unparsable date"))
}

/// Checks that `date` is within `max_skew_secs` of `now`.
pub fn check_skew(date: DateTime<FixedOffset>, now: DateTime<Utc>, max_skew_secs: i64) -> Result<(), ApiError> {
    // Exact to the millisecond: 15 min + 1 ms is out, on either side.
    let skew_ms = (now - date.with_timezone(&Utc)).num_milliseconds().abs();
    if skew_ms > max_skew_secs.saturating_mul(1000) {
        return Err(invalid("date is too far from the server time"));
    }
    Ok(())
}

/// The parts of a request that its signature covers.
#[derive(Clone, Debug)]
pub struct SignedParts<'a> {
    /// The HTTP method, upper-case.
    pub method: &'a str,
    /// The path and query as sent.
    pub path_and_query: &'a str,
    /// The date header value, exactly as sent.
    pub date_header: &'a str,
    /// The parsed date (its own offset decides the signing day).
    pub date: DateTime<FixedOffset>,
    /// The Host header, port included when present.
    pub host: &'a str,
    /// The lower-case mime type without parameters.
    pub content_type: &'a str,
    /// `x-backendai-version` or the legacy `x-sorna-version`.
    pub version_header: &'a str,
    /// That header's value.
    pub version: &'a str,
    /// The hex hash of the body (of an empty body for multipart requests).
    pub body_hash: &'a str,
}

/// A digest of at most 64 bytes (SHA-512), on the stack.
struct RawDigest {
    bytes: [u8; 64],
    len: usize,
}

impl RawDigest {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// An HMAC already keyed with a derived signing key: cloning it skips the two
/// compressions of the key pads that keying costs.
#[derive(Clone)]
enum KeyedMac {
    Sha256(Hmac<sha2::Sha256>),
    Sha512(Hmac<sha2::Sha512>),
    Sha1(Hmac<sha1::Sha1>),
    Md5(Hmac<md5::Md5>),
}

impl KeyedMac {
    fn new(algorithm: HashAlgorithm, key: &[u8]) -> Option<Self> {
        // HMAC takes keys of any length, so these cannot fail.
        Some(match algorithm {
            HashAlgorithm::Sha256 => Self::Sha256(<Hmac<sha2::Sha256> as Mac>::new_from_slice(key).ok()?),
            HashAlgorithm::Sha512 => Self::Sha512(<Hmac<sha2::Sha512> as Mac>::new_from_slice(key).ok()?),
            HashAlgorithm::Sha1 => Self::Sha1(<Hmac<sha1::Sha1> as Mac>::new_from_slice(key).ok()?),
            HashAlgorithm::Md5 => Self::Md5(<Hmac<md5::Md5> as Mac>::new_from_slice(key).ok()?),
        })
    }

    /// The HMAC of the canonical string of `parts`, fed piece by piece.
    fn signature(&self, parts: &SignedParts<'_>) -> RawDigest {
        fn run<M: Mac + Clone>(mac: &M, parts: &SignedParts<'_>) -> RawDigest {
            let mut mac = mac.clone();
            for piece in [
                parts.method,
                "\n",
                parts.path_and_query,
                "\n",
                parts.date_header,
                "\nhost:",
                parts.host,
                "\ncontent-type:",
                parts.content_type,
                "\n",
                parts.version_header,
                ":",
                parts.version,
                "\n",
                parts.body_hash,
            ] {
                mac.update(piece.as_bytes());
            }
            let out = mac.finalize().into_bytes();
            let mut digest = RawDigest { bytes: [0; 64], len: out.len().min(64) };
            digest.bytes[..digest.len].copy_from_slice(&out[..digest.len]);
            digest
        }
        match self {
            Self::Sha256(mac) => run(mac, parts),
            Self::Sha512(mac) => run(mac, parts),
            Self::Sha1(mac) => run(mac, parts),
            Self::Md5(mac) => run(mac, parts),
        }
    }
}

/// The HMAC keyed with the key that signs requests of one day (in the date's own offset)
/// to one host: `HMAC(HMAC(secret, "YYYYMMDD"), host)`.
fn signing_mac(algorithm: HashAlgorithm, secret_key: &str, day: NaiveDate, host: &str) -> Option<KeyedMac> {
    let day = format!("{:04}{:02}{:02}", day.year(), day.month(), day.day());
    let k1 = algorithm.hmac(secret_key.as_bytes(), day.as_bytes());
    KeyedMac::new(algorithm, &algorithm.hmac(&k1, host.as_bytes()))
}

/// Whether the hex `signature` (either case) is the signature of `parts` under `mac`,
/// compared in constant time.
fn verify_with_mac(mac: &KeyedMac, parts: &SignedParts<'_>, signature: &str) -> bool {
    let digest = mac.signature(parts);
    let mut sent = [0u8; 64];
    let sent = &mut sent[..digest.len];
    // The length is public (it follows from the algorithm); the bytes are compared in
    // constant time. Only the lower-case hex the contract defines is a signature.
    let lower_hex = signature.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if signature.len() != digest.len * 2 || !lower_hex || hex::decode_to_slice(signature, sent).is_err() {
        return false;
    }
    digest.as_slice().ct_eq(sent).into()
}

/// The signature of a request, in hex.
pub fn sign(algorithm: HashAlgorithm, secret_key: &str, parts: &SignedParts<'_>) -> String {
    signing_mac(algorithm, secret_key, parts.date.date_naive(), parts.host)
        .map(|mac| hex::encode(mac.signature(parts).as_slice()))
        .unwrap_or_default()
}

/// How many derived signing keys each thread keeps.
const KEY_CACHE_SIZE: usize = 16;

thread_local! {
    /// Recently derived signing keys of this thread (no lock is shared between the
    /// server's worker threads), the most recent last.
    static SIGNING_KEYS: RefCell<Vec<CachedKey>> = const { RefCell::new(Vec::new()) };
}

struct CachedKey {
    algorithm: HashAlgorithm,
    /// The secret it was derived from (a key's secret may change).
    secret_key: String,
    day: NaiveDate,
    host: String,
    mac: KeyedMac,
}

/// Whether `signature` signs `parts` under `secret_key`, compared in constant time. The
/// keyed HMAC comes from a per-thread cache: a client signs every request of a day to a
/// host with the same derived key, so two of the three HMACs of a request are done once.
pub fn verify(algorithm: HashAlgorithm, secret_key: &str, parts: &SignedParts<'_>, signature: &str) -> bool {
    let day = parts.date.date_naive();
    SIGNING_KEYS.with_borrow_mut(|cache| {
        let hit = cache.iter().position(|c| {
            c.algorithm == algorithm
                && c.day == day
                && c.host == parts.host
                && bool::from(c.secret_key.as_bytes().ct_eq(secret_key.as_bytes()))
        });
        let index = match hit {
            Some(index) => index,
            None => {
                let Some(mac) = signing_mac(algorithm, secret_key, day, parts.host) else {
                    return false;
                };
                if cache.len() == KEY_CACHE_SIZE {
                    cache.remove(0);
                }
                let (secret_key, host) = (secret_key.to_owned(), parts.host.to_owned());
                cache.push(CachedKey { algorithm, secret_key, day, host, mac });
                cache.len() - 1
            }
        };
        verify_with_mac(&cache[index].mac, parts, signature)
    })
}

/// A new access key (`AKIA` + 16 base32 characters) and a URL-safe secret key.
pub fn generate_keypair() -> (String, String) {
    use base64::Engine;
    const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    use rand::Rng;
    let mut rng = rand::rng();
    let access_key: String =
        "AKIA".chars().chain((0..16).map(|_| BASE32[rng.random_range(0..BASE32.len())] as char)).collect();
    let secret: [u8; 30] = rng.random();
    (access_key, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn parts(date_header: &str) -> SignedParts<'_> {
        SignedParts {
            method: "GET",
            path_and_query: "/v2/authorize",
            date_header,
            date: parse_date(date_header).unwrap_or_else(|e| panic!("{e}")),
            host: "127.0.0.1:8080",
            content_type: "application/json",
            version_header: "x-backendai-version",
            version: "v2.20170315",
            // sha256 of {"echo": "hi"}
            body_hash: "729eb111e0922a37066b9911e8862336875d936c7375a856c59f6d6d196d7e06",
        }
    }

    /// Computed with `ai.backend.client.auth.generate_signature` of the SDK 1.0.6.
    #[test]
    fn matches_the_official_sdk() {
        let date = "2026-11-28T05:31:58.123456+00:00";
        let expected = "acae20f02746d6772ecd4e60b10940ad57afa4fc2650bd43d573aa84c13c4267";
        assert_eq!(sign(HashAlgorithm::Sha256, SECRET, &parts(date)), expected);
        assert!(verify(HashAlgorithm::Sha256, SECRET, &parts(date), expected));
    }

    #[test]
    fn empty_digests_are_the_digests_of_nothing() {
        for algorithm in [HashAlgorithm::Sha256, HashAlgorithm::Sha512, HashAlgorithm::Sha1, HashAlgorithm::Md5] {
            assert_eq!(algorithm.empty_hex_digest(), algorithm.hex_digest(b""), "{algorithm:?}");
        }
    }

    #[test]
    fn the_key_cache_verifies_like_the_uncached_path() {
        let date = "2026-11-28T05:31:58.123456+00:00";
        let expected = "acae20f02746d6772ecd4e60b10940ad57afa4fc2650bd43d573aa84c13c4267";
        for _ in 0..2 {
            assert!(verify(HashAlgorithm::Sha256, SECRET, &parts(date), expected));
            assert!(!verify(HashAlgorithm::Sha256, SECRET, &parts(date), &expected.replace('a', "b")));
        }
        // Another secret, day, host or algorithm is not served from the cache.
        assert!(!verify(HashAlgorithm::Sha256, "another secret", &parts(date), expected));
        assert!(verify(HashAlgorithm::Sha256, SECRET, &parts(date), expected));
        let next_day = "2026-11-29T05:31:58+00:00";
        assert!(!verify(HashAlgorithm::Sha256, SECRET, &parts(next_day), expected));
        let signature = sign(HashAlgorithm::Sha256, SECRET, &parts(next_day));
        assert!(verify(HashAlgorithm::Sha256, SECRET, &parts(next_day), &signature));
        let mut other_host = parts(next_day);
        other_host.host = "localhost:8080";
        assert!(!verify(HashAlgorithm::Sha256, SECRET, &other_host, &signature));
        let sha1 = sign(HashAlgorithm::Sha1, SECRET, &parts(next_day));
        assert!(!verify(HashAlgorithm::Sha256, SECRET, &parts(next_day), &sha1));
        assert!(verify(HashAlgorithm::Sha1, SECRET, &parts(next_day), &sha1));
        // A truncated signature never matches, nor one in upper-case hex (the contract's
        // signature is lower-case).
        assert!(!verify(HashAlgorithm::Sha1, SECRET, &parts(next_day), &sha1[..20]));
        assert!(!verify(HashAlgorithm::Sha1, SECRET, &parts(next_day), &sha1.to_ascii_uppercase()));
        // More secrets than the cache holds: the oldest are derived again, correctly.
        let secrets: Vec<String> = (0..KEY_CACHE_SIZE * 2).map(|i| format!("secret-{i}")).collect();
        for _ in 0..2 {
            for secret in &secrets {
                let signature = sign(HashAlgorithm::Sha256, secret, &parts(date));
                assert!(verify(HashAlgorithm::Sha256, secret, &parts(date), &signature));
                assert!(!verify(HashAlgorithm::Sha256, SECRET, &parts(date), &signature));
            }
        }
    }

    #[test]
    fn signing_day_follows_the_dates_own_offset() {
        // 23:30 at -05:00 is the next day in UTC: the key must use the local day.
        let local = parts("2026-11-27T23:30:00-05:00");
        let utc = parts("2026-11-28T04:30:00+00:00");
        assert_ne!(sign(HashAlgorithm::Sha256, SECRET, &local), sign(HashAlgorithm::Sha256, SECRET, &utc));
    }

    #[test]
    fn a_changed_part_fails_verification() {
        let date = "2026-11-28T05:31:58+00:00";
        let signature = sign(HashAlgorithm::Sha256, SECRET, &parts(date));
        let mut other = parts(date);
        other.path_and_query = "/v2/authorize?x=1";
        assert!(!verify(HashAlgorithm::Sha256, SECRET, &other, &signature));
        assert!(!verify(HashAlgorithm::Sha256, "another secret", &parts(date), &signature));
    }

    #[test]
    fn parses_authorization_headers() {
        let credential =
            parse_authorization("BackendAI signMethod=HMAC-SHA256, credential=AKIAIOSFODNN7EXAMPLE:ABCDEF01")
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(credential.algorithm, HashAlgorithm::Sha256);
        assert_eq!(credential.access_key, "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(credential.signature, "ABCDEF01");
        let lower = parse_authorization("BackendAI signMethod=HMAC-sha512, credential=AK:00").map(|c| c.algorithm);
        assert_eq!(lower.ok(), Some(HashAlgorithm::Sha512));
        assert!(parse_authorization("Sorna signMethod=HMAC-SHA1, credential=AK:00").is_ok());
        for bad in [
            "",
            "BackendAI",
            "Bearer abc",
            "BackendAI signMethod=HMAC-SHA256",
            "BackendAI signMethod=HMAC-CRC32, credential=AK:00",
            "BackendAI signMethod=HMAC-SHA256, credential=AK",
            "BackendAI signMethod=HMAC-SHA256, credential=A K:00",
            "BackendAI signMethod=HMAC-SHA256, credential=AK:xyz",
        ] {
            assert!(parse_authorization(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn parses_dates() {
        assert_eq!(parse_date("2026-11-28T05:31:58.123456+00:00").map(|d| d.timestamp()).ok(), Some(1_795_843_918));
        assert_eq!(parse_date("2026-11-28T05:31:58").map(|d| d.timestamp()).ok(), Some(1_795_843_918));
        assert_eq!(parse_date("Sat, 28 Nov 2026 05:31:58 GMT").map(|d| d.timestamp()).ok(), Some(1_795_843_918));
        for bad in ["", "yesterday", "2026-13-01T00:00:00", "2026-11-28T05:31:58+99:00"] {
            assert!(parse_date(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn skew_beyond_fifteen_minutes_is_refused() {
        let now = Utc::now();
        let date = |minutes: i64| (now - chrono::Duration::minutes(minutes)).fixed_offset();
        assert!(check_skew(date(14), now, 900).is_ok());
        assert!(check_skew(date(-14), now, 900).is_ok());
        assert!(check_skew(date(16), now, 900).is_err());
        assert!(check_skew(date(-16), now, 900).is_err());
    }
}
