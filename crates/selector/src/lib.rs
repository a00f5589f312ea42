//! Calico's label selector language, as IP pools (`nodeSelector`, `namespaceSelector`) and,
//! later, policies use it.
//!
//! ```text
//! expr  := and ("||" and)*
//! and   := unary ("&&" unary)*
//! unary := "!" unary | "(" expr ")" | "all()" | "global()" | "has(" key ")" | key op
//! op    := "==" str | "!=" str | "in" set | "not" "in" set
//!        | "contains" str | "starts" "with" str | "ends" "with" str
//! set   := "{" [str ("," str)*] "}"      str := "..." | '...'
//! ```
//! An empty selector selects everything. A missing label satisfies `!=` and `not in` and
//! nothing else.
//!
//! Owns the language only (parsing and matching labels); must not import any other crate of
//! this workspace: pools, policies and calicoctl bring the labels.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    Global,
    Has(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Selector>),
    And(Box<Selector>, Box<Selector>),
    Or(Box<Selector>, Box<Selector>),
}

/// A selector that does not parse, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?} at offset {offset}: {reason}")]
pub struct ParseError {
    pub input: String,
    pub offset: usize,
    pub reason: String,
}

/// Something with labels.
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for HashMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Selector {
    pub fn parse(input: &str) -> Result<Selector, ParseError> {
        let mut p = Parser { input, pos: 0 };
        p.skip_ws();
        if p.at_end() {
            return Ok(Selector::All);
        }
        let s = p.expr()?;
        p.skip_ws();
        if !p.at_end() {
            return Err(p.error("unexpected text after the expression"));
        }
        Ok(s)
    }

    pub fn matches(&self, labels: &impl Labels) -> bool {
        match self {
            Selector::All | Selector::Global => true,
            Selector::Has(k) => labels.label(k).is_some(),
            Selector::Eq(k, v) => labels.label(k) == Some(v.as_str()),
            Selector::NotEq(k, v) => labels.label(k) != Some(v.as_str()),
            Selector::In(k, set) => labels.label(k).is_some_and(|l| set.iter().any(|v| v == l)),
            Selector::NotIn(k, set) => !labels.label(k).is_some_and(|l| set.iter().any(|v| v == l)),
            Selector::Contains(k, v) => labels.label(k).is_some_and(|l| l.contains(v.as_str())),
            Selector::StartsWith(k, v) => {
                labels.label(k).is_some_and(|l| l.starts_with(v.as_str()))
            }
            Selector::EndsWith(k, v) => labels.label(k).is_some_and(|l| l.ends_with(v.as_str())),
            Selector::Not(s) => !s.matches(labels),
            Selector::And(a, b) => a.matches(labels) && b.matches(labels),
            Selector::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }

    /// True for selectors that match any label set, so a caller can skip fetching labels.
    pub fn is_all(&self) -> bool {
        matches!(self, Selector::All | Selector::Global)
    }
}

fn quote(s: &str) -> String {
    if s.contains('"') {
        format!("'{s}'")
    } else {
        format!("\"{s}\"")
    }
}

fn set(vals: &[String]) -> String {
    vals.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ")
}

/// Canonical text: parses back to the same selector.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => write!(f, "all()"),
            Selector::Global => write!(f, "global()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::NotEq(k, v) => write!(f, "{k} != {}", quote(v)),
            Selector::In(k, s) => write!(f, "{k} in {{{}}}", set(s)),
            Selector::NotIn(k, s) => write!(f, "{k} not in {{{}}}", set(s)),
            Selector::Contains(k, v) => write!(f, "{k} contains {}", quote(v)),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {}", quote(v)),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {}", quote(v)),
            Selector::Not(s) => write!(f, "!({s})"),
            Selector::And(a, b) => write!(f, "({a} && {b})"),
            Selector::Or(a, b) => write!(f, "({a} || {b})"),
        }
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.input[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.input.len() - trimmed.len();
    }

    fn error(&self, reason: &str) -> ParseError {
        ParseError {
            input: self.input.to_string(),
            offset: self.pos,
            reason: reason.to_string(),
        }
    }

    /// Consumes `tok` (after whitespace) if it is next.
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// Consumes the word `w` if it is next and not the start of a longer word.
    fn eat_word(&mut self, w: &str) -> bool {
        self.skip_ws();
        let r = self.rest();
        let boundary = r[w.len().min(r.len())..]
            .chars()
            .next()
            .is_none_or(|c| !is_key_char(c));
        if r.starts_with(w) && boundary {
            self.pos += w.len();
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Selector, ParseError> {
        let mut left = self.and()?;
        while self.eat("||") {
            let right = self.and()?;
            left = Selector::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Selector, ParseError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            let right = self.unary()?;
            left = Selector::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Selector, ParseError> {
        self.skip_ws();
        if self.rest().starts_with('!') && !self.rest().starts_with("!=") {
            self.pos += 1;
            return Ok(Selector::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let inner = self.expr()?;
            if !self.eat(")") {
                return Err(self.error("expected ')'"));
            }
            return Ok(inner);
        }
        if self.eat("all()") {
            return Ok(Selector::All);
        }
        if self.eat("global()") {
            return Ok(Selector::Global);
        }
        if self.eat("has(") {
            let key = self.key()?;
            if !self.eat(")") {
                return Err(self.error("expected ')' after has(key"));
            }
            return Ok(Selector::Has(key));
        }
        let key = self.key()?;
        if self.eat("==") {
            Ok(Selector::Eq(key, self.string()?))
        } else if self.eat("!=") {
            Ok(Selector::NotEq(key, self.string()?))
        } else if self.eat_word("in") {
            Ok(Selector::In(key, self.set()?))
        } else if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.error("expected 'in' after 'not'"));
            }
            Ok(Selector::NotIn(key, self.set()?))
        } else if self.eat_word("contains") {
            Ok(Selector::Contains(key, self.string()?))
        } else if self.eat_word("starts") {
            if !self.eat_word("with") {
                return Err(self.error("expected 'with' after 'starts'"));
            }
            Ok(Selector::StartsWith(key, self.string()?))
        } else if self.eat_word("ends") {
            if !self.eat_word("with") {
                return Err(self.error("expected 'with' after 'ends'"));
            }
            Ok(Selector::EndsWith(key, self.string()?))
        } else {
            Err(self.error(
                "expected an operator (==, !=, in, not in, contains, starts with, ends with)",
            ))
        }
    }

    fn key(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        let len: usize = self
            .rest()
            .chars()
            .take_while(|c| is_key_char(*c))
            .map(char::len_utf8)
            .sum();
        if len == 0 {
            return Err(self.error("expected a label key"));
        }
        let k = self.rest()[..len].to_string();
        self.pos += len;
        Ok(k)
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        let Some(q) = self
            .rest()
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
        else {
            return Err(self.error("expected a quoted string"));
        };
        let body = &self.rest()[1..];
        let Some(end) = body.find(q) else {
            return Err(self.error("unterminated string"));
        };
        let s = body[..end].to_string();
        self.pos += end + 2;
        Ok(s)
    }

    fn set(&mut self) -> Result<Vec<String>, ParseError> {
        if !self.eat("{") {
            return Err(self.error("expected '{'"));
        }
        let mut vals = Vec::new();
        if self.eat("}") {
            return Ok(vals);
        }
        loop {
            vals.push(self.string()?);
            if self.eat("}") {
                return Ok(vals);
            }
            if !self.eat(",") {
                return Err(self.error("expected ',' or '}'"));
            }
        }
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn eval(sel: &str, l: &[(&str, &str)]) -> bool {
        Selector::parse(sel)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(&labels(l))
    }

    #[test]
    fn operators_on_present_and_missing_labels() {
        let node = [
            ("zone", "us-east-1a"),
            ("kubernetes.io/os", "linux"),
            ("gpu", ""),
        ];
        for (sel, want) in [
            ("", true),
            ("all()", true),
            ("global()", true),
            ("has(zone)", true),
            ("has(rack)", false),
            ("!has(rack)", true),
            ("zone == 'us-east-1a'", true),
            ("zone == \"us-west\"", false),
            ("zone != 'us-west'", true),
            ("rack != 'r1'", true),
            ("rack == 'r1'", false),
            ("zone in {'us-east-1a', 'eu'}", true),
            ("zone in {}", false),
            ("rack in {'r1'}", false),
            ("zone not in {'eu'}", true),
            ("rack not in {'r1'}", true),
            ("zone contains 'east'", true),
            ("rack contains 'x'", false),
            ("zone starts with 'us-'", true),
            ("zone ends with '1a'", true),
            ("zone ends with '1b'", false),
            ("kubernetes.io/os == 'linux'", true),
            ("has(gpu) && gpu == ''", true),
        ] {
            assert_eq!(eval(sel, &node), want, "{sel}");
        }
    }

    #[test]
    fn precedence_and_grouping() {
        let l = [("a", "1")];
        // && binds tighter than ||.
        assert!(eval("a == '1' || a == '2' && a == '3'", &l));
        assert!(!eval("(a == '1' || a == '2') && a == '3'", &l));
        assert!(eval("!(a == '2')", &l));
        assert!(!eval("!a == '1'", &l));
        assert!(eval("!!has(a)", &l));
        assert!(eval("  has( a )&&a=='1'  ", &l));
    }

    #[test]
    fn display_round_trips() {
        for sel in [
            "all()",
            "has(a) && !has(b)",
            "a in {'x', \"y\"} || b not in {}",
            "k starts with 'p' && (k ends with 's' || k contains \"it's\")",
        ] {
            let parsed = Selector::parse(sel).expect(sel);
            assert_eq!(
                Selector::parse(&parsed.to_string()).expect("reparse"),
                parsed,
                "{sel}"
            );
        }
    }

    #[test]
    fn errors_point_at_the_problem() {
        for bad in [
            "a ==",
            "a = 'x'",
            "has(a",
            "(a == 'x'",
            "a in {'x'",
            "a == 'x' extra",
            "a not 'x'",
            "&& a",
            "a == 'unterminated",
        ] {
            let e = Selector::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("invalid selector"), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_can_start_like_operators() {
        assert!(eval("index == 'x'", &[("index", "x")]));
        assert!(eval("notes != 'y'", &[("notes", "x")]));
        assert!(eval("endsAt == 'z'", &[("endsAt", "z")]));
    }
}
