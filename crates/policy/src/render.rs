//! Rendering: parsed rules to nft rules, policy/profile chains, per-endpoint chains and the
//! table's fixed chains (Felix's `felix/rules/policy.go`, `endpoints.go`, `static.go`,
//! `dispatch.go`, in their nftables flavour).
//!
//! Where it departs from Felix: a rule's positive alternatives (several nets, several ports
//! or named ports) become one nft rule each rather than anonymous sets (a Log rule's
//! alternatives set a scratch bit and log once); a rule is left out of an address family
//! whose nets it cannot match (`filterNets`); and instead of a reverse-path check in a raw
//! chain, each endpoint's egress chain first drops sources other than its own addresses.

use crate::ir::{Action, Match, Rule};
use crate::model::{ParsedEntity, ParsedRule, RuleAction, SetSpec};
use crate::names;
use calico_netfilter::nft::{self, Verdict};
use ipnet::IpNet;

/// Felix's mark bits, handed out lowest-first from the mask (`felix/markbits`): accept,
/// pass, drop, scratch0, scratch1 (3.30+ order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkBits {
    pub accept: u32,
    pub pass: u32,
    pub drop: u32,
    pub scratch0: u32,
    pub scratch1: u32,
}

/// Felix's default `NftablesMarkMask`.
pub const DEFAULT_MARK_MASK: u32 = 0xffff_0000;

impl MarkBits {
    /// The bits from a mask; `None` when it has fewer than five bits.
    pub fn from_mask(mask: u32) -> Option<Self> {
        let mut bits = (0..32).map(|i| 1u32 << i).filter(|b| mask & b != 0);
        Some(MarkBits {
            accept: bits.next()?,
            pass: bits.next()?,
            drop: bits.next()?,
            scratch0: bits.next()?,
            scratch1: bits.next()?,
        })
    }

    pub fn all(&self) -> u32 {
        self.accept | self.pass | self.drop | self.scratch0 | self.scratch1
    }
}

impl Default for MarkBits {
    fn default() -> Self {
        MarkBits {
            accept: 0x10000,
            pass: 0x20000,
            drop: 0x40000,
            scratch0: 0x80000,
            scratch1: 0x100000,
        }
    }
}

pub(crate) fn mark_set(bit: u32) -> Match {
    Match::Mark {
        mask: bit,
        value: bit,
        neq: false,
    }
}

pub(crate) fn mark_clear(bit: u32) -> Match {
    Match::Mark {
        mask: bit,
        value: 0,
        neq: false,
    }
}

pub(crate) fn verdict(v: Verdict) -> Action {
    Action::Verdict(v)
}

/// The set names of a set spec: (v4, v6).
pub fn set_names(spec: &SetSpec) -> (String, String) {
    let id = spec.id();
    (names::set_name(true, &id), names::set_name(false, &id))
}

fn family_of(net: &IpNet) -> bool {
    matches!(net, IpNet::V4(_))
}

/// The alternatives one side of a rule offers for a family: its positive nets (any of) and
/// its ports (any of numeric ranges and named-port sets).
struct Side<'a> {
    e: &'a ParsedEntity,
    source: bool,
}

