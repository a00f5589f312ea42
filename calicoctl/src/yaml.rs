//! YAML in and out.
//!
//! In: every document of a (multi-document) YAML or JSON text as a JSON value, which is what
//! calicoctl's `sigs.k8s.io/yaml` works on too. The parser is `serde_norway`, the maintained
//! fork of the deprecated `serde_yaml` (on a maintained port of libyaml), chosen over the
//! other candidates because it reads every document to the same values and fails with the
//! same messages (which calicoctl prints) as before: `serde_yaml_ng` still rests on the
//! unmaintained `unsafe-libyaml`, and `serde-saphyr` (pure Rust, already built for `kube`)
//! words its errors differently, rejects duplicate keys and resolves `<<` merge keys.
//!
//! Out: what `sigs.k8s.io/yaml.Marshal` (JSON, then yaml.v2) writes: keys sorted in yaml.v2's
//! order at every level, block sequences not indented under their key, and strings quoted
//! when yaml.v2 would read them back as something else (`"123"`, `"true"`, timestamps) or
//! when they cannot be plain (`'*'`, `'a: b'`). Not reproduced: yaml.v2 folds plain strings
//! with spaces at column 80; we never fold.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// Every document of `text`, in order; empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for de in serde_norway::Deserializer::from_str(text) {
        let v = Value::deserialize(de).map_err(|e| e.to_string())?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// `v` as `sigs.k8s.io/yaml.Marshal` writes it.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => emit_map(&mut out, m, 0, false),
        Value::Array(a) if !a.is_empty() => emit_seq(&mut out, a, 0, false),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

/// A value that fits on the line after `key:` or `- `: scalars and empty collections.
fn inline(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
        _ => false,
    }
}

/// A multi-line string value as a literal block (`|-`, `|` or `|+` by its trailing newlines).
fn literal(out: &mut String, s: &str, indent: usize) {
    let trailing = s.len() - s.trim_end_matches('\n').len();
    out.push_str(match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    });
    out.push('\n');
    let body = s.strip_suffix('\n').unwrap_or(s);
    for line in body.split('\n') {
        if !line.is_empty() {
            out.push_str(&" ".repeat(indent));
            out.push_str(line);
        }
        out.push('\n');
    }
}

/// A value after `key:` or `- ` at `indent` (the column of the key or dash).
fn emit_value(out: &mut String, v: &Value, indent: usize, in_seq: bool) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            if in_seq {
                emit_map(out, m, indent + 2, true);
            } else {
                out.push('\n');
                emit_map(out, m, indent + 2, false);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            if in_seq {
                emit_seq(out, a, indent + 2, true);
            } else {
                out.push('\n');
                emit_seq(out, a, indent, false);
            }
        }
        Value::String(s) if s.contains('\n') => {
            if !in_seq {
                out.push(' ');
            }
            literal(out, s, indent + 2);
        }
        other => {
            if !in_seq {
                out.push(' ');
            }
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

/// A block mapping at `indent`; `first_inline` when the first key follows a `- `.
fn emit_map(out: &mut String, m: &Map<String, Value>, indent: usize, first_inline: bool) {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_by(|a, b| yaml_v2_key_order(a, b));
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 || !first_inline {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&key_scalar(k));
        out.push(':');
        emit_value(out, &m[k], indent, false);
    }
}

