//! Generators shared by the properties: arbitrary JSON (with hostile strings and numbers)
//! and a mutation of a valid value at one place.

use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Strings that are often trouble: control characters, NULs, quotes, long runs, non-ASCII.
pub fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[\\x00-\\x1f\"\\\\/%.\\n]{0,20}",
        Just(String::new()),
        (1usize..5000).prop_map(|n| "a".repeat(n)),
        Just("../../x".to_string()),
        Just("1.0.0".to_string()),
        Just("k8s".to_string()),
    ]
}

/// Any JSON number, including ones that fit no integer type.
pub fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        Just(Value::from(-1)),
        Just(Value::from(0)),
        Just(Value::from(65536)),
    ]
}

/// A JSON leaf.
pub fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        nasty_string().prop_map(Value::String),
    ]
}

/// Arbitrary JSON: `depth` levels at most, object keys drawn from `keys` or arbitrary.
pub fn json(depth: u32, keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    leaf().prop_recursive(depth, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(keys), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object key: one of `keys` (so values reach real fields) or any string.
pub fn key(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(keys).prop_map(str::to_string),
        1 => nasty_string(),
    ]
}

/// `valid` with the value at one path (chosen by `pick`) replaced by `with`. Paths walk
/// objects and arrays; `pick` indexes the candidate paths.
pub fn mutate(valid: &Value, pick: usize, with: Value) -> Value {
    let mut paths = Vec::new();
    collect_paths(valid, &mut Vec::new(), &mut paths);
    let mut out = valid.clone();
    if paths.is_empty() {
        return with;
    }
    let path = &paths[pick % paths.len()];
    let mut at = &mut out;
    for step in path {
        at = match step {
            Step::Key(k) => &mut at[k.as_str()],
            Step::Index(i) => &mut at[*i],
        };
    }
    *at = with;
    out
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn collect_paths(v: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, inner) in m {
                here.push(Step::Key(k.clone()));
                collect_paths(inner, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, inner) in a.iter().enumerate() {
                here.push(Step::Index(i));
                collect_paths(inner, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}
