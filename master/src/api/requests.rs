//! Request bodies, parsed at the edge into typed values: every field type-checked, every
//! rule of the reference checked, before the state sees anything.
//!
//! Decoding follows Go's `json.Decoder` where it matters to clients: the first JSON value
//! is read and trailing bytes are ignored, `null` counts as an absent field, unknown fields
//! are ignored. Unlike the reference, a field of the wrong JSON type (a string where a
//! boolean is expected, an array where an object is ...) is a 400 that names the field,
//! also for PATCH, which the reference answers 200 without applying anything.

use std::collections::{BTreeMap, HashSet};

use nodepass_proto::go_url::{check_instance_url, GoUrlRefusal};
use nodepass_proto::url::{self, Inherited, UrlError};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::model::*;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON, cut short, or of a shape the reference also refuses without detail.
    Unreadable,
    /// Valid JSON with a value of the wrong type: the text names the field.
    WrongType(String),
}

impl BodyError {
    /// The 400 for POST and PUT (the reference's text, plus the field for a type error).
    fn into_api(self) -> ApiError {
        match self {
            BodyError::Unreadable => ApiError::bad("Invalid request body"),
            BodyError::WrongType(detail) => {
                ApiError::bad(format!("Invalid request body: {detail}"))
            }
        }
    }
}

/// Decodes the first JSON value of `body` into `T`. `objects` lists the dotted paths that
/// must hold a JSON object when present ("" is the body itself, which without a field to
/// name is [`BodyError::Unreadable`], as the reference treats it): serde would also accept
/// an array there, field by field.
pub fn decode<T: DeserializeOwned>(body: &[u8], objects: &[&str]) -> Result<T, BodyError> {
    let value = serde_json::Deserializer::from_slice(body)
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
        .ok_or(BodyError::Unreadable)?;
    for path in objects {
        let mut at = Some(&value);
        for key in path.split('.').filter(|k| !k.is_empty()) {
            at = at.and_then(|v| v.get(key));
        }
        match at {
            None | Some(serde_json::Value::Null) | Some(serde_json::Value::Object(_)) => {}
            // A body that is not an object has no field to name: the reference's answer.
            Some(_) if path.is_empty() => return Err(BodyError::Unreadable),
            Some(other) => {
                let got = json_type(other);
                return Err(BodyError::WrongType(format!(
                    "field {path} must be an object, got {got}"
                )));
            }
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.classify() != serde_json::error::Category::Data {
            return BodyError::Unreadable;
        }
        let text = inner.to_string();
        // serde's "invalid type: string \"x\", expected a boolean at line 1 column 9".
        let Some(what) = text.strip_prefix("invalid type: ") else {
            return BodyError::Unreadable;
        };
        let what = what
            .strip_suffix(&format!(
                " at line {} column {}",
                inner.line(),
                inner.column()
            ))
            .unwrap_or(what);
        let (got, expected) = what
            .split_once(", expected ")
            .unwrap_or((what, "another type"));
        // Our own struct names mean nothing to a client: they are JSON objects.
        let expected = if expected.starts_with("struct ") {
            "an object"
        } else {
            expected
        };
        BodyError::WrongType(format!("field {} must be {expected}, got {got}", e.path()))
    })
}

/// A JSON value's type, in the words serde uses.
fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "sequence",
        serde_json::Value::Object(_) => "map",
    }
}

/// Parses an instance URL and renders its stored `url` and `config` (REFERENCE 9.3), or
/// the reference's error for it.
pub fn instance_url(raw: &str, inherited: &Inherited) -> Result<InstanceUrl, ApiError> {
    if raw.len() > MAX_URL_LEN {
        return Err(ApiError::bad(format!(
            "Invalid URL format: the URL is longer than {MAX_URL_LEN} bytes"
        )));
    }
    match check_instance_url(raw) {
        Ok(()) => {}
        Err(GoUrlRefusal::Unparsable) => return Err(ApiError::bad("Invalid URL format")),
        Err(GoUrlRefusal::Scheme) => return Err(ApiError::bad("Invalid URL scheme")),
    }
    let mut t = match url::parse_tunnel_url(raw) {
        Ok(t) => t,
        Err(UrlError::Syntax(_)) => return Err(ApiError::bad("Invalid URL format")),
        Err(UrlError::Scheme(_)) => return Err(ApiError::bad("Invalid URL scheme")),
        Err(e) => return Err(ApiError::bad(format!("Invalid URL format: {e}"))),
    };
    t.inherit(inherited);
    Ok(InstanceUrl {
        kind: t.role.into(),
        url: t.to_url(),
        config: t.to_config(),
    })
}

