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
//! Selectors come from the datastore, which anyone with write access fills, so parsing is
//! bounded: the parser is iterative (its own stack, not the thread's), nesting through `(` and
//! `!` deeper than [`MAX_DEPTH`] and more than [`MAX_TERMS`] terms are refused. `&&`/`||`
//! chains are n-ary ([`Selector::And`]/[`Selector::Or`] hold a list), so a long chain adds no
//! depth, and the recursion of `matches`, `Display` and `Drop` is bounded by [`MAX_DEPTH`].
//!
//! Owns the language only (parsing and matching labels); must not import any other crate of
//! this workspace: pools, policies and calicoctl bring the labels.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Deepest nesting accepted: each `(` and each `!` is one level.
pub const MAX_DEPTH: usize = 128;
/// Most terms (`has(k)`, `k == 'v'`, `all()`, …) accepted in one selector.
pub const MAX_TERMS: usize = 10_000;

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
    /// All of these (two or more).
    And(Vec<Selector>),
    /// Any of these (two or more).
    Or(Vec<Selector>),
}

/// A selector that does not parse, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {} at offset {offset}: {reason}", shown(input))]
pub struct ParseError {
    pub input: String,
    pub offset: usize,
    pub reason: String,
}

/// The input as an error shows it: quoted, and cut short when long, so that a hostile
/// selector of megabytes does not fill logs and error objects.
fn shown(input: &str) -> String {
    const SHOWN: usize = 120;
    if input.len() <= SHOWN {
        return format!("{input:?}");
    }
    let mut cut = SHOWN;
    while !input.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}… ({} bytes)", &input[..cut], input.len())
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
            Selector::And(all) => all.iter().all(|s| s.matches(labels)),
            Selector::Or(any) => any.iter().any(|s| s.matches(labels)),
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

/// Where a selector is printed, to decide whether it needs parentheses.
#[derive(Clone, Copy, PartialEq)]
enum Context {
    Top,
    Not,
    And,
    Or,
}

impl Selector {
    /// Prints with only the parentheses the grammar needs, so the text is never nested deeper
    /// than the selector it came from (and parses back within [`MAX_DEPTH`]).
    fn write(&self, f: &mut fmt::Formatter<'_>, ctx: Context) -> fmt::Result {
        let (list, sep) = match self {
            Selector::All => return write!(f, "all()"),
            Selector::Global => return write!(f, "global()"),
            Selector::Has(k) => return write!(f, "has({k})"),
            Selector::Eq(k, v) => return write!(f, "{k} == {}", quote(v)),
            Selector::NotEq(k, v) => return write!(f, "{k} != {}", quote(v)),
            Selector::In(k, s) => return write!(f, "{k} in {{{}}}", set(s)),
            Selector::NotIn(k, s) => return write!(f, "{k} not in {{{}}}", set(s)),
            Selector::Contains(k, v) => return write!(f, "{k} contains {}", quote(v)),
            Selector::StartsWith(k, v) => return write!(f, "{k} starts with {}", quote(v)),
            Selector::EndsWith(k, v) => return write!(f, "{k} ends with {}", quote(v)),
            Selector::Not(s) => {
                write!(f, "!")?;
                return s.write(f, Context::Not);
            }
            Selector::And(all) => (all, " && "),
            Selector::Or(any) => (any, " || "),
        };
        let own = if matches!(self, Selector::And(_)) {
            Context::And
        } else {
            Context::Or
        };
        let parens = !(ctx == Context::Top || (own == Context::And && ctx == Context::Or));
        if parens {
            write!(f, "(")?;
        }
        for (i, s) in list.iter().enumerate() {
            if i > 0 {
                write!(f, "{sep}")?;
            }
            s.write(f, own)?;
        }
        if parens {
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// Canonical text: parses back to the same selector.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, Context::Top)
    }
}

/// One open parenthesis while parsing: what came before it at its level.
#[derive(Default)]
struct Frame {
    /// Finished `||` operands at this level.
    ors: Vec<Selector>,
    /// `&&` operands of the operand being read.
    ands: Vec<Selector>,
    /// The `!`s in front of the `(` that opened the level above (applied when it closes).
    nots: usize,
}

/// `list` as one selector: itself when it has one element.
fn collapse(mut list: Vec<Selector>, n_ary: fn(Vec<Selector>) -> Selector) -> Selector {
    if list.len() == 1 {
        list.pop().unwrap_or(Selector::All)
    } else {
        n_ary(list)
    }
}

fn negate(mut s: Selector, nots: usize) -> Selector {
    for _ in 0..nots {
        s = Selector::Not(Box::new(s));
    }
    s
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
        // Only slice after `starts_with`: `w.len()` may fall inside a multi-byte character.
        let matched = r
            .strip_prefix(w)
            .is_some_and(|after| after.chars().next().is_none_or(|c| !is_key_char(c)));
        if matched {
            self.pos += w.len();
            true
        } else {
            false
        }
    }

