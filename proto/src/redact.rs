//! Hiding tunnel keys in text meant for logs. A tunnel URL carries its key in the userinfo
//! (`server://KEY@host:port/...`), and the same URL shows up in log lines ("Server started:
//! ...", "Instance created: ..."). Logs are read by more people than the key is meant for
//! (journald, log shippers, every SSE subscriber), so every log line goes through
//! [`mask_tunnel_keys`] before it is written. Only logs are masked: the API's `url` field
//! keeps the key, because a dashboard needs it to build the matching other end.

use std::borrow::Cow;

/// What a masked key reads as.
pub const MASK: &str = "****";

/// Schemes whose userinfo is a tunnel key.
const SCHEMES: [&str; 2] = ["server://", "client://"];

/// Replaces the userinfo of every `server://` and `client://` URL in `text` with
/// [`MASK`]; text without such a URL is returned as is, without copying.
///
/// The authority of a URL ends at the first `/`, `?`, `#`, whitespace or quote; its
/// userinfo is everything before the last `@` in it (the rule Go's url.Parse applies, so
/// a key containing `@` is hidden whole).
///
/// ```
/// use nodepass_proto::redact::mask_tunnel_keys;
/// assert_eq!(
///     mask_tunnel_keys("Server started: server://s3cret@:10101/127.0.0.1:8080?log=info"),
///     "Server started: server://****@:10101/127.0.0.1:8080?log=info"
/// );
/// assert_eq!(mask_tunnel_keys("client://:10101/x:1"), "client://:10101/x:1");
/// ```
pub fn mask_tunnel_keys(text: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    // `copied` is how much of `text` is already in `out`; `from` where the next search
    // starts.
    let mut copied = 0;
    let mut from = 0;
    while let Some((at, scheme_len)) = find_scheme(text, from) {
        let auth_start = at + scheme_len;
        let auth_len = text[auth_start..]
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '`') || c.is_whitespace())
            .unwrap_or(text.len() - auth_start);
        let authority = &text[auth_start..auth_start + auth_len];
        if let Some(user_len) = authority.rfind('@').filter(|&n| n > 0) {
            let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
            buf.push_str(&text[copied..auth_start]);
            buf.push_str(MASK);
            copied = auth_start + user_len;
        }
        from = auth_start + auth_len;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut buf) => {
            buf.push_str(&text[copied..]);
            Cow::Owned(buf)
        }
    }
}

/// [`mask_tunnel_keys`] for an owned line: returns it unchanged (no copy) when it holds
/// no key.
pub fn mask_tunnel_keys_owned(text: String) -> String {
    let masked = match mask_tunnel_keys(&text) {
        Cow::Owned(m) => Some(m),
        Cow::Borrowed(_) => None,
    };
    masked.unwrap_or(text)
}

/// The next tunnel scheme (ASCII case-insensitive) at or after byte `from`: its start and
/// length.
fn find_scheme(text: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut i = from;
    while let Some(pos) = text[i..].find("://") {
        let colon = i + pos;
        for scheme in SCHEMES {
            let name_len = scheme.len() - 3;
            if colon >= name_len
                && bytes[colon - name_len..colon]
                    .eq_ignore_ascii_case(&scheme.as_bytes()[..name_len])
            {
                return Some((colon - name_len, scheme.len()));
            }
        }
        i = colon + 3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_key_of_each_tunnel_url() {
        assert_eq!(
            mask_tunnel_keys("Instance created: client://k1@10.0.0.1:10101/:8080 [ab12cd34]"),
            "Instance created: client://****@10.0.0.1:10101/:8080 [ab12cd34]"
        );
        assert_eq!(
            mask_tunnel_keys("a server://x@h:1 and CLIENT://y@h:2?min=1 end"),
            "a server://****@h:1 and CLIENT://****@h:2?min=1 end"
        );
        // A key with an `@` in it is hidden whole (Go splits at the last `@`).
        assert_eq!(
            mask_tunnel_keys("server://a@b@h:1/t:2"),
            "server://****@h:1/t:2"
        );
        // URL at the very end, no path.
        assert_eq!(
            mask_tunnel_keys("url=server://abc@[::1]:1"),
            "url=server://****@[::1]:1"
        );
        // Quoted in a message.
        assert_eq!(
            mask_tunnel_keys("bad URL \"client://k@h:1/x:2?tls=9\""),
            "bad URL \"client://****@h:1/x:2?tls=9\""
        );
    }

    #[test]
    fn leaves_everything_else_alone() {
        for text in [
            "",
            "Server started",
            "server://:10101/127.0.0.1:8080",
            "server://@:10101/127.0.0.1:8080",
            "master://0.0.0.0:9090/api?log=info",
            "http://user@example.com/",
            "client://host:1/target?x=a@b",
            "client://",
            "ends with scheme client:/",
        ] {
            assert!(
                matches!(mask_tunnel_keys(text), Cow::Borrowed(_)),
                "{text} was changed"
            );
        }
    }

    #[test]
    fn never_panics_on_any_text() {
        for text in [
            "server://@",
            "server://é@ü",
            "client://a@",
            "xserver://k@h",
            "::///",
        ] {
            let masked = mask_tunnel_keys(text);
            assert!(!masked.contains("k@"), "{masked}");
        }
    }
}
