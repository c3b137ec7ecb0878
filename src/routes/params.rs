//! The parameters of a call, wherever the clients of the 1.x line put them: a JSON body
//! (in GET and DELETE requests too), a form-encoded body, the query string, and the file
//! names of multipart parts.

use std::collections::HashMap;

use actix_web::{web, HttpRequest};
use serde_json::{Map, Value};

use crate::error::{ApiError, Problem};

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::new(Problem::InvalidApiParams).with_detail(detail)
}

/// The parameters of a call: a JSON object body (also in a GET, as clients 1.4+ send
/// them), else a form-encoded body (what client 1.5.1 sends for `ls`, whatever its
/// Content-Type says), plus the query string for what the body does not name.
pub fn params(req: &HttpRequest, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let trimmed = body.trim_ascii();
    if !trimmed.is_empty() {
        match serde_json::from_slice::<Value>(trimmed) {
            Ok(Value::Object(map)) => out = map,
            Ok(_) => return Err(bad("the body must be a JSON object")),
            Err(json_error) => {
                let text = std::str::from_utf8(trimmed).map_err(|_| bad(format!("malformed body: {json_error}")))?;
                let form = web::Query::<HashMap<String, String>>::from_query(text)
                    .map_err(|_| bad(format!("malformed body: {json_error}")))?;
                out.extend(form.into_inner().into_iter().map(|(k, v)| (k, Value::String(v))));
            }
        }
    }
    if let Ok(query) = web::Query::<HashMap<String, String>>::from_query(req.query_string()) {
        for (key, value) in query.into_inner() {
            out.entry(key).or_insert(Value::String(value));
        }
    }
    Ok(out)
}

/// The string `key`, if given.
pub fn string_param<'a>(params: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(format!("{key} must be a string"))),
    }
}

/// The strings under `key`: a list (numbers taken as their text), or one string.
pub fn string_list(params: &Map<String, Value>, key: &str) -> Result<Vec<String>, ApiError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(bad(format!("{key} must be a list of strings"))),
            })
            .collect(),
        Some(_) => Err(bad(format!("{key} must be a list of strings"))),
    }
}

/// The non-empty list of paths under `key` (`files` of a download or delete).
pub fn path_list(params: &Map<String, Value>, key: &str) -> Result<Vec<String>, ApiError> {
    let names = string_list(params, key)?;
    if names.is_empty() {
        return Err(bad("no file(s) specified!"));
    }
    Ok(names)
}

/// The file name of a multipart part: RFC 5987 `filename*` first, else `filename`
/// percent-decoded (clients send `d%2Fup.txt` for `d/up.txt`).
pub fn part_filename(disposition: Option<&actix_web::http::header::ContentDisposition>) -> Option<String> {
    let disposition = disposition?;
    if let Some(ext) = disposition.get_filename_ext() {
        if let Ok(name) = String::from_utf8(ext.value.clone()) {
            return Some(name);
        }
    }
    let raw = disposition.get_filename()?;
    Some(percent_encoding::percent_decode_str(raw).decode_utf8_lossy().into_owned())
}
