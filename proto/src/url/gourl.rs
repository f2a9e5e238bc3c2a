//! Go's `net/url`, as far as NodePass URLs need it: how `url.Parse` splits a URL into
//! scheme, userinfo, host, path, query and fragment (and what it refuses), how
//! `url.ParseQuery` decodes the query, and how `url.String()` and `Values.Encode()` escape
//! each part when the master renders a URL back. Nothing here knows what a parameter means:
//! the NodePass rules are in `mod.rs` (addresses) and `params.rs` (query parameters).

use std::collections::BTreeMap;

use super::UrlError;

/// The pieces of a URL before any NodePass meaning is given to them, split as Go's
/// `url.Parse` splits them.
pub(super) struct RawUrl {
    pub(super) scheme: String,
    pub(super) userinfo: Option<(String, Option<String>)>,
    pub(super) host: String,
    /// Decoded path and the path as written.
    pub(super) path: String,
    pub(super) raw_path: String,
    pub(super) query: Vec<(String, String)>,
    pub(super) fragment: Option<String>,
    pub(super) force_query: bool,
}

impl RawUrl {
    pub(super) fn split(input: &str) -> Result<Self, UrlError> {
        let syntax = || UrlError::Syntax(input.to_string());
        if input.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(UrlError::Address {
                what: "URL",
                value: input.to_string(),
                reason: "it contains a control character (percent-encode it, e.g. %0A)".to_string(),
            });
        }
        // Go cuts the fragment first, then the scheme, then the query.
        let (rest, fragment) = match input.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (input, None),
        };
        let (scheme, rest) = rest.split_once("://").ok_or_else(syntax)?;
        if !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(syntax());
        }
        let scheme = scheme.to_ascii_lowercase();
        let (rest, query, force_query) = if rest.ends_with('?') && rest.matches('?').count() == 1 {
            (&rest[..rest.len() - 1], "", true)
        } else {
            let (r, q) = rest.split_once('?').unwrap_or((rest, ""));
            (r, q, false)
        };
        let (authority, raw_path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, host) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let userinfo = match userinfo {
            Some(u) => Some(split_userinfo(u)?),
            None => None,
        };
        if let Some(f) = fragment {
            percent_decode(f, false)?;
        }
        Ok(RawUrl {
            scheme,
            userinfo,
            host: host.to_string(),
            path: percent_decode(raw_path, false)?,
            raw_path: raw_path.to_string(),
            query: parse_query(query)?,
            fragment: fragment.map(str::to_string),
            force_query,
        })
    }

    /// First value of a parameter; an empty value counts as absent, as in the reference.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn unknown_params(&self, known: &[&str]) -> Vec<(String, String)> {
        let mut seen = BTreeMap::new();
        for (k, v) in &self.query {
            if !known.contains(&k.as_str()) {
                seen.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        seen.into_iter().collect()
    }
}

/// Go's userinfo rules: a limited character set, then `user[:password]`, each decoded.
fn split_userinfo(u: &str) -> Result<(String, Option<String>), UrlError> {
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.'
                    | '_'
                    | ':'
                    | '~'
                    | '!'
                    | '$'
                    | '&'
                    | '\''
                    | '('
                    | ')'
                    | '*'
                    | '+'
                    | ','
                    | ';'
                    | '='
                    | '%'
                    | '@'
            )
    };
    if !u.chars().all(allowed) {
        return Err(UrlError::Address {
            what: "tunnel key",
            value: u.to_string(),
            reason: "it contains a character that must be percent-encoded (e.g. %23 for #)"
                .to_string(),
        });
    }
    Ok(match u.split_once(':') {
        Some((user, pw)) => (
            percent_decode(user, false)?,
            Some(percent_decode(pw, false)?),
        ),
        None => (percent_decode(u, false)?, None),
    })
}

/// Go's `url.ParseQuery`: pairs split on `&`, `key=value`, `+` is a space.
fn parse_query(q: &str) -> Result<Vec<(String, String)>, UrlError> {
    let mut out = Vec::new();
    for pair in q.split('&') {
        if pair.is_empty() {
            continue;
        }
        if pair.contains(';') {
            // Go drops such a pair without a word; a silently lost setting is worse.
            return Err(UrlError::Address {
                what: "query parameter",
                value: pair.to_string(),
                reason: "';' does not separate parameters: use '&' (or %3B inside a value)"
                    .to_string(),
            });
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((percent_decode(k, true)?, percent_decode(v, true)?));
    }
    Ok(out)
}

pub(super) fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, UrlError> {
    if !s.contains(['%', '+']) {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| UrlError::Escape(s.to_string()))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Escape(s.to_string()))
}

/// The parts of a URL Go escapes differently (`encodePath`, ... in `net/url`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Enc {
    Path,
    UserPassword,
    QueryComponent,
    Fragment,
}

/// Go's `shouldEscape` for the modes we render.
fn should_escape(c: u8, mode: Enc) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => return false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => {
            return match mode {
                Enc::Path => c == b'?',
                Enc::UserPassword => matches!(c, b'@' | b'/' | b'?' | b':'),
                Enc::QueryComponent => true,
                Enc::Fragment => false,
            };
        }
        _ => {}
    }
    !(mode == Enc::Fragment && matches!(c, b'!' | b'(' | b')' | b'*'))
}

/// Go's `escape`: `%XX` in upper case, and a space as `+` in query components.
pub(super) fn go_escape(s: &str, mode: Enc) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b == b' ' && mode == Enc::QueryComponent {
            out.push('+');
        } else if should_escape(b, mode) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Go's `validEncoded`: whether a path or fragment as written can be kept as is.
pub(super) fn valid_encoded(s: &str, mode: Enc) -> bool {
    s.bytes().all(|b| {
        matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'['
                | b']'
                | b'%'
        ) || !should_escape(b, mode)
    })
}

/// Go's `url.Values.Encode`: keys sorted, each value `QueryEscape`d.
pub(super) fn encode_query(query: &BTreeMap<String, Vec<String>>) -> String {
    let mut out = String::new();
    for (k, values) in query {
        for v in values {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(&go_escape(k, Enc::QueryComponent));
            out.push('=');
            out.push_str(&go_escape(v, Enc::QueryComponent));
        }
    }
    out
}
