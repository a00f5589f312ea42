//! `calicoctl node status`: asks the node agent (`calico-node run`, over its socket) for
//! its BGP sessions and prints them as Calico's `commands/node/status.go` does: "Calico
//! process is running.", then per family a BIRD status table (olekukonko/tablewriter
//! v0.0.5's default layout) or "No IPv4 peers found.".
//!
//! Calico looks for the `calico-felix`/`bird`/`bird6` processes and reads BIRD's control
//! socket; here the agent answers for both (it knows whether its BGP speakers run), so the
//! command needs the agent's socket, not BIRD's. [`render`] and [`table`] are pure; [`run`]
//! is the I/O around them.

use crate::error::{CmdError, CmdResult};
use calico_agent_protocol::{
    BgpPeerStatus, BgpStatusReport, CallError, Connection, Reply, Request,
};
use std::time::Duration;

/// How long the agent has to greet and to answer (a person is waiting; the agent answers
/// from memory).
const GREETING_WAIT: Duration = Duration::from_secs(1);
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// status.go's error when no Calico process runs (printed on stderr, exit 1).
pub const NOT_RUNNING: &str = "Calico process is not running.";

/// `enforceRoot`'s message (printed on stdout, exit 1).
pub const NEED_ROOT: &str = "Need super user privileges: Operation not permitted";

/// Runs the command: root only, as Calico's; the agent's socket is
/// [`calico_agent_protocol::socket_path`] (`CALICO_NODE_SOCKET` or the default).
pub fn run(out: &mut dyn std::io::Write) -> CmdResult {
    // The owner of /proc/self is this process's (effective) user.
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        return Err(CmdError::Stdout(NEED_ROOT.into()));
    }
    let path = calico_agent_protocol::socket_path();
    let mut agent = match Connection::open(&path, GREETING_WAIT) {
        Ok(agent) => agent,
        Err(why) => {
            log_debug(&format!("no agent at {}: {why}", path.display()));
            return Err(CmdError::failed(NOT_RUNNING));
        }
    };
    let reply = agent.call(&Request::BgpStatus, &[], ANSWER_WAIT);
    match reply {
        Ok(Reply::BgpStatus(report)) => {
            out.write_all(render(&report).as_bytes())?;
            Ok(())
        }
        other => {
            // The agent runs but does not report BGP status (an older agent closes the
            // connection on a request it does not know): say so after what is known, as
            // status.go reports a failed BIRD query after "Calico process is running.".
            out.write_all(b"Calico process is running.\n")?;
            let why = match other {
                Ok(Reply::Rejected(why)) => why,
                Ok(reply) => format!("unexpected reply {reply:?}"),
                Err(CallError::NotSent(e)) => e.to_string(),
                Err(CallError::NoReply(e)) => format!("no answer ({e})"),
            };
            Err(CmdError::failed(format!(
                "error executing command: the node agent did not report BGP status: {why}"
            )))
        }
    }
}

fn log_debug(message: &str) {
    if std::env::var_os("CALICOCTL_DEBUG").is_some() {
        eprintln!("{message}");
    }
}

/// The whole output for `report`, as status.go prints it.
pub fn render(report: &BgpStatusReport) -> String {
    let mut s = String::from("Calico process is running.\n");
    if !report.ipv4_running && !report.ipv6_running {
        s.push_str("\nThe BGP backend process (BIRD) is not running.\n");
    } else {
        for (family, running, process) in [
            (4, report.ipv4_running, "bird"),
            (6, report.ipv6_running, "bird6"),
        ] {
            if !running {
                s.push_str(&format!(
                    "\nINFO: BIRDv{family} process: '{process}' is not running.\n"
                ));
                continue;
            }
            s.push_str(&format!("\nIPv{family} BGP status\n"));
            let peers: Vec<&BgpPeerStatus> = report
                .peers
                .iter()
                .filter(|p| p.address.is_ipv4() == (family == 4))
                .collect();
            if peers.is_empty() {
                s.push_str(&format!("No IPv{family} peers found.\n"));
            } else {
                let rows: Vec<Vec<String>> = peers
                    .iter()
                    .map(|p| {
                        vec![
                            p.address.to_string(),
                            p.peer_type.clone(),
                            p.state.clone(),
                            p.since.clone(),
                            p.info.clone(),
                        ]
                    })
                    .collect();
                s.push_str(&table(
                    &["Peer address", "Peer type", "State", "Since", "Info"],
                    &rows,
                ));
            }
        }
    }
    // status.go's closing fmt.Println().
    s.push('\n');
    s
}

/// tablewriter v0.0.5's widest line before wrapping (`MAX_ROW_WIDTH`).
const MAX_CELL_WIDTH: usize = 30;