/// A block sequence at `indent`; `first_inline` when the first item follows a `- `.
fn emit_seq(out: &mut String, a: &[Value], indent: usize, first_inline: bool) {
    for (i, item) in a.iter().enumerate() {
        if i > 0 || !first_inline {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str("- ");
        if is_block(item) || matches!(item, Value::String(s) if s.contains('\n')) {
            emit_value(out, item, indent, true);
        } else {
            out.push_str(&inline(item));
            out.push('\n');
        }
    }
}

/// yaml.v2's key order (`sorter.go`): letters compare by code point, a non-letter sorts
/// before a letter, and runs of digits compare as numbers (`node9` < `node10`).
pub fn yaml_v2_key_order(a: &str, b: &str) -> Ordering {
    let ar: Vec<char> = a.chars().collect();
    let br: Vec<char> = b.chars().collect();
    let n = ar.len().min(br.len());
    for i in 0..n {
        if ar[i] == br[i] {
            continue;
        }
        let al = ar[i].is_alphabetic();
        let bl = br[i].is_alphabetic();
        if al && bl {
            return ar[i].cmp(&br[i]);
        }
        if al || bl {
            return if bl {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let (mut an, mut bn) = (0i64, 0i64);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an
                .saturating_mul(10)
                .saturating_add(i64::from(ar[ai] as u8 - b'0'));
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn
                .saturating_mul(10)
                .saturating_add(i64::from(br[bi] as u8 - b'0'));
            bi += 1;
        }
        if an != bn {
            return an.cmp(&bn);
        }
        if ai != bi {
            return ai.cmp(&bi);
        }
        return ar[i].cmp(&br[i]);
    }
    ar.len().cmp(&br.len())
}

/// A mapping key: as a scalar, but never a block (a multi-line key is double-quoted).
fn key_scalar(s: &str) -> String {
    if s.contains('\n') {
        double_quoted(s)
    } else {
        scalar(s)
    }
}

/// A single-line string: plain when yaml.v2 would read it back as the same string and
/// libyaml allows it plain, else quoted.
pub fn scalar(s: &str) -> String {
    if resolves_to_non_string(s) || is_base60_float(s) {
        return double_quoted(s);
    }
    match plain_analysis(s) {
        Style::Plain => s.to_string(),
        Style::Single => format!("'{}'", s.replace('\'', "''")),
        Style::Double => double_quoted(s),
    }
}

fn double_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// yaml.v2's `resolve`: would this unquoted text read back as a bool, null, number or
/// timestamp?
fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "n", "N", "no",
        "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF", "", "~", "null", "Null",
        "NULL", ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf",
        "-.Inf", "-.INF", "<<",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    let Some(first) = s.chars().next() else {
        return true;
    };
    match first {
        '.' => s.parse::<f64>().is_ok() && !s.contains(['i', 'I', 'n', 'N']),
        '+' | '-' | '0'..='9' => {
            is_timestamp(s) || {
                let plain = s.replace('_', "");
                is_go_int(&plain) || is_yaml_float(&plain)
            }
        }
        _ => false,
    }
}

/// `strconv.ParseInt(s, 0, 64)` or `ParseUint(s, 0, 64)` would succeed.
fn is_go_int(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (digits, radix) =
        if let Some(r) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            (r, 16)
        } else if let Some(r) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
            (r, 2)
        } else if let Some(r) = body.strip_prefix("0o").or_else(|| body.strip_prefix("0O")) {
            (r, 8)
        } else if body.len() > 1 && body.starts_with('0') {
            (&body[1..], 8)
        } else {
            (body, 10)
        };
    !digits.is_empty() && u64::from_str_radix(digits, radix).is_ok()
}

/// yaml.v2's `yamlStyleFloat`: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mant, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mant_ok = match mant.split_once('.') {
        Some(("", f)) => digits(f),
        Some((i, f)) => digits(i) && (f.is_empty() || digits(f)),
        None => digits(mant),
    };
    let exp_ok = exp.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mant_ok && exp_ok
}

/// yaml.v2's `isBase60Float`: `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$`.
fn is_base60_float(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (s, frac) = match s.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (s, None),
    };
    if frac.is_some_and(|f| !f.bytes().all(|b| b.is_ascii_digit() || b == b'_')) {
        return false;
    }
    let mut parts = s.split(':');
    let head_ok = parts.next().is_some_and(|h| {
        h.bytes().next().is_some_and(|b| b.is_ascii_digit())
            && h.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    });
    let rest: Vec<&str> = parts.collect();
    head_ok
        && !rest.is_empty()
        && rest.iter().all(|p| match p.as_bytes() {
            [d] => d.is_ascii_digit(),
            [a, b] => (b'0'..=b'5').contains(a) && b.is_ascii_digit(),
            _ => false,
        })
}