impl Side<'_> {
    fn nets(&self, v4: Option<bool>) -> Option<Vec<Match>> {
        if self.e.nets.is_empty() {
            return Some(vec![]);
        }
        let alts: Vec<Match> = self
            .e
            .nets
            .iter()
            .filter(|n| v4.is_none_or(|v| family_of(n) == v))
            .map(|n| Match::Net {
                source: self.source,
                net: *n,
                neq: false,
            })
            .collect();
        if alts.is_empty() { None } else { Some(alts) }
    }

    /// Whether the negated nets leave the rule anything to say in this family
    /// (`policy.go: filterNets`): none of this family, or one that is everything (`0.0.0.0/0`
    /// negated), and Felix drops the rule for the family.
    fn not_nets_ok(&self, v4: Option<bool>) -> bool {
        if self.e.not_nets.is_empty() {
            return true;
        }
        let mut ours = self
            .e
            .not_nets
            .iter()
            .filter(|n| v4.is_none_or(|v| family_of(n) == v))
            .peekable();
        ours.peek().is_some() && ours.all(|n| n.prefix_len() != 0)
    }

    fn ports(&self, v4: Option<bool>) -> Vec<Match> {
        let mut alts: Vec<Match> = self
            .e
            .ports
            .iter()
            .map(|(a, b)| Match::Ports {
                dst: !self.source,
                first: *a,
                last: *b,
                neq: false,
            })
            .collect();
        for s in &self.e.named_port_sets {
            let (n4, n6) = set_names(s);
            let v = v4.unwrap_or(true);
            alts.push(Match::NamedPortSet {
                dst: !self.source,
                v4: v,
                set: if v { n4 } else { n6 },
                neq: false,
            });
        }
        alts
    }

    fn fixed(&self, v4: Option<bool>, out: &mut Vec<Match>) {
        for s in &self.e.sets {
            let (n4, n6) = set_names(s);
            let v = v4.unwrap_or(true);
            out.push(Match::AddrSet {
                source: self.source,
                v4: v,
                set: if v { n4 } else { n6 },
                neq: false,
            });
        }
        for n in &self.e.not_nets {
            if v4.is_none_or(|v| family_of(n) == v) {
                out.push(Match::Net {
                    source: self.source,
                    net: *n,
                    neq: true,
                });
            }
        }
        for s in &self.e.not_sets {
            let (n4, n6) = set_names(s);
            let v = v4.unwrap_or(true);
            out.push(Match::AddrSet {
                source: self.source,
                v4: v,
                set: if v { n4 } else { n6 },
                neq: true,
            });
        }
    }

    fn fixed_ports(&self, v4: Option<bool>, out: &mut Vec<Match>) {
        for (a, b) in &self.e.not_ports {
            out.push(Match::Ports {
                dst: !self.source,
                first: *a,
                last: *b,
                neq: true,
            });
        }
        for s in &self.e.not_named_port_sets {
            let (n4, n6) = set_names(s);
            let v = v4.unwrap_or(true);
            out.push(Match::NamedPortSet {
                dst: !self.source,
                v4: v,
                set: if v { n4 } else { n6 },
                neq: true,
            });
        }
    }

    /// Whether a match on this side depends on the address family.
    fn family_bound(&self) -> bool {
        let e = self.e;
        !(e.nets.is_empty()
            && e.not_nets.is_empty()
            && e.sets.is_empty()
            && e.not_sets.is_empty()
            && e.named_port_sets.is_empty()
            && e.not_named_port_sets.is_empty())
    }
}

/// The families a rule renders for: `[None]` when nothing in it depends on the family.
fn families(r: &ParsedRule) -> Vec<Option<bool>> {
    let fixed = match (r.ip_version, r.protocol) {
        (Some(4), _) | (_, Some(1)) => Some(true),
        (Some(6), _) | (_, Some(58)) => Some(false),
        _ => None,
    };
    if let Some(v4) = fixed {
        return vec![Some(v4)];
    }
    let src = Side {
        e: &r.src,
        source: true,
    };
    let dst = Side {
        e: &r.dst,
        source: false,
    };
    if !src.family_bound() && !dst.family_bound() {
        return vec![None];
    }
    vec![Some(true), Some(false)]
}

/// The actions of a rule's verdict (`policy.go`: allow sets the accept bit and returns, pass
/// sets the pass bit and returns, deny drops, log logs and goes on).
fn rule_actions(action: RuleAction, marks: &MarkBits, log_prefix: &str) -> Vec<Action> {
    match action {
        RuleAction::Allow => vec![
            Action::SetMark {
                set: marks.accept,
                clear: 0,
            },
            verdict(Verdict::Return),
        ],
        RuleAction::Pass => vec![
            Action::SetMark {
                set: marks.pass,
                clear: 0,
            },
            verdict(Verdict::Return),
        ],
        RuleAction::Deny => vec![
            Action::SetMark {
                set: marks.drop,
                clear: 0,
            },
            verdict(Verdict::Drop),
        ],
        RuleAction::Log => vec![Action::Log {
            prefix: format!("{log_prefix}: "),
        }],
    }
}

