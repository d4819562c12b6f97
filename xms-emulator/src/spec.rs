//! Checks exchanges against a Swagger 2.0 file (the published XMS API):
//! resolves the operation by method and path, then validates query
//! parameters and bodies against the referenced definitions. Supports the
//! subset of JSON schema the swagger uses: `$ref`, `allOf`, `type`,
//! `properties`, `required`, `items`, `enum`, `additionalProperties`.
//! Properties a schema does not declare are errors too (the file never
//! sets `additionalProperties: false`, but a misspelt field is a bug).

use std::path::Path;

use serde_json::Value;

use crate::server::Exchange;

pub struct Spec {
    doc: Value,
    base_path: String,
}

/// An operation found for a request.
pub struct Operation<'a> {
    pub template: String,
    pub id: String,
    pub op: &'a Value,
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let yaml: serde_norway::Value =
            serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let doc = serde_json::to_value(yaml).map_err(|e| format!("{}: {e}", path.display()))?;
        if doc["swagger"] != "2.0" {
            return Err(format!("{} is not Swagger 2.0", path.display()));
        }
        let base_path = doc["basePath"].as_str().unwrap_or("").to_string();
        Ok(Spec { doc, base_path })
    }

    /// The operation serving `method path` (path with the base path).
    pub fn operation(&self, method: &str, path: &str) -> Option<Operation<'_>> {
        let rel = path.strip_prefix(&self.base_path)?;
        let want: Vec<&str> = rel.trim_matches('/').split('/').collect();
        let mut best: Option<(usize, Operation)> = None;
        for (template, item) in self.doc["paths"].as_object()? {
            let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
            if parts.len() != want.len() {
                continue;
            }
            let mut literal = 0;
            let fits = parts.iter().zip(&want).all(|(t, w)| {
                if t.starts_with('{') && t.ends_with('}') {
                    !w.is_empty()
                } else {
                    literal += 1;
                    t == w
                }
            });
            let Some(op) = item.get(method.to_ascii_lowercase()) else {
                continue;
            };
            // Trailing slashes matter to the file's templates (lists end in /).
            let slash_ok = template.ends_with('/') == rel.ends_with('/');
            if fits && slash_ok && best.as_ref().is_none_or(|(l, _)| literal > *l) {
                let id = op["operationId"].as_str().unwrap_or("").to_string();
                best = Some((
                    literal,
                    Operation {
                        template: template.clone(),
                        id,
                        op,
                    },
                ));
            }
        }
        best.map(|(_, o)| o)
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> Result<&'a Value, String> {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r
                    .strip_prefix("#/definitions/")
                    .ok_or_else(|| format!("unsupported $ref {r}"))?;
                let target = &self.doc["definitions"][name];
                if target.is_null() {
                    return Err(format!("$ref {r} names no definition"));
                }
                self.resolve(target)
            }
            None => Ok(schema),
        }
    }

    /// Every property a schema (with its allOf parts) declares, and whether
    /// it admits others.
    fn properties<'a>(
        &'a self,
        schema: &'a Value,
        out: &mut Vec<(&'a str, &'a Value)>,
        required: &mut Vec<&'a str>,
        open: &mut Option<&'a Value>,
    ) -> Result<(), String> {
        let schema = self.resolve(schema)?;
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            out.extend(props.iter().map(|(k, v)| (k.as_str(), v)));
        }
        if let Some(req) = schema.get("required").and_then(Value::as_array) {
            required.extend(req.iter().filter_map(Value::as_str));
        }
        if let Some(extra) = schema.get("additionalProperties") {
            *open = Some(extra);
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            for p in parts {
                self.properties(p, out, required, open)?;
            }
        }
        Ok(())
    }

    /// Validates `value` against `schema`; errors name the JSON path.
    pub fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = match self.resolve(schema) {
            Ok(s) => s,
            Err(e) => return errors.push(format!("{at}: {e}")),
        };
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !options.contains(value) {
                errors.push(format!("{at}: {value} is not one of {options:?}"));
            }
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let is_object = ty == Some("object")
            || (ty.is_none()
                && (schema.get("properties").is_some() || schema.get("allOf").is_some()));
        let type_ok = match ty {
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            Some(other) => {
                errors.push(format!("{at}: unsupported schema type {other}"));
                return;
            }
            None => !is_object || value.is_object(),
        };
        if !type_ok {
            errors.push(format!(
                "{at}: expected {}, got {value}",
                ty.unwrap_or("object")
            ));
            return;
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, v) in array.iter().enumerate() {
                self.validate(items, v, &format!("{at}[{i}]"), errors);
            }
        }
        if let (true, Some(object)) = (is_object, value.as_object()) {
            let (mut props, mut required, mut open) = (vec![], vec![], None);
            if let Err(e) = self.properties(schema, &mut props, &mut required, &mut open) {
                return errors.push(format!("{at}: {e}"));
            }
            for r in required {
                if !object.contains_key(r) {
                    errors.push(format!("{at}: required property {r} is missing"));
                }
            }
            for (k, v) in object {
                match props.iter().find(|(name, _)| name == k) {
                    Some((_, s)) => self.validate(s, v, &format!("{at}.{k}"), errors),
                    None => match open {
                        Some(extra) if extra.is_object() => {
                            self.validate(extra, v, &format!("{at}.{k}"), errors)
                        }
                        Some(Value::Bool(true)) => {}
                        _ => errors.push(format!("{at}: property {k} is not in the schema")),
                    },
                }
            }
        }
    }

    /// Everything wrong with one exchange, as seen by the spec.
    pub fn check(&self, ex: &Exchange) -> Vec<String> {
        let what = format!("{} {}", ex.method, ex.path);
        let Some(op) = self.operation(&ex.method, &ex.path) else {
            return vec![format!("{what}: no such operation in the swagger")];
        };
        let mut errors = vec![];
        let params: Vec<&Value> = op.op["parameters"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        // Query parameters: declared, and of the declared type.
        for (k, v) in &ex.query {
            let declared = params
                .iter()
                .find(|p| p["in"] == "query" && p["name"] == k.as_str());
            let via_security = k == "token";
            match declared {
                None if via_security => {}
                None => errors.push(format!(
                    "{what} ({}): query parameter {k} is not declared",
                    op.id
                )),
                Some(p) if p["type"] == "integer" && v.parse::<i64>().is_err() => {
                    errors.push(format!(
                        "{what} ({}): query parameter {k}={v} is not an integer",
                        op.id
                    ))
                }
                Some(_) => {}
            }
        }
        // Path parameters of type integer.
        let tparts: Vec<&str> = op.template.trim_matches('/').split('/').collect();
        let rel = ex.path.strip_prefix(&self.base_path).unwrap_or(&ex.path);
        for (t, w) in tparts.iter().zip(rel.trim_matches('/').split('/')) {
            if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                let p = params
                    .iter()
                    .find(|p| p["in"] == "path" && p["name"] == name);
                if p.is_some_and(|p| p["type"] == "integer") && w.parse::<i64>().is_err() {
                    errors.push(format!(
                        "{what} ({}): path parameter {name}={w} is not an integer",
                        op.id
                    ));
                }
            }
        }
        // Request body.
        let body_param = params.iter().find(|p| p["in"] == "body");
        match (body_param, &ex.request) {
            (Some(p), Some(body)) => {
                let mut e = vec![];
                self.validate(&p["schema"], body, "request", &mut e);
                errors.extend(e.into_iter().map(|e| format!("{what} ({}): {e}", op.id)));
            }
            (Some(p), None) if p["required"] == true => {
                errors.push(format!("{what} ({}): the required body is missing", op.id))
            }
            (None, Some(_)) => errors.push(format!(
                "{what} ({}): sends a body the operation does not take",
                op.id
            )),
            _ => {}
        }
        // Response.
        let responses = &op.op["responses"];
        let declared = &responses[ex.status.to_string()];
        if declared.is_null() {
            // 401 is how XMS answers an expired token on any operation
            // (the security definitions); injected faults are off-spec on purpose.
            if !(ex.status == 401 || ex.injected) {
                errors.push(format!(
                    "{what} ({}): status {} is not declared",
                    op.id, ex.status
                ));
            }
        } else if let Some(schema) = declared.get("schema") {
            match &ex.response {
                Some(body) => {
                    let mut e = vec![];
                    self.validate(schema, body, "response", &mut e);
                    errors.extend(
                        e.into_iter()
                            .map(|e| format!("{what} ({}) {}: {e}", op.id, ex.status)),
                    );
                }
                None => errors.push(format!(
                    "{what} ({}): {} without the declared body",
                    op.id, ex.status
                )),
            }
        }
        // The token goes where the security definitions say.
        let secured = op.op.get("security").is_some();
        if secured
            && !ex.headers.iter().any(|h| h == "xms-auth-token")
            && !ex.query.iter().any(|(k, _)| k == "token")
        {
            errors.push(format!("{what} ({}): sent without a token", op.id));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Spec {
        let doc = json!({
            "swagger": "2.0", "basePath": "/v1",
            "paths": {
                "/things/": {"get": {"operationId": "ListThings", "parameters": [
                    {"in": "query", "name": "limit", "type": "integer"}],
                    "responses": {"200": {"schema": {"$ref": "#/definitions/ThingsResp"}}}}},
                "/things/{id}": {"patch": {"operationId": "UpdateThing", "parameters": [
                    {"in": "path", "name": "id", "type": "integer"},
                    {"in": "body", "name": "body", "required": true, "schema": {"$ref": "#/definitions/Thing"}}],
                    "responses": {"202": {"schema": {"$ref": "#/definitions/Thing"}}}}},
            },
            "definitions": {
                "ThingsResp": {"type": "object", "required": ["things"], "properties": {
                    "things": {"type": "array", "items": {"$ref": "#/definitions/Record"}}}},
                "Record": {"allOf": [{"$ref": "#/definitions/Thing"}, {"properties": {"extra": {"type": "string"}}}]},
                "Thing": {"type": "object", "properties": {
                    "size": {"type": "integer"}, "kind": {"type": "string", "enum": ["a", "b"]}}},
            }
        });
        Spec {
            doc,
            base_path: "/v1".into(),
        }
    }

    fn ex(
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        req: Option<Value>,
        status: u16,
        resp: Value,
    ) -> Exchange {
        Exchange {
            method: method.into(),
            path: path.into(),
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            headers: vec![],
            request: req,
            status,
            response: Some(resp),
            injected: false,
        }
    }

    #[test]
    fn good_exchanges_pass() {
        let s = spec();
        let e = ex(
            "GET",
            "/v1/things/",
            &[("limit", "5")],
            None,
            200,
            json!({"things": [{"size": 1, "kind": "a", "extra": "x"}]}),
        );
        assert_eq!(s.check(&e), Vec::<String>::new());
        let e = ex(
            "PATCH",
            "/v1/things/7",
            &[],
            Some(json!({"size": 3})),
            202,
            json!({"size": 3}),
        );
        assert_eq!(s.check(&e), Vec::<String>::new());
    }

    #[test]
    fn bad_exchanges_are_named() {
        let s = spec();
        let all = |e: &Exchange| s.check(e).join("\n");
        let e = ex(
            "GET",
            "/v1/things/",
            &[("limit", "x"), ("bogus", "1")],
            None,
            200,
            json!({"things": [{"size": "1", "kind": "c", "nope": 1}]}),
        );
        let msg = all(&e);
        for needle in ["limit=x", "bogus", "things[0].size", "not one of", "nope"] {
            assert!(msg.contains(needle), "{needle} missing in {msg}");
        }
        assert!(all(&ex("GET", "/v1/things/", &[], None, 200, json!({})))
            .contains("required property things"));
        assert!(all(&ex("PATCH", "/v1/things/x", &[], None, 202, json!({})))
            .contains("body is missing"));
        assert!(all(&ex(
            "PATCH",
            "/v1/things/1",
            &[],
            Some(json!({})),
            200,
            json!({})
        ))
        .contains("status 200"));
        assert!(
            all(&ex("GET", "/v1/nothing", &[], None, 200, json!({}))).contains("no such operation")
        );
    }
}