/// A table as olekukonko/tablewriter v0.0.5 renders it with its defaults (as status.go uses
/// it): `+---+` borders, headers upper-cased (`Title`) and centred, cells wider than 30
/// columns wrapped on spaces with minimal raggedness (`WrapString`), numbers right-aligned
/// and other text left-aligned, one space of padding each side.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let headers: Vec<Vec<String>> = headers.iter().map(|h| wrap(&title(h))).collect();
    let rows: Vec<Vec<Vec<String>>> = rows
        .iter()
        .map(|r| {
            (0..columns)
                .map(|i| wrap(r.get(i).map_or("", String::as_str)))
                .collect()
        })
        .collect();
    let mut widths = vec![0usize; columns];
    for cells in std::iter::once(&headers).chain(&rows) {
        for (w, lines) in widths.iter_mut().zip(cells) {
            for line in lines {
                *w = (*w).max(width(line));
            }
        }
    }
    let rule: String = {
        let mut r = String::from("+");
        for w in &widths {
            r.push_str(&"-".repeat(w + 2));
            r.push('+');
        }
        r.push('\n');
        r
    };
    let mut out = rule.clone();
    let print = |out: &mut String, cells: &[Vec<String>], header: bool| {
        let height = cells.iter().map(Vec::len).max().unwrap_or(1);
        for line in 0..height {
            out.push('|');
            for (w, lines) in widths.iter().zip(cells) {
                let text = lines.get(line).map_or("", String::as_str);
                let gap = w.saturating_sub(width(text));
                let (left, right) = if header {
                    (gap / 2, gap - gap / 2)
                } else if is_number(text) {
                    (gap, 0)
                } else {
                    (0, gap)
                };
                out.push(' ');
                out.push_str(&" ".repeat(left));
                out.push_str(text);
                out.push_str(&" ".repeat(right));
                out.push_str(" |");
            }
            out.push('\n');
        }
    };
    print(&mut out, &headers, true);
    out.push_str(&rule);
    for cells in &rows {
        print(&mut out, cells, false);
    }
    out.push_str(&rule);
    out
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// tablewriter's `Title`: `_` (and a `.` not between digits) become spaces, trimmed,
/// upper-cased.
fn title(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let digit_or_space = |c: Option<&char>| c.is_some_and(|c| c.is_ascii_digit() || *c == ' ');
    let replaced: String = chars
        .iter()
        .enumerate()
        .map(|(i, &c)| match c {
            '_' => ' ',
            '.' if (i != 0 && !digit_or_space(chars.get(i - 1)))
                || (i + 1 != chars.len() && !digit_or_space(chars.get(i + 1))) =>
            {
                ' '
            }
            c => c,
        })
        .collect();
    let trimmed = replaced.trim();
    if trimmed.is_empty() && !name.is_empty() {
        return " ".into();
    }
    trimmed.to_uppercase()
}