/// One Calico rule as nft rules: one per family it needs and per combination of its
/// alternatives (positive nets and ports are "any of", which one nft rule cannot say without
/// anonymous sets).
pub fn render_rule(r: &ParsedRule, marks: &MarkBits, log_prefix: &str, comment: &str) -> Vec<Rule> {
    let src = Side {
        e: &r.src,
        source: true,
    };
    let dst = Side {
        e: &r.dst,
        source: false,
    };
    let actions = rule_actions(r.action, marks, log_prefix);
    let mut out = Vec::new();
    let mut all_combos: Vec<Vec<Match>> = Vec::new();
    for v4 in families(r) {
        let (Some(src_nets), Some(dst_nets)) = (src.nets(v4), dst.nets(v4)) else {
            continue; // the rule's nets are all of the other family
        };
        if !src.not_nets_ok(v4) || !dst.not_nets_ok(v4) {
            continue;
        }
        let mut fixed = Vec::new();
        if let Some(v) = v4 {
            fixed.push(Match::Family { v4: v });
        }
        if let Some(p) = r.protocol {
            fixed.push(Match::Proto {
                proto: p,
                neq: false,
            });
        }
        if let Some(p) = r.not_protocol {
            fixed.push(Match::Proto {
                proto: p,
                neq: true,
            });
        }
        let icmp_v4 = r.protocol == Some(1);
        if let Some((t, c)) = r.icmp {
            fixed.push(Match::Icmp {
                v4: icmp_v4,
                icmp_type: t,
                code: c,
                neq: false,
            });
        }
        if let Some((t, c)) = r.not_icmp {
            fixed.push(Match::Icmp {
                v4: icmp_v4,
                icmp_type: t,
                code: c,
                neq: true,
            });
        }
        src.fixed(v4, &mut fixed);
        dst.fixed(v4, &mut fixed);
        src.fixed_ports(v4, &mut fixed);
        dst.fixed_ports(v4, &mut fixed);
        let groups = [src_nets, dst_nets, src.ports(v4), dst.ports(v4)];
        let mut combos: Vec<Vec<Match>> = vec![fixed];
        for g in groups {
            if g.is_empty() {
                continue;
            }
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    g.iter().map(move |m| {
                        let mut c = c.clone();
                        c.push(m.clone());
                        c
                    })
                })
                .collect();
        }
        all_combos.extend(combos);
    }
    if r.action == RuleAction::Log && all_combos.len() > 1 {
        // Any of several alternatives: logged once, through a scratch bit (as Felix's
        // rule blocks use them), not once per alternative that matches.
        out.push(
            Rule::new(
                vec![],
                vec![Action::SetMark {
                    set: 0,
                    clear: marks.scratch0,
                }],
            )
            .comment(comment),
        );
        for matches in all_combos {
            out.push(
                Rule::new(
                    matches,
                    vec![Action::SetMark {
                        set: marks.scratch0,
                        clear: 0,
                    }],
                )
                .comment(comment),
            );
        }
        let mut log = actions;
        log.push(Action::SetMark {
            set: 0,
            clear: marks.scratch0,
        });
        out.push(Rule::new(vec![mark_set(marks.scratch0)], log).comment(comment));
        return out;
    }
    for matches in all_combos {
        out.push(Rule::new(matches, actions.clone()).comment(comment));
    }
    out
}

/// A policy's or profile's chain for one direction.
pub fn render_rules_chain(
    what: &str,
    rules: &[ParsedRule],
    marks: &MarkBits,
    log_prefix: &str,
) -> Vec<Rule> {
    rules
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            let comment = format!("{what} rule {}: {:?}", i + 1, r.action);
            render_rule(r, marks, log_prefix, &comment)
        })
        .collect()
}

/// One tier as an endpoint sees it: its policies' chains in order.
pub struct TierChains<'a> {
    pub name: &'a str,
    pub pass_by_default: bool,
    pub chains: Vec<String>,
}