/// yaml.v2's timestamp formats: `2006-1-2T15:4:5.999999999Z07:00` (also with `t`),
/// `2006-1-2 15:4:5.999999999` and `2006-1-2`.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 5 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return false;
    }
    let rest = &s[5..];
    let num = |t: &str, max: usize| {
        !t.is_empty() && t.len() <= max && t.bytes().all(|c| c.is_ascii_digit())
    };
    let (date, time) = match rest.find(['T', 't', ' ']) {
        Some(i) => (&rest[..i], Some((&rest[i..i + 1], &rest[i + 1..]))),
        None => (rest, None),
    };
    let mut d = date.split('-');
    let date_ok = matches!((d.next(), d.next(), d.next()), (Some(m), Some(day), None) if num(m, 2) && num(day, 2));
    if !date_ok {
        return false;
    }
    let Some((sep, time)) = time else {
        return true;
    };
    // Split off a zone for the T form.
    let (clock, zone) = if sep == " " {
        (time, "")
    } else if let Some(c) = time.strip_suffix('Z') {
        (c, "Z")
    } else if let Some(i) = time.rfind(['+', '-']) {
        (&time[..i], &time[i..])
    } else {
        return false;
    };
    if sep != " " && zone.is_empty() {
        return false;
    }
    if zone.len() > 1 {
        let z = &zone[1..];
        let ok = z.len() == 5 && num(&z[..2], 2) && &z[2..3] == ":" && num(&z[3..], 2);
        if !ok {
            return false;
        }
    }
    let (hms, frac) = match clock.split_once('.') {
        Some((h, f)) => (h, Some(f)),
        None => (clock, None),
    };
    if frac.is_some_and(|f| !num(f, 9)) {
        return false;
    }
    let mut t = hms.split(':');
    matches!((t.next(), t.next(), t.next(), t.next()), (Some(h), Some(m), Some(s), None) if num(h, 2) && num(m, 2) && num(s, 2))
}

enum Style {
    Plain,
    Single,
    Double,
}