/// POST /instances: the alias and the parsed URL.
pub fn create(body: &[u8], inherited: &Inherited) -> Result<(String, InstanceUrl), ApiError> {
    let req: CreateInstanceRequest = decode(body, &[""]).map_err(BodyError::into_api)?;
    if req.url.is_empty() {
        return Err(ApiError::bad("Invalid request body"));
    }
    Ok((req.alias, instance_url(&req.url, inherited)?))
}

/// PUT /instances/{id}: the parsed URL.
pub fn put(body: &[u8], inherited: &Inherited) -> Result<InstanceUrl, ApiError> {
    let req: PutInstanceRequest = decode(body, &[""]).map_err(BodyError::into_api)?;
    if req.url.is_empty() {
        return Err(ApiError::bad("Invalid request body"));
    }
    instance_url(&req.url, inherited)
}

/// POST /info: the new master alias.
pub fn master_alias(body: &[u8]) -> Result<String, ApiError> {
    let req: MasterAliasRequest = decode(body, &[""]).map_err(BodyError::into_api)?;
    check_len(&req.alias, "Master alias")?;
    Ok(req.alias)
}

/// What a PATCH body asks for.
#[derive(Debug)]
pub enum PatchRequest {
    /// Unreadable JSON: the reference changes nothing and answers the instance.
    Nothing,
    /// A decoded body (not validated yet: the key record ignores all but the action).
    Body(PatchInstanceRequest),
}

/// Decodes a PATCH body: a type error is a 400, other undecodable bodies change nothing.
pub fn patch_body(body: &[u8]) -> Result<PatchRequest, ApiError> {
    // JSON `null` decodes into an empty request in the reference (Go's decoder leaves the
    // struct as it is): nothing changes and the instance is answered.
    if body.trim_ascii() == b"null" {
        return Ok(PatchRequest::Nothing);
    }
    match decode::<PatchInstanceRequest>(body, &["", "meta", "meta.peer", "meta.tags"]) {
        Ok(req) => Ok(PatchRequest::Body(req)),
        Err(BodyError::Unreadable) => Ok(PatchRequest::Nothing),
        Err(e @ BodyError::WrongType(_)) => Err(e.into_api()),
    }
}

fn check_len(value: &str, what: &str) -> Result<(), ApiError> {
    if value.len() > MAX_VALUE_LEN {
        Err(ApiError::bad(format!(
            "{what} exceeds maximum length {MAX_VALUE_LEN}"
        )))
    } else {
        Ok(())
    }
}

