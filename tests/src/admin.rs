//! A client of the admin API for tests, and a check of its answers against the OpenAPI
//! document in the tree (`control/openapi.json`): the subset of JSON Schema the document
//! uses (`$ref`, `type`, `enum`, `properties`, `required`, `additionalProperties`, `items`,
//! `anyOf`, `minimum`).

use serde_json::Value;
use std::io::{Read, Write};
use std::net::SocketAddr;

/// One answer: status and body (JSON, or the text as a JSON string).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
    /// The raw head (status line and headers).
    pub head: String,
}

/// Sends one request to the admin listener (`Connection: close`).
pub fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if body.is_some() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!(
        "Content-Length: {}\r\n\r\n{payload}",
        payload.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = serde_json::from_str(rest).unwrap_or_else(|_| Value::String(rest.to_owned()));
    Answer {
        status,
        body,
        head: head.to_owned(),
    }
}

/// The OpenAPI document in the tree.
pub fn openapi() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../control/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks `answer` against what the document says `method template` answers with its status;
/// panics naming the first difference.
pub fn conforms(doc: &Value, method: &str, template: &str, answer: &Answer) {
    let op = &doc["paths"][template][method.to_ascii_lowercase()];
    assert!(op.is_object(), "the document has no {method} {template}");
    let code = answer.status.to_string();
    let response = &op["responses"][&code];
    assert!(
        response.is_object(),
        "{method} {template} answered {code}, which the document does not list: {}",
        answer.body
    );
    let schema = &response["content"]["application/json"]["schema"];
    if let Err(e) = check(doc, schema, &answer.body, "$") {
        panic!(
            "{method} {template} {code} breaks the document: {e}\n{:#}",
            answer.body
        );
    }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// Checks `v` against `schema`; the error names the JSON path.
pub fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = resolve(doc, schema);
    if let Some(any) = s["anyOf"].as_array() {
        return match any.iter().any(|alt| check(doc, alt, v, at).is_ok()) {
            true => Ok(()),
            false => Err(format!("{at}: matches none of anyOf: {v}")),
        };
    }
    if let Some(e) = s["enum"].as_array() {
        if !e.contains(v) {
            return Err(format!("{at}: {v} is not one of {e:?}"));
        }
    }
    let types: Vec<&str> = match &s["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ => vec![],
    };
    if !types.is_empty() && !types.iter().any(|t| type_ok(t, v)) {
        return Err(format!("{at}: {v} is not of type {types:?}"));
    }
    if let (Some(min), Some(n)) = (s["minimum"].as_i64(), v.as_i64()) {
        if n < min {
            return Err(format!("{at}: {n} is below {min}"));
        }
    }
    if let Some(o) = v.as_object() {
        for r in s["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap_or_default();
            if !o.contains_key(r) {
                return Err(format!("{at}: the required field {r:?} is missing"));
            }
        }
        let props = s["properties"].as_object();
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(p) => check(doc, p, x, &format!("{at}.{k}"))?,
                None => match &s["additionalProperties"] {
                    Value::Bool(false) => {
                        return Err(format!("{at}: the field {k:?} is not in the document"))
                    }
                    Value::Object(_) => {
                        check(doc, &s["additionalProperties"], x, &format!("{at}.{k}"))?
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(a)) = (s.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            check(doc, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}