/// libyaml's `yaml_emitter_analyze_scalar` for a block-context scalar.
fn plain_analysis(s: &str) -> Style {
    if s.is_empty() {
        return Style::Single;
    }
    let chars: Vec<char> = s.chars().collect();
    let blank = |c: Option<&char>| matches!(c, None | Some(' ' | '\t' | '\n' | '\r'));
    let mut block_indicators = s.starts_with("---") || s.starts_with("...");
    let mut special = false;
    let mut preceded_by_ws = true;
    let (mut leading_space, mut trailing_space) = (false, false);
    for (i, c) in chars.iter().enumerate() {
        let followed_by_ws = blank(chars.get(i + 1));
        if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => block_indicators = true,
                '?' | ':' | '-' if followed_by_ws => block_indicators = true,
                _ => {}
            }
        } else {
            match c {
                ':' if followed_by_ws => block_indicators = true,
                '#' if preceded_by_ws => block_indicators = true,
                _ => {}
            }
        }
        if c.is_control() && *c != '\t' || *c == '\u{feff}' {
            special = true;
        }
        if *c == ' ' {
            if i == 0 {
                leading_space = true;
            }
            if i == chars.len() - 1 {
                trailing_space = true;
            }
        }
        preceded_by_ws = blank(Some(c));
    }
    if special {
        Style::Double
    } else if leading_space || trailing_space || block_indicators {
        Style::Single
    } else {
        Style::Plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn list_shape_matches_sigs_yaml() {
        let v = json!({"kind":"IPPoolList","apiVersion":"projectcalico.org/v3",
            "metadata":{"resourceVersion":"123"},
            "items":[{"kind":"IPPool","apiVersion":"projectcalico.org/v3",
              "metadata":{"name":"p1","resourceVersion":"45","creationTimestamp":"2026-05-01T10:00:00Z"},
              "spec":{"cidr":"10.244.0.0/16","blockSize":26,"allowedUses":["Workload","Tunnel"],
                      "nodeSelector":"all()","natOutgoing":true}}]});
        assert_eq!(
            to_yaml(&v),
            "apiVersion: projectcalico.org/v3\n\
             items:\n\
             - apiVersion: projectcalico.org/v3\n  \
               kind: IPPool\n  \
               metadata:\n    \
                 creationTimestamp: \"2026-05-01T10:00:00Z\"\n    \
                 name: p1\n    \
                 resourceVersion: \"45\"\n  \
               spec:\n    \
                 allowedUses:\n    \
                 - Workload\n    \
                 - Tunnel\n    \
                 blockSize: 26\n    \
                 cidr: 10.244.0.0/16\n    \
                 natOutgoing: true\n    \
                 nodeSelector: all()\n\
             kind: IPPoolList\n\
             metadata:\n  \
               resourceVersion: \"123\"\n"
        );
        assert_eq!(
            to_yaml(&json!({"items": [], "m": {}})),
            "items: []\nm: {}\n"
        );
        assert_eq!(to_yaml(&json!([])), "[]\n");
        assert_eq!(
            to_yaml(&json!([[1, 2], {"a": null}])),
            "- - 1\n  - 2\n- a: null\n"
        );
    }

    #[test]
    fn strings_are_quoted_as_yaml_v2_does() {
        for (s, want) in [
            ("all()", "all()"),
            ("has(mynet)", "has(mynet)"),
            ("fd00:10:244::/48", "fd00:10:244::/48"),
            ("10.244.0.0/16", "10.244.0.0/16"),
            ("123", "\"123\""),
            ("0x1F", "\"0x1F\""),
            ("1e3", "\"1e3\""),
            ("1.5", "\"1.5\""),
            ("true", "\"true\""),
            ("yes", "\"yes\""),
            ("Off", "\"Off\""),
            ("", "\"\""),
            ("null", "\"null\""),
            ("~", "\"~\""),
            ("2026-05-01T10:00:00Z", "\"2026-05-01T10:00:00Z\""),
            ("2026-05-01", "\"2026-05-01\""),
            (
                "2026-05-01 10:00:01.1234 +0000 UTC",
                "2026-05-01 10:00:01.1234 +0000 UTC",
            ),
            ("1:20", "\"1:20\""),
            ("*", "'*'"),
            ("a: b", "'a: b'"),
            ("x #y", "'x #y'"),
            ("x#y", "x#y"),
            ("- x", "'- x'"),
            ("-x", "-x"),
            (" lead", "' lead'"),
            ("it's", "it's"),
            ("'q'", "'''q'''"),
            ("fd00::", "'fd00::'"),
            ("a\tb", "a\tb"),
            ("bell\u{7}", "\"bell\\x07\""),
        ] {
            assert_eq!(scalar(s), want, "{s:?}");
        }
        assert_eq!(
            to_yaml(&json!({"note": "line1\nline2"})),
            "note: |-\n  line1\n  line2\n"
        );
    }

    #[test]
    fn keys_sort_as_yaml_v2() {
        let mut keys = vec!["node10", "node9", "a_b", "aZ", "b", "A", "x.y", "xy"];
        keys.sort_by(|a, b| yaml_v2_key_order(a, b));
        assert_eq!(
            keys,
            ["A", "a_b", "aZ", "b", "node9", "node10", "x.y", "xy"]
        );
    }

    #[test]
    fn documents_parse() {
        let docs = parse_documents("a: 1\n---\n---\n- b: x\n").expect("parses");
        assert_eq!(docs, vec![json!({"a": 1}), json!([{"b": "x"}])]);
        assert!(parse_documents("a: [1\n").is_err());
        // The parser's own words reach the user (after calicoctl's prefix): pinned.
        assert_eq!(
            parse_documents("a: [1\n").expect_err("unclosed"),
            "did not find expected ',' or ']' at line 2 column 1, while parsing a flow \
             sequence at line 1 column 4"
        );
        assert_eq!(
            parse_documents("{\"kind\": \"IPPool\"}").expect("json"),
            vec![json!({"kind": "IPPool"})]
        );
    }
}