/// tablewriter's `decimal` (`^-?(?:\d{1,3}(?:,\d{3})*|\d+)(?:\.\d+)?$`) and `percent`
/// patterns, on the trimmed text: such cells are right-aligned.
fn is_number(text: &str) -> bool {
    let t = text.trim();
    let t = t.strip_prefix('-').unwrap_or(t);
    let (int, frac) = match t.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (t, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let grouped = {
        let groups: Vec<&str> = int.split(',').collect();
        groups.len() > 1
            && (1..=3).contains(&groups[0].len())
            && digits(groups[0])
            && groups[1..].iter().all(|g| g.len() == 3 && digits(g))
    };
    (digits(int) || grouped) && frac.is_none_or(digits)
}

/// tablewriter's `parseDimension` with wrapping on: a cell's lines, each paragraph wrapped
/// at the cell's own width capped to [`MAX_CELL_WIDTH`] (never below its longest word).
fn wrap(text: &str) -> Vec<String> {
    let paragraphs: Vec<&str> = text.split('\n').collect();
    let widest = paragraphs.iter().map(|p| width(p)).max().unwrap_or(0);
    let limit = widest.min(MAX_CELL_WIDTH);
    let mut lines = Vec::new();
    for (i, para) in paragraphs.iter().enumerate() {
        if i > 0 {
            lines.push(" ".to_string());
        }
        lines.extend(wrap_words(para, limit));
    }
    lines
}

/// `WrapString`/`WrapWords`: split on single spaces, then break into lines minimising the
/// sum of squared shortfalls from `limit` (a line over it costs 1e5 more).
fn wrap_words(para: &str, limit: usize) -> Vec<String> {
    const PENALTY: i64 = 100_000;
    let words: Vec<&str> = para.split(' ').collect();
    let limit = words.iter().map(|w| width(w)).fold(limit, usize::max) as i64;
    let n = words.len();
    // length(i, j): words i..=j joined by single spaces.
    let mut prefix = vec![0i64; n + 1];
    for (i, w) in words.iter().enumerate() {
        prefix[i + 1] = prefix[i] + width(w) as i64;
    }
    let length = |i: usize, j: usize| prefix[j + 1] - prefix[i] + (j - i) as i64;
    let mut cost = vec![i64::from(i32::MAX); n];
    let mut next_break = vec![n; n];
    for i in (0..n).rev() {
        if length(i, n - 1) <= limit {
            cost[i] = 0;
            next_break[i] = n;
            continue;
        }
        for j in i + 1..n {
            let d = limit - length(i, j - 1);
            let mut c = d * d + cost[j];
            if length(i, j - 1) > limit {
                c += PENALTY;
            }
            if c < cost[i] {
                cost[i] = c;
                next_break[i] = j;
            }
        }
    }
    let mut lines = Vec::new();
    let mut i = 0;
    while i < n {
        lines.push(words[i..next_break[i]].join(" "));
        i = next_break[i];
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(address: &str, peer_type: &str, state: &str, since: &str, info: &str) -> BgpPeerStatus {
        BgpPeerStatus {
            name: String::new(),
            address: address.parse().expect("address"),
            peer_type: peer_type.into(),
            state: state.into(),
            since: since.into(),
            info: info.into(),
        }
    }

    fn report(peers: Vec<BgpPeerStatus>) -> BgpStatusReport {
        BgpStatusReport {
            ipv4_running: true,
            ipv6_running: true,
            speaker: "BIRD 2.0.12".into(),
            peers,
        }
    }

    /// The example of Calico's docs (and /work/shared/reference/bgp.md §1.7): mirrors
    /// status.go printBIRDPeers and printPeers.
    #[test]
    fn one_mesh_peer_and_no_ipv6_peers() {
        let got = render(&report(vec![peer(
            "172.17.8.102",
            "node-to-node mesh",
            "up",
            "23:30:04",
            "Established",
        )]));
        assert_eq!(
            got,
            "Calico process is running.

IPv4 BGP status
+--------------+-------------------+-------+----------+-------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
+--------------+-------------------+-------+----------+-------------+
| 172.17.8.102 | node-to-node mesh | up    | 23:30:04 | Established |
+--------------+-------------------+-------+----------+-------------+

IPv6 BGP status
No IPv6 peers found.

"
        );
    }

    /// An INFO over 30 columns wraps on spaces as tablewriter's WrapString does, the other
    /// cells of the row padded below; IPv6 peers get their own table.
    #[test]
    fn long_info_wraps_and_families_are_split() {
        let got = render(&report(vec![
            peer(
                "10.0.0.1",
                "global",
                "start",
                "2026-12-06",
                "Active Socket: Connection refused",
            ),
            peer("10.0.0.2", "node specific", "start", "10:00:01", "Connect"),
            peer(
                "fd00::2",
                "node-to-node mesh",
                "up",
                "10:00:02",
                "Established",
            ),
        ]));
        assert_eq!(
            got,
            "Calico process is running.

IPv4 BGP status
+--------------+---------------+-------+------------+---------------------------+
| PEER ADDRESS |   PEER TYPE   | STATE |   SINCE    |           INFO            |
+--------------+---------------+-------+------------+---------------------------+
| 10.0.0.1     | global        | start | 2026-12-06 | Active Socket: Connection |
|              |               |       |            | refused                   |
| 10.0.0.2     | node specific | start | 10:00:01   | Connect                   |
+--------------+---------------+-------+------------+---------------------------+

IPv6 BGP status
+--------------+-------------------+-------+----------+-------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
+--------------+-------------------+-------+----------+-------------+
| fd00::2      | node-to-node mesh | up    | 10:00:02 | Established |
+--------------+-------------------+-------+----------+-------------+

"
        );
    }

    #[test]
    fn speakers_not_running() {
        let mut r = report(Vec::new());
        r.ipv4_running = false;
        r.ipv6_running = false;
        assert_eq!(
            render(&r),
            "Calico process is running.\n\nThe BGP backend process (BIRD) is not running.\n\n"
        );
        r.ipv4_running = true;
        assert_eq!(
            render(&r),
            "Calico process is running.\n\nIPv4 BGP status\nNo IPv4 peers found.\n\n\
             INFO: BIRDv6 process: 'bird6' is not running.\n\n"
        );
    }

    /// tablewriter's WrapWords: minimal raggedness, not greedy.
    #[test]
    fn wrapping_and_alignment_follow_tablewriter() {
        assert_eq!(wrap("Established"), ["Established"]);
        assert_eq!(
            wrap("Idle BGP Error: Bad BGP identifier"),
            ["Idle BGP Error: Bad BGP", "identifier"]
        );
        // The last line costs nothing, so a long first line wins.
        assert_eq!(
            wrap("aaaa bbbb cccc dddd eeee ffff gggg"),
            ["aaaa bbbb cccc dddd eeee ffff", "gggg"]
        );
        assert_eq!(wrap("a\nb"), ["a", " ", "b"]);
        assert_eq!(
            wrap("averyveryveryveryverylongwordthatislong x"),
            ["averyveryveryveryverylongwordthatislong", "x"]
        );
        assert!(is_number("1,234.5") && is_number("-42") && !is_number("10.0.0.1"));
        assert!(!is_number("") && !is_number("23:30:04"));
        assert_eq!(title("Peer_address.x"), "PEER ADDRESS X");
        assert_eq!(
            table(&["n"], &[vec!["7".into()], vec!["123".into()]]),
            "+-----+\n|  N  |\n+-----+\n|   7 |\n| 123 |\n+-----+\n"
        );
    }
}