/// Every check of a PATCH body for an instance, before anything is applied.
pub fn validate_patch(req: PatchInstanceRequest) -> Result<InstancePatch, ApiError> {
    check_len(&req.alias, "Instance alias")?;
    let action = match req.action.as_str() {
        "" => None,
        name => Some(
            Action::parse(name).ok_or_else(|| ApiError::bad(format!("Invalid action: {name}")))?,
        ),
    };
    let mut patch = InstancePatch {
        alias: Some(req.alias).filter(|a| !a.is_empty()),
        action,
        restart: req.restart,
        ..InstancePatch::default()
    };
    let Some(meta) = req.meta else {
        return Ok(patch);
    };
    patch.meta_given = true;
    if let Some(peer) = meta.peer {
        check_len(&peer.sid, "Meta peer.sid")?;
        check_len(&peer.kind, "Meta peer.type")?;
        check_len(&peer.alias, "Meta peer.alias")?;
        if !peer.sid.is_empty()
            && uuid::Uuid::parse_str(&peer.sid)
                .map(|u| u.get_version_num() != 4)
                .unwrap_or(true)
        {
            return Err(ApiError::bad(format!(
                "Meta peer.sid must be a UUID v4 (e.g. 550e8400-e29b-41d4-a716-446655440000), got {:?}",
                peer.sid
            )));
        }
        let Some(kind) = PeerKind::parse(&peer.kind) else {
            return Err(ApiError::bad(format!(
                "Meta peer.type must be \"0\", \"1\" or \"2\", got {:?}",
                peer.kind
            )));
        };
        let peer = Peer {
            sid: peer.sid,
            kind,
            alias: peer.alias,
        };
        // An empty peer object keeps the current peer (the API document's rule).
        patch.peer = Some(peer).filter(|p| !p.is_empty());
    }
    if let Some(tags) = meta.tags {
        if tags.0.len() > MAX_TAGS {
            return Err(ApiError::bad(format!(
                "Meta tags exceed maximum count {MAX_TAGS}"
            )));
        }
        let mut seen = HashSet::new();
        for (k, v) in &tags.0 {
            check_len(k, "Meta tag key")?;
            check_len(v, "Meta tag value")?;
            if !seen.insert(k.as_str()) {
                return Err(ApiError::bad(format!("Duplicate meta tag key: {k}")));
            }
        }
        patch.tags = Some(tags.0.into_iter().collect::<BTreeMap<_, _>>());
    }
    Ok(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(body: &str) -> Result<InstancePatch, ApiError> {
        match patch_body(body.as_bytes())? {
            PatchRequest::Body(req) => validate_patch(req),
            PatchRequest::Nothing => panic!("{body} is readable"),
        }
    }

    #[test]
    fn meta_validation() {
        assert!(patch(r#"{"meta":{"peer":{"sid":"550e8400-e29b-41d4-a716-446655440000","type":"2","alias":"x"}}}"#).is_ok());
        let e = patch(r#"{"meta":{"peer":{"sid":"svc-1"}}}"#).unwrap_err();
        assert!(
            e.message.starts_with("Meta peer.sid must be a UUID v4"),
            "{e:?}"
        );
        // A v1 UUID is not a v4 one.
        assert!(
            patch(r#"{"meta":{"peer":{"sid":"c232ab00-9414-11ec-b3c8-9f6bdeced846"}}}"#).is_err()
        );
        let e = patch(r#"{"meta":{"peer":{"type":"3"}}}"#).unwrap_err();
        assert!(e.message.starts_with("Meta peer.type must be"), "{e:?}");
        let long = "s".repeat(257);
        let e = patch(&format!(r#"{{"meta":{{"peer":{{"sid":"{long}"}}}}}}"#)).unwrap_err();
        assert_eq!(e.message, "Meta peer.sid exceeds maximum length 256");
        let e = patch(&format!(r#"{{"meta":{{"tags":{{"{long}":"v"}}}}}}"#)).unwrap_err();
        assert_eq!(e.message, "Meta tag key exceeds maximum length 256");
        let e = patch(&format!(r#"{{"meta":{{"tags":{{"k":"{long}"}}}}}}"#)).unwrap_err();
        assert_eq!(e.message, "Meta tag value exceeds maximum length 256");
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!(r#""k{i}":"v""#)).collect();
        let e = patch(&format!(r#"{{"meta":{{"tags":{{{}}}}}}}"#, many.join(","))).unwrap_err();
        assert_eq!(e.message, "Meta tags exceed maximum count 100");
        let e = patch(r#"{"meta":{"tags":{"env":"a","env":"b"}}}"#).unwrap_err();
        assert_eq!(e.message, "Duplicate meta tag key: env");
        let e = patch(r#"{"action":"jump"}"#).unwrap_err();
        assert_eq!(e.message, "Invalid action: jump");
        let e = patch(&format!(r#"{{"alias":"{long}"}}"#)).unwrap_err();
        assert_eq!(e.message, "Instance alias exceeds maximum length 256");
        let ok = patch(r#"{"alias":"","action":"reset","meta":{"peer":{}}}"#).unwrap();
        assert_eq!(ok.alias, None);
        assert_eq!(ok.action, Some(Action::Reset));
        assert!(ok.meta_given && ok.peer.is_none() && ok.tags.is_none());
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = patch(r#"{"restart":"yes"}"#).unwrap_err();
        assert_eq!(
            e.message,
            r#"Invalid request body: field restart must be a boolean, got string "yes""#
        );
        let e = patch(r#"{"meta":{"peer":{"sid":5}}}"#).unwrap_err();
        assert!(
            e.message
                .contains("field meta.peer.sid must be a string, got integer `5`"),
            "{e:?}"
        );
        let e = patch(r#"{"meta":[]}"#).unwrap_err();
        assert!(
            e.message
                .contains("field meta must be an object, got sequence"),
            "{e:?}"
        );
        let e = patch(r#"{"meta":{"tags":{"k":1}}}"#).unwrap_err();
        assert!(
            e.message
                .contains("field meta.tags.k must be a string, got integer `1`"),
            "{e:?}"
        );
        let e = create(br#"{"url":7}"#, &Inherited::default()).unwrap_err();
        assert_eq!(
            e.message,
            "Invalid request body: field url must be a string, got integer `7`"
        );
        let e = patch(r#"{"meta":{"peer":"x"}}"#).unwrap_err();
        assert_eq!(
            e.message,
            "Invalid request body: field meta.peer must be an object, got string"
        );
        let e = create(b"[1]", &Inherited::default()).unwrap_err();
        assert_eq!(e.message, "Invalid request body");
        assert!(matches!(patch_body(b"[]"), Ok(PatchRequest::Nothing)));
        // null is an absent field (Go's decoder), not a type error.
        assert!(patch(r#"{"restart":null,"alias":null,"meta":{"tags":null}}"#).is_ok());
        // A body of JSON `null` changes nothing, as in the Go master (which answers 200).
        assert!(matches!(patch_body(b" null "), Ok(PatchRequest::Nothing)));
        // Syntax errors keep the reference's plain answers.
        assert!(matches!(
            patch_body(br#"{"alias":"#),
            Ok(PatchRequest::Nothing)
        ));
        assert_eq!(
            create(b"{", &Inherited::default()).unwrap_err().message,
            "Invalid request body"
        );
    }

    #[test]
    fn url_errors_read_like_the_reference() {
        let inh = Inherited::default();
        assert_eq!(
            instance_url("::not a url", &inh).unwrap_err().message,
            "Invalid URL format"
        );
        assert_eq!(
            instance_url("http://127.0.0.1:1/127.0.0.1:2", &inh)
                .unwrap_err()
                .message,
            "Invalid URL scheme"
        );
        // Without any scheme Go's parser accepts the text and the scheme check refuses it.
        assert_eq!(
            instance_url("server//x", &inh).unwrap_err().message,
            "Invalid URL scheme"
        );
        assert_eq!(
            instance_url("client://a b/c:1", &inh).unwrap_err().message,
            "Invalid URL format"
        );
        let e = instance_url("client://127.0.0.1:1/127.0.0.1:2?min=abc", &inh).unwrap_err();
        assert!(e.message.starts_with("Invalid URL format: "), "{e:?}");
        let u = instance_url("client://127.0.0.1:42110/127.0.0.1:41001?log=info", &inh).unwrap();
        assert_eq!(u.kind, InstanceKind::Client);
        assert_eq!(u.url, "client://127.0.0.1:42110/127.0.0.1:41001?log=info");
        assert_eq!(u.config, "client://127.0.0.1:42110/127.0.0.1:41001?block=0&dial=auto&dns=5m0s&log=info&min=64&mode=0&notcp=0&noudp=0&proxy=0&rate=0&read=0s&slot=65536&sni=none");
    }
}
