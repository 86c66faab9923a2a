//! JSON Canonicalization Scheme (RFC 8785) for the values attestation claims use: object
//! members sorted by their UTF-16 code units, no whitespace, strings escaped as ECMAScript's
//! `JSON.stringify` does (which is what `serde_json` writes), integers only: claims carry no
//! floating-point numbers, and a float is refused rather than risk a second rendering.

use serde_json::Value;

/// The canonical bytes of `value`; `None` if it holds a non-integer number.
pub fn canonical(value: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out)?;
    Some(out)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Option<()> {
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => {
            out.extend_from_slice(serde_json::to_string(value).ok()?.as_bytes());
        }
        Value::Number(n) => {
            if !(n.is_i64() || n.is_u64()) {
                return None;
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(serde_json::to_string(key).ok()?.as_bytes());
                out.push(b':');
                write(item, out)?;
            }
            out.push(b'}');
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(json: &str) -> String {
        String::from_utf8(canonical(&serde_json::from_str(json).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn sorts_members_and_drops_whitespace() {
        assert_eq!(
            canon(r#"{ "b": [1, {"z": null, "a": true}], "a": "x" }"#),
            r#"{"a":"x","b":[1,{"a":true,"z":null}]}"#
        );
    }

    #[test]
    fn rfc8785_string_and_ordering_examples() {
        // RFC 8785 §3.2.3: sorting by UTF-16 code units ("\u{1F600}" sorts before "\u{FB33}").
        let sorted = canon("{\"\u{fb33}\":1,\"\u{1f600}\":2,\"\\r\":3,\"1\":4,\"\u{80}\":5}");
        assert_eq!(
            sorted,
            "{\"\\r\":3,\"1\":4,\"\u{80}\":5,\"\u{1f600}\":2,\"\u{fb33}\":1}"
        );
        // Control characters short-escaped or \u00xx in lowercase; "/" and non-ASCII literal.
        assert_eq!(canon(r#""\u000f\n/\u20ac""#), "\"\\u000f\\n/\u{20ac}\"");
    }

    #[test]
    fn floats_are_refused() {
        assert!(canonical(&serde_json::json!({"a": 1.5})).is_none());
        assert!(canonical(&serde_json::json!({"a": -3})).is_some());
    }
}