/// What an endpoint chain needs besides its policies.
pub struct EndpointChainOptions {
    pub ingress: bool,
    /// From the workload: the source addresses it may use (its own and its
    /// `allowSpoofedSourcePrefixes`); anything else is dropped first.
    pub sources: Vec<IpNet>,
    pub invalid_check: bool,
    pub drop_vxlan: Option<u16>,
    pub drop_ipip: bool,
}

/// An endpoint's chain for one direction (`endpoints.go: endpointIptablesChain`).
pub fn render_endpoint_chain(
    tiers: &[TierChains<'_>],
    profiles: &[String],
    opts: &EndpointChainOptions,
    marks: &MarkBits,
) -> Vec<Rule> {
    let mut out = Vec::new();
    if !opts.ingress {
        // Felix drops what fails the reverse-path check before anything else (raw
        // `cali-rpf`, rp_filter on the interface); here each endpoint's own addresses are
        // the only sources its interface may carry, which is what a strict reverse-path
        // check through its /32 and /128 routes allows.
        for v4 in [true, false] {
            let mut matches = vec![Match::Family { v4 }];
            matches.extend(opts.sources.iter().filter(|n| family_of(n) == v4).map(|n| {
                Match::Net {
                    source: true,
                    net: *n,
                    neq: true,
                }
            }));
            out.push(
                Rule::new(matches, vec![verdict(Verdict::Drop)])
                    .comment("Drop packets from workloads not using their own addresses"),
            );
        }
    }
    out.push(Rule::new(
        vec![Match::CtState {
            bits: nft::CT_STATE_ESTABLISHED | nft::CT_STATE_RELATED,
        }],
        vec![verdict(Verdict::Accept)],
    ));
    if opts.invalid_check {
        out.push(Rule::new(
            vec![Match::CtState {
                bits: nft::CT_STATE_INVALID,
            }],
            vec![verdict(Verdict::Drop)],
        ));
    }
    out.push(Rule::new(
        vec![],
        vec![Action::SetMark {
            set: 0,
            clear: marks.accept | marks.pass,
        }],
    ));
    if !opts.ingress {
        if let Some(port) = opts.drop_vxlan {
            out.push(
                Rule::new(
                    vec![
                        Match::Proto {
                            proto: nft::IPPROTO_UDP,
                            neq: false,
                        },
                        Match::Ports {
                            dst: true,
                            first: port,
                            last: port,
                            neq: false,
                        },
                    ],
                    vec![verdict(Verdict::Drop)],
                )
                .comment("Drop VXLAN encapped packets originating in workloads"),
            );
        }
        if opts.drop_ipip {
            out.push(
                Rule::new(
                    vec![Match::Proto {
                        proto: 4,
                        neq: false,
                    }],
                    vec![verdict(Verdict::Drop)],
                )
                .comment("Drop IPinIP encapped packets originating in workloads"),
            );
        }
    }
    for tier in tiers.iter().filter(|t| !t.chains.is_empty()) {
        out.push(
            Rule::new(
                vec![],
                vec![Action::SetMark {
                    set: 0,
                    clear: marks.pass,
                }],
            )
            .comment(format!("Start of tier {}", tier.name)),
        );
        for chain in &tier.chains {
            out.push(Rule::new(
                vec![mark_clear(marks.pass)],
                vec![verdict(Verdict::Jump(chain.clone()))],
            ));
            out.push(
                Rule::new(vec![mark_set(marks.accept)], vec![verdict(Verdict::Return)])
                    .comment("Return if policy accepted"),
            );
        }
        if !tier.pass_by_default {
            out.push(
                Rule::new(vec![mark_clear(marks.pass)], vec![verdict(Verdict::Drop)]).comment(
                    format!(
                        "End of tier {}. Drop if no policies passed packet",
                        tier.name
                    ),
                ),
            );
        }
    }
    for chain in profiles {
        out.push(Rule::new(
            vec![],
            vec![verdict(Verdict::Jump(chain.clone()))],
        ));
        out.push(
            Rule::new(vec![mark_set(marks.accept)], vec![verdict(Verdict::Return)])
                .comment("Return if profile accepted"),
        );
    }
    out.push(
        Rule::new(vec![], vec![verdict(Verdict::Drop)]).comment("Drop if no profiles matched"),
    );
    out
}
