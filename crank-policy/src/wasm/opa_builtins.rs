//! Built-in functions an OPA module may ask the host for (through `opa_builtinN`).
//!
//! OPA compiles most built-ins into the module itself (`count`, `concat`, `sort`,
//! `endswith`, `net.cidr_contains`, regex and glob matching, ...); the few it leaves to
//! the host are listed by the module's `builtins()` export. This host provides
//! [`SUPPORTED`]; a module that needs any other one is refused at load.

use serde_json::Value;

/// A host-side builtin: JSON arguments in, JSON answer out.
pub(crate) type Builtin = fn(&[Value]) -> Result<Value, String>;

/// The builtins this host provides, by name.
pub const SUPPORTED: &[(&str, Builtin)] = &[("sprintf", sprintf)];

pub(crate) fn lookup(name: &str) -> Option<Builtin> {
    SUPPORTED.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// `sprintf(format, values)`, Go's verbs `%s`, `%v`, `%d`, `%q` and `%%` without flags,
/// width or precision; anything else is an error (the decision then denies).
fn sprintf(args: &[Value]) -> Result<Value, String> {
    let [Value::String(format), Value::Array(values)] = args else {
        return Err("expects a format string and an array of values".into());
    };
    let mut out = String::with_capacity(format.len());
    let mut values = values.iter();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let verb = chars.next().ok_or("format ends in a lone %")?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let value = values.next().ok_or_else(|| format!("%{verb} has no value"))?;
        match (verb, value) {
            ('s' | 'v', Value::String(s)) => out.push_str(s),
            ('s' | 'v', other) => out.push_str(&other.to_string()),
            ('d', Value::Number(n)) if n.is_i64() || n.is_u64() => out.push_str(&n.to_string()),
            ('d', other) => return Err(format!("%d needs an integer, got {other}")),
            ('q', Value::String(s)) => quote(s, &mut out),
            ('q', other) => return Err(format!("%q needs a string, got {other}")),
            (verb, _) => return Err(format!("verb %{verb} is not supported (only %s, %v, %d, %q, %%)")),
        }
    }
    if values.next().is_some() {
        return Err("more values than verbs".into());
    }
    Ok(Value::String(out))
}

/// Go's `%q`: a double-quoted string with Go escapes.
fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(format: &str, values: Value) -> Result<Value, String> {
        sprintf(&[json!(format), values])
    }

    #[test]
    fn formats_the_verbs_the_default_policy_uses() {
        assert_eq!(
            run("DNS name %q is not allowed for worker %q", json!(["a\"b", "w"])).unwrap(),
            json!(r#"DNS name "a\"b" is not allowed for worker "w""#)
        );
        assert_eq!(run("key type %s, %v%%", json!(["rsa-1024", 3])).unwrap(), json!("key type rsa-1024, 3%"));
        assert_eq!(run("%d s", json!([86400])).unwrap(), json!("86400 s"));
    }

    #[test]
    fn refuses_what_it_cannot_format_faithfully() {
        assert!(run("%5d", json!([1])).unwrap_err().contains("not supported"));
        assert!(run("%d", json!([1.5])).is_err());
        assert!(run("%s %s", json!(["a"])).unwrap_err().contains("no value"));
        assert!(run("%s", json!(["a", "b"])).unwrap_err().contains("more values"));
        assert!(sprintf(&[json!("%s")]).is_err());
    }
}
