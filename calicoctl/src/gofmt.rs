//! Output as calicoctl's Go code writes it: `fmt`'s `%.5g` and `%.f`, `encoding/json`'s
//! `MarshalIndent`, `text/tabwriter` (the `get` tables) and olekukonko/tablewriter v0.0.5 (the
//! `ipam show` boxes). Pure functions, unit-tested against the layouts Calico prints.

use serde_json::Value;

/// Go's `fmt.Sprintf("%.5g", v)` for finite values: at most 5 significant digits, trailing
/// zeros dropped, and the `e+XX` form from 100000 up (`65536`, `1.0486e+06`, `1e+05`).
pub fn g5(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{:.4e}", v);
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..5).contains(&exp) {
        let m = trim_fraction(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{m}e{sign}{:02}", exp.unsigned_abs());
    }
    let decimals = usize::try_from(4 - exp).unwrap_or(0);
    trim_fraction(&format!("{v:.decimals$}")).to_string()
}

fn trim_fraction(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Go's `%.f`: no decimals, halves to even.
pub fn f0(v: f64) -> String {
    format!("{v:.0}")
}

/// `json.MarshalIndent(v, "", "  ")`: two-space indent, no trailing newline, and Go's HTML
/// escaping of `<`, `>`, `&` and the line/paragraph separators inside strings.
pub fn json_indent(v: &Value) -> String {
    let s = serde_json::to_string_pretty(v).unwrap_or_default();
    go_escape(&s)
}

/// `json.Marshal`'s escaping on already-encoded JSON text. These characters can only occur
/// inside strings, so replacing them anywhere is exact.
pub fn go_escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// `text/tabwriter.NewWriter(w, minwidth=5, tabwidth=1, padding=3, ' ', 0)` fed with lines
/// whose every cell, the last included, ends in a tab (calicoctl's `get` templates): each
/// column is as wide as its widest cell plus 3, at least 5, and every cell is padded (so lines
/// end in spaces).
pub fn tabwriter(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count() + 3)
                .fold(5, usize::max)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        for (cell, width) in row.iter().zip(&widths) {
            out.push_str(cell);
            out.push_str(&" ".repeat(width.saturating_sub(cell.chars().count())));
        }
        out.push('\n');
    }
    out
}

/// tablewriter v0.0.5's right-alignment test (`^-?(?:\d{1,3}(?:,\d{3})*|\d+)(?:\.\d+)?$`).
fn is_decimal(s: &str) -> bool {
    let s = s.trim();
    let s = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    if let Some(f) = frac
        && (f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if int.is_empty() {
        return false;
    }
    if int.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    // Thousands separators: 1-3 digits, then groups of ",ddd".
    let mut groups = int.split(',');
    let first_ok = groups
        .next()
        .is_some_and(|g| (1..=3).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_digit()));
    first_ok && groups.all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()))
}

/// olekukonko/tablewriter v0.0.5 with its defaults: `+-|` borders, one space of padding,
/// centred headers (extra space on the right), numbers right-aligned, everything else
/// left-aligned.
pub fn box_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let width = |s: &str| s.chars().count();
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| width(cell))
                .fold(width(headers[c]), usize::max)
        })
        .collect();
    let line: String = {
        let mut l = String::from("+");
        for w in &widths {
            l.push_str(&"-".repeat(w + 2));
            l.push('+');
        }
        l.push('\n');
        l
    };
    let mut out = line.clone();
    out.push('|');
    for (h, w) in headers.iter().zip(&widths) {
        let gap = w - width(h);
        let left = gap / 2;
        out.push_str(&format!(
            " {}{}{} |",
            " ".repeat(left),
            h,
            " ".repeat(gap - left)
        ));
    }
    out.push('\n');
    out.push_str(&line);
    for row in rows {
        out.push('|');
        for (cell, w) in row.iter().zip(&widths) {
            let pad = " ".repeat(w - width(cell));
            if is_decimal(cell) {
                out.push_str(&format!(" {pad}{cell} |"));
            } else {
                out.push_str(&format!(" {cell}{pad} |"));
            }
        }
        out.push('\n');
    }
    out.push_str(&line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn percent_g5_matches_go() {
        assert_eq!(g5(65536.0), "65536");
        assert_eq!(g5(256.0), "256");
        assert_eq!(g5(0.0), "0");
        assert_eq!(g5(3.0), "3");
        assert_eq!(g5(99999.0), "99999");
        assert_eq!(g5(100000.0), "1e+05");
        assert_eq!(g5(123456.0), "1.2346e+05");
        assert_eq!(g5(1_048_576.0), "1.0486e+06");
        assert_eq!(g5(16_777_216.0), "1.6777e+07");
        assert_eq!(g5(2f64.powi(64)), "1.8447e+19");
        assert_eq!(g5(12.5), "12.5");
        assert_eq!(f0(0.5), "0");
        assert_eq!(f0(2.5), "2");
        assert_eq!(f0(99.6), "100");
        assert_eq!(f0(100.0 * 3.0 / 65536.0), "0");
    }

    #[test]
    fn json_is_indented_and_escaped_as_go_does() {
        let v = json!({"b": {"x": []}, "a": "p && q <x>", "items": [], "m": {}});
        assert_eq!(
            json_indent(&v),
            "{\n  \"b\": {\n    \"x\": []\n  },\n  \"a\": \"p \\u0026\\u0026 q \\u003cx\\u003e\",\n  \"items\": [],\n  \"m\": {}\n}"
        );
    }

    #[test]
    fn tabwriter_pads_every_cell() {
        let rows = vec![
            vec!["NAME".to_string(), "CIDR".into(), "SELECTOR".into()],
            vec![
                "default-ipv4-ippool".into(),
                "10.244.0.0/16".into(),
                "all()".into(),
            ],
        ];
        assert_eq!(
            tabwriter(&rows),
            "NAME                  CIDR            SELECTOR   \n\
             default-ipv4-ippool   10.244.0.0/16   all()      \n"
        );
        // Short cells still get the minimum width of 5.
        assert_eq!(tabwriter(&[vec!["A".to_string()]]), "A    \n");
    }

    #[test]
    fn box_table_is_tablewriter_v0_0_5() {
        let rows = vec![vec![
            "IP Pool".to_string(),
            "10.244.0.0/16".into(),
            "65536".into(),
            "3 (0%)".into(),
            "65533 (100%)".into(),
        ]];
        let got = box_table(
            &["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
            &rows,
        );
        assert_eq!(
            got,
            "+----------+---------------+-----------+------------+--------------+\n\
             | GROUPING |     CIDR      | IPS TOTAL | IPS IN USE |   IPS FREE   |\n\
             +----------+---------------+-----------+------------+--------------+\n\
             | IP Pool  | 10.244.0.0/16 |     65536 | 3 (0%)     | 65533 (100%) |\n\
             +----------+---------------+-----------+------------+--------------+\n"
        );
        assert!(is_decimal("1,234.5") && is_decimal("-12") && !is_decimal("1.0486e+06"));
        assert!(!is_decimal("12,34") && !is_decimal("") && !is_decimal("1."));
    }
}
