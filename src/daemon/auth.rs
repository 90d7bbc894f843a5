//! Who may read the HTTP listener's pages and metrics: anyone when `daemon.http_token_file`
//! is not set (the listener is loopback unless configured otherwise), else a request carrying
//! the token, as `Authorization: Bearer <token>` (Prometheus, curl) or as the password of
//! `Authorization: Basic` (a browser's own prompt, any user name). Compared in constant time:
//! both sides are hashed and every byte of the digests is looked at.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::config::HttpToken;

/// None when the request may go on; else the 401 to send.
pub fn check(token: Option<&HttpToken>, headers: &HeaderMap) -> Option<Response> {
    let token = token?;
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(credential);
    if given.is_some_and(|g| same(&g, token.token.expose())) {
        return None;
    }
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "a token is required: send it as `Authorization: Bearer <token>` (daemon.http_token_file)\n",
    )
        .into_response();
    let h = r.headers_mut();
    h.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"pgmedic\", charset=\"UTF-8\""),
    );
    h.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"pgmedic\""));
    Some(r)
}

/// The token an Authorization header carries: a bearer token, or a Basic password.
fn credential(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let pair = String::from_utf8(base64_decode(rest)?).ok()?;
        return pair.split_once(':').map(|(_, password)| password.to_string());
    }
    None
}

/// Equal, in time that depends on neither value.
fn same(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

/// Standard base64 (padding optional); None for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn token() -> HttpToken {
        HttpToken { file: "/t".into(), token: Secret::new("s3cret-token-0123456789".into()) }
    }

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn base64_decodes_with_and_without_padding_and_refuses_junk() {
        assert_eq!(base64_decode("cGdtZWRpYzpzM2NyZXQ=").unwrap(), b"pgmedic:s3cret");
        assert_eq!(base64_decode("cGdtZWRpYzpzM2NyZXQ").unwrap(), b"pgmedic:s3cret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(
            base64_decode("a").is_none()
                && base64_decode("YQ===").is_none()
                && base64_decode("Y*==").is_none()
        );
    }

    #[test]
    fn the_token_is_taken_as_bearer_or_basic_password_and_nothing_else() {
        let t = token();
        assert!(check(None, &HeaderMap::new()).is_none(), "no token configured: open");
        assert!(check(Some(&t), &with("Bearer s3cret-token-0123456789")).is_none());
        assert!(check(Some(&t), &with("bearer  s3cret-token-0123456789 ")).is_none());
        // "anyone:s3cret-token-0123456789"
        assert!(check(Some(&t), &with("Basic YW55b25lOnMzY3JldC10b2tlbi0wMTIzNDU2Nzg5")).is_none());
        for bad in [
            "Bearer s3cret-token-012345678",
            "Bearer",
            "s3cret-token-0123456789",
            "Basic czNjcmV0LXRva2VuLTAxMjM0NTY3ODk=",
        ] {
            let r = check(Some(&t), &with(bad)).expect(bad);
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(r.headers().get_all(header::WWW_AUTHENTICATE).iter().count(), 2);
        }
        assert!(check(Some(&t), &HeaderMap::new()).is_some());
    }
}