    /// Consumes the `!`s in front of a unary (not the `!` of `!=`) and counts them.
    fn nots(&mut self) -> usize {
        let mut n = 0;
        loop {
            self.skip_ws();
            if self.rest().starts_with('!') && !self.rest().starts_with("!=") {
                self.pos += 1;
                n += 1;
            } else {
                return n;
            }
        }
    }

    /// The whole grammar, without recursion: `stack` holds the levels of open parentheses.
    fn expr(&mut self) -> Result<Selector, ParseError> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut cur = Frame::default();
        let mut depth = 0usize;
        let mut terms = 0usize;
        loop {
            // A unary: `!`*, then a parenthesised expression or a term.
            let nots = self.nots();
            if depth + nots > MAX_DEPTH {
                return Err(self.error(&format!(
                    "nested too deeply (more than {MAX_DEPTH} levels of '(' and '!')"
                )));
            }
            if self.eat("(") {
                if depth + nots + 1 > MAX_DEPTH {
                    return Err(self.error(&format!(
                        "nested too deeply (more than {MAX_DEPTH} levels of '(' and '!')"
                    )));
                }
                depth += nots + 1;
                stack.push(std::mem::replace(
                    &mut cur,
                    Frame {
                        nots,
                        ..Frame::default()
                    },
                ));
                continue;
            }
            terms += 1;
            if terms > MAX_TERMS {
                return Err(self.error(&format!("more than {MAX_TERMS} terms")));
            }
            let mut unary = negate(self.term()?, nots);
            // After a unary: `&&` reads the next one; `||` closes the `&&` chain; anything
            // else closes this level (a `)`, or the end at the top).
            loop {
                cur.ands.push(unary);
                if self.eat("&&") {
                    break;
                }
                let and = collapse(std::mem::take(&mut cur.ands), Selector::And);
                cur.ors.push(and);
                if self.eat("||") {
                    break;
                }
                let level = collapse(std::mem::take(&mut cur.ors), Selector::Or);
                let Some(outer) = stack.pop() else {
                    return Ok(level);
                };
                if !self.eat(")") {
                    return Err(self.error("expected ')'"));
                }
                depth -= cur.nots + 1;
                unary = negate(level, cur.nots);
                cur = outer;
            }
        }
    }

    /// A term: everything a unary can be but `!` and parentheses.
    fn term(&mut self) -> Result<Selector, ParseError> {
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

    /// Runs `f` on a thread with a 256 KiB stack: anything that recursed per input byte or
    /// per term would overflow it.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("no overflow or panic")
    }

    /// Found by testkit's property tests: a keyword check sliced the input inside a
    /// multi-byte character and panicked.
    #[test]
    fn non_ascii_input_is_an_error_not_a_panic() {
        for sel in [
            "a\u{800}",
            "\u{800}",
            "a == 'x' && \u{800}",
            "has(\u{800})",
            "a\u{800} == 'b'",
        ] {
            assert!(Selector::parse(sel).is_err(), "{sel:?} parsed");
        }
        assert!(eval("a == '\u{800}'", &[("a", "\u{800}")]));
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let parens = format!("{}all(){}", "(".repeat(10_000), ")".repeat(10_000));
        let bangs = format!("{}has(a)", "!".repeat(10_000));
        let mixed = format!("{}all(){}", "!(".repeat(5_000), ")".repeat(5_000));
        for input in [parens, bangs, mixed] {
            let e =
                on_small_stack(move || Selector::parse(&input).map(|_| ())).expect_err("too deep");
            assert!(e.reason.contains("nested too deeply"), "{e}");
            assert!(e.to_string().len() < 400, "the error cuts the input short");
        }
    }

    #[test]
    fn the_depth_bound_is_exact() {
        let at = format!("{}all(){}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        let over = format!("({at})");
        // Parsing, matching, printing, reparsing what was printed and dropping, all at the
        // bound on a small stack.
        let ok = on_small_stack(move || {
            let s = Selector::parse(&at).map_err(|e| e.to_string())?;
            let matched = s.matches(&HashMap::new());
            let text = s.to_string();
            let again = Selector::parse(&text).map_err(|e| format!("reparse: {e}"))?;
            let same = again == s;
            drop(again);
            drop(s);
            Ok::<_, String>(matched && same)
        });
        assert_eq!(ok, Ok(true));
        assert!(Selector::parse(&over).is_err());
        let nots = format!("{}has(a)", "!".repeat(MAX_DEPTH));
        let sel = Selector::parse(&nots).expect("at the bound");
        assert!(
            sel.matches(&labels(&[("a", "")])),
            "an even number of '!' cancels out"
        );
        assert!(Selector::parse(&format!("!{nots}")).is_err());
    }

    #[test]
    fn long_chains_are_flat_and_capped() {
        // 100k terms: over the cap, refused without overflow.
        let long = vec!["has(a)"; 100_000].join(" && ");
        let e = on_small_stack(move || Selector::parse(&long).map(|_| ())).expect_err("cap");
        assert!(e.reason.contains("terms"), "{e}");
        let long_or = vec!["has(a)"; 100_000].join(" || ");
        assert!(on_small_stack(move || Selector::parse(&long_or).map(|_| ())).is_err());
        // At the cap: one flat And, and matching, printing and dropping it stay shallow.
        let at_cap = vec!["has(a)"; MAX_TERMS].join(" && ");
        let (matched, text_len) = on_small_stack(move || {
            let s = Selector::parse(&at_cap).expect("at the cap");
            assert!(matches!(&s, Selector::And(v) if v.len() == MAX_TERMS));
            let text = s.to_string();
            assert_eq!(Selector::parse(&text).expect("reparse"), s);
            (s.matches(&labels(&[("a", "")])), text.len())
        });
        assert!(matched);
        assert!(text_len > MAX_TERMS);
    }

    /// The deepest parenthesis nesting of a selector's text (outside quoted strings).
    fn nesting(text: &str) -> usize {
        let (mut depth, mut max, mut quote) = (0usize, 0usize, None);
        for c in text.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '(') => {
                    depth += 1;
                    max = max.max(depth);
                }
                (None, ')') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        max
    }

    #[test]
    fn display_adds_no_depth() {
        assert_eq!(nesting("((has(a)) && b == '((')"), 3);
        for sel in [
            "!(a == 'x' && b == 'y')",
            "a == 'x' && b == 'y' || c == 'z'",
            "(a == 'x' || b == 'y') && c == 'z'",
            "!!!has(a)",
            "((has(a) || has(b)) && has(c)) || !(has(d) && (has(e) || has(f)))",
        ] {
            let parsed = Selector::parse(sel).expect(sel);
            let text = parsed.to_string();
            assert_eq!(Selector::parse(&text).expect("reparse"), parsed, "{sel}");
            assert!(
                nesting(&text) <= nesting(sel),
                "{sel} printed as {text}: deeper ({} > {})",
                nesting(&text),
                nesting(sel)
            );
        }
        assert_eq!(
            Selector::parse("(a == 'x') && ((b == 'y'))")
                .expect("p")
                .to_string(),
            "a == \"x\" && b == \"y\""
        );
    }

    #[test]
    fn keys_can_start_like_operators() {
        assert!(eval("index == 'x'", &[("index", "x")]));
        assert!(eval("notes != 'y'", &[("notes", "x")]));
        assert!(eval("endsAt == 'z'", &[("endsAt", "z")]));
    }
}
