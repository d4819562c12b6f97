//! `${NAME}` and `${NAME:-default}` in config values. Expansion runs on the
//! parsed YAML, inside string values only, so a variable's value stays one
//! value whatever it holds (` #`, `: `, a newline): it can neither cut a
//! line short nor add keys. Comments are gone by then, so a comment that
//! mentions `${NAME}` needs no special care.

use anyhow::{bail, Context, Result};
use serde::de::{Deserialize, DeserializeOwned, Deserializer, Error as _};
use serde_norway::Value;

/// Looks a variable up (the process environment, or a test's map).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Expands every string value of `value`; an error names the value's path
/// (`plugins[0].capabilities.fs.root`).
pub fn expand_values(value: Value, env: Env) -> Result<Value> {
    expand_at(value, env, &mut String::new())
}

fn expand_at(value: Value, env: Env, path: &mut String) -> Result<Value> {
    Ok(match value {
        Value::String(s) => Value::String(expand_env(&s, env).with_context(|| at(path))?),
        Value::Sequence(items) => Value::Sequence(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| nested(path, &format!("[{i}]"), |p| expand_at(item, env, p)))
                .collect::<Result<_>>()?,
        ),
        Value::Mapping(map) => {
            let mut out = serde_norway::Mapping::with_capacity(map.len());
            for (key, item) in map {
                // Keys are names, not values: never expanded.
                let name = match &key {
                    Value::String(k) if path.is_empty() => k.clone(),
                    Value::String(k) => format!(".{k}"),
                    other => format!("[{}]", serde_norway::to_string(other)?.trim()),
                };
                let item = nested(path, &name, |p| expand_at(item, env, p))?;
                out.insert(key, item);
            }
            Value::Mapping(out)
        }
        Value::Tagged(mut tagged) => {
            tagged.value = expand_at(tagged.value, env, path)?;
            Value::Tagged(tagged)
        }
        scalar @ (Value::Null | Value::Bool(_) | Value::Number(_)) => scalar,
    })
}

/// Runs `f` with `segment` appended to `path`, then restores it.
fn nested<T>(path: &mut String, segment: &str, f: impl FnOnce(&mut String) -> T) -> T {
    let len = path.len();
    path.push_str(segment);
    let out = f(path);
    path.truncate(len);
    out
}

fn at(path: &str) -> String {
    if path.is_empty() {
        "the document".into()
    } else {
        path.to_string()
    }
}

/// Replaces `${NAME}` and `${NAME:-default}`; an unset variable without a
/// default is an error naming it. `$$` stands for a literal `$`.
pub fn expand_env(text: &str, env: Env) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .with_context(|| format!("unclosed ${{ in {:?}", &rest[..rest.len().min(40)]))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("invalid variable name {name:?} in ${{{expr}}}");
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    bail!("environment variable {name} is not set (used as ${{{name}}})")
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// For number and boolean fields: a value written as `${NAME}` arrives as
/// text once expanded, so text is read as the field's type too
/// (`memoryBytes: ${PLUGIN_MEMORY:-67108864}`).
pub fn scalar<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match Value::deserialize(d)? {
        Value::String(text) => text
            .trim()
            .parse()
            .map_err(|e| D::Error::custom(format!("{text:?}: {e}"))),
        other => T::deserialize(other).map_err(D::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "ROOT" => Some("/srv/vols".into()),
            "EMPTY" => Some(String::new()),
            "TRICKY" => Some("pass #word: x\nplugins: []".into()),
            _ => None,
        }
    }

    fn expand_yaml(text: &str) -> Result<Value> {
        expand_values(serde_norway::from_str(text)?, &env)
    }

    #[test]
    fn expands_variables_and_defaults() {
        let text = "a=${ROOT} b=${NOPE:-dflt} c=${EMPTY:-x} d=$$HOME e=$x";
        assert_eq!(
            expand_env(text, &env).unwrap(),
            "a=/srv/vols b=dflt c=x d=$HOME e=$x"
        );
    }

    #[test]
    fn unset_variable_is_named_with_its_field() {
        let err = format!(
            "{:#}",
            expand_yaml("a:\n  b: [x, \"${MISSING}\"]").unwrap_err()
        );
        assert!(err.contains("MISSING"), "{err}");
        assert!(err.contains("a.b[1]"), "{err}");
    }

    #[test]
    fn comments_and_keys_are_not_expanded() {
        let v =
            expand_yaml("# use ${NAME} here\nroot: ${ROOT} # or ${OTHER}\n${KEY}: 1\n").unwrap();
        assert_eq!(v["root"], Value::String("/srv/vols".into()));
        assert_eq!(v["${KEY}"], Value::Number(1.into()));
    }

    /// Expanding the raw text cut this value at ` #` and made its newline
    /// a new key; inside the parsed value it stays whole.
    #[test]
    fn a_value_cannot_change_the_structure() {
        let v = expand_yaml(
            "settings:\n  password: ${TRICKY}\n  quoted: \"${TRICKY}\"\nplugins: [a]\n",
        )
        .unwrap();
        let tricky = Value::String(env("TRICKY").unwrap());
        assert_eq!(v["settings"]["password"], tricky);
        assert_eq!(v["settings"]["quoted"], tricky);
        assert_eq!(v["plugins"][0], Value::String("a".into()));
    }
}
