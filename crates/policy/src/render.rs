//! Rendering: parsed rules to nft rules, policy/profile chains, per-endpoint chains and the
//! table's fixed chains (Felix's `felix/rules/policy.go`, `endpoints.go`, `static.go`,
//! `dispatch.go`, in their nftables flavour).
//!
//! Where it departs from Felix: a rule's positive alternatives (several nets, several ports
//! or named ports) become one nft rule each rather than anonymous sets (a Log rule's
//! alternatives set a scratch bit and log once); a rule is left out of an address family
//! whose nets it cannot match (`filterNets`); a rule's matches are ordered cheapest first
//! (protocol and ports before set lookups); instead of a reverse-path check in a raw
//! chain, each endpoint's egress chain first drops sources other than its own addresses;
//! and a selector's set of one family exists only while it has members (see
//! [`SetMembers`]), so an IPv4-only cluster has no IPv6 sets and no rules testing them.

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

/// The kernel sets a selector's or named port's set is now, per family. A family's set
/// with no members does not exist: a rule that needs a member of it can never match, so it
/// is left out of that family; a test for a non-member always holds, so it is dropped from
/// the rule. On a cluster with no IPv6 endpoints, half the sets and the rules that test them
/// are then not in the kernel, whose commit looks every set up by name in a list of all of
/// them (the first apply's largest cost at 4,000 sets). A selector set holding only host
/// addresses is an exact set (`cali40s-…`: one kernel element per member, hashed); once a
/// prefix joins it, an interval set (`cali40p-…`: two elements per range). A change of
/// either re-renders the chains that use the set (the engine's job).
pub trait SetMembers {
    /// The family's set name, `None` while it has no members.
    fn set_name(&self, spec: &SetSpec, v4: bool) -> Option<String>;
}

/// Every set counted as having host members in both families: rules rendered as if nothing
/// were pruned (tests of the rules' shape).
pub struct EverySetFilled;

impl SetMembers for EverySetFilled {
    fn set_name(&self, spec: &SetSpec, v4: bool) -> Option<String> {
        let (n4, n6) = set_names(spec);
        Some(if v4 { n4 } else { n6 })
    }
}

fn family_of(net: &IpNet) -> bool {
    matches!(net, IpNet::V4(_))
}

/// The alternatives one side of a rule offers for a family: its positive nets (any of) and
/// its ports (any of numeric ranges and named-port sets).
struct Side<'a> {
    e: &'a ParsedEntity,
    source: bool,
    members: &'a dyn SetMembers,
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

    /// The port alternatives; `None` when the side names ports but none of them can match
    /// in this family (its named ports' sets are empty there).
    fn ports(&self, v4: Option<bool>) -> Option<Vec<Match>> {
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
        let v = v4.unwrap_or(true);
        for s in &self.e.named_port_sets {
            let Some(set) = self.members.set_name(s, v) else {
                continue;
            };
            alts.push(Match::NamedPortSet {
                dst: !self.source,
                v4: v,
                set,
                neq: false,
            });
        }
        let named = !self.e.ports.is_empty() || !self.e.named_port_sets.is_empty();
        if named && alts.is_empty() {
            None
        } else {
            Some(alts)
        }
    }

    /// Whether every set this side needs a member of has members in the family.
    fn sets_filled(&self, v4: Option<bool>) -> bool {
        let v = v4.unwrap_or(true);
        self.e
            .sets
            .iter()
            .all(|s| self.members.set_name(s, v).is_some())
    }

    fn fixed(&self, v4: Option<bool>, out: &mut Vec<Match>) {
        let v = v4.unwrap_or(true);
        // Each has a name here: the family is skipped otherwise (`sets_filled`).
        for set in self
            .e
            .sets
            .iter()
            .filter_map(|s| self.members.set_name(s, v))
        {
            out.push(Match::AddrSet {
                source: self.source,
                v4: v,
                set,
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
        // An empty set has no name: every address is not in it.
        for set in self
            .e
            .not_sets
            .iter()
            .filter_map(|s| self.members.set_name(s, v))
        {
            out.push(Match::AddrSet {
                source: self.source,
                v4: v,
                set,
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
        let v = v4.unwrap_or(true);
        for set in (self.e.not_named_port_sets.iter()).filter_map(|s| self.members.set_name(s, v)) {
            out.push(Match::NamedPortSet {
                dst: !self.source,
                v4: v,
                set,
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
        members: &EverySetFilled,
    };
    let dst = Side {
        e: &r.dst,
        source: false,
        members: &EverySetFilled,
    };
    if !src.family_bound() && !dst.family_bound() {
        return vec![None];
    }
    vec![Some(true), Some(false)]
}

/// Which way a policy's or profile's chain filters: ingress chains are reached only from
/// the chains of the endpoints packets go to (`filter-cali-tw-*`), the last verdict a
/// forwarded packet needs; egress chains from those of the endpoints they come from, after
/// which the destination's ingress (or the host's `DefaultEndpointToHostAction`) may still
/// have to be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// The actions of a rule's verdict (`policy.go`: allow sets the accept bit and returns, pass
/// sets the pass bit and returns, deny drops, log logs and goes on). An ingress Allow accepts
/// outright: nothing is left to decide after the destination's ingress (see
/// [`render_endpoint_chain`]), and the accept spares the caller a mark test per policy.
fn rule_actions(
    action: RuleAction,
    direction: Direction,
    marks: &MarkBits,
    log_prefix: &str,
) -> Vec<Action> {
    match action {
        RuleAction::Allow if direction == Direction::Ingress => vec![verdict(Verdict::Accept)],
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

/// The order of a rule's matches: by what a packet pays to evaluate them (a family or
/// protocol compare, a port compare, an address compare, then set lookups), so that the
/// cheap ones reject a packet first. A packet walking an endpoint's policies meets most
/// rules with the wrong port or protocol; it then never pays their sets' lookups.
fn match_cost(m: &Match) -> u8 {
    match m {
        Match::Family { .. } => 0,
        Match::Proto { .. } => 1,
        Match::Icmp { .. } => 2,
        Match::Ports { .. } => 3,
        Match::Net { .. } => 4,
        Match::AddrSet { .. } | Match::NamedPortSet { .. } => 5,
        _ => 6,
    }
}

/// One Calico rule as nft rules: one per family it needs and per combination of its
/// alternatives (positive nets and ports are "any of", which one nft rule cannot say without
/// anonymous sets).
pub fn render_rule(
    r: &ParsedRule,
    direction: Direction,
    cx: &RenderContext<'_>,
    comment: &str,
) -> Vec<Rule> {
    let (marks, log_prefix) = (cx.marks, cx.log_prefix);
    let src = Side {
        e: &r.src,
        source: true,
        members: cx.members,
    };
    let dst = Side {
        e: &r.dst,
        source: false,
        members: cx.members,
    };
    let actions = rule_actions(r.action, direction, marks, log_prefix);
    let mut out = Vec::new();
    let mut all_combos: Vec<Vec<Match>> = Vec::new();
    for v4 in families(r) {
        let (Some(src_nets), Some(dst_nets)) = (src.nets(v4), dst.nets(v4)) else {
            continue; // the rule's nets are all of the other family
        };
        if !src.not_nets_ok(v4) || !dst.not_nets_ok(v4) {
            continue;
        }
        if !src.sets_filled(v4) || !dst.sets_filled(v4) {
            continue; // a set it needs a member of is empty in this family
        }
        let (Some(src_ports), Some(dst_ports)) = (src.ports(v4), dst.ports(v4)) else {
            continue; // none of its ports can match in this family
        };
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
        let groups = [src_nets, dst_nets, src_ports, dst_ports];
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
    for matches in &mut all_combos {
        // All of a rule's matches must hold, so their order is free: the cheap compares
        // first, so that a packet the rule does not concern leaves it before any set lookup.
        matches.sort_by_key(match_cost);
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

/// What rendering a rule needs besides the rule: the node's mark bits, the Log prefix and
/// which sets have members.
pub struct RenderContext<'a> {
    pub marks: &'a MarkBits,
    pub log_prefix: &'a str,
    pub members: &'a dyn SetMembers,
}

/// A policy's or profile's chain for one direction.
pub fn render_rules_chain(
    what: &str,
    rules: &[ParsedRule],
    direction: Direction,
    cx: &RenderContext<'_>,
) -> Vec<Rule> {
    rules
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            let comment = format!("{what} rule {}: {:?}", i + 1, r.action);
            render_rule(r, direction, cx, &comment)
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
///
/// Where it departs from Felix: an ingress (to-workload) chain has no "Return if policy
/// accepted" after each policy's jump, because ingress Allow rules accept outright (the
/// to-workload chain is the last thing `filter-FORWARD` asks). That is one rule fewer per
/// policy for every new flow's packet to walk, and for the kernel to check (it walks every
/// chain reachable from the base chains on each commit that adds a rule). Egress chains
/// keep Felix's mark-and-return: after them come the destination's ingress chain or the
/// host's `DefaultEndpointToHostAction`.
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
    if !opts.ingress {
        // Ingress reads no accept bit (its Allow accepts) and each tier clears the pass bit.
        out.push(Rule::new(
            vec![],
            vec![Action::SetMark {
                set: 0,
                clear: marks.accept | marks.pass,
            }],
        ));
    }
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
            if !opts.ingress {
                out.push(
                    Rule::new(vec![mark_set(marks.accept)], vec![verdict(Verdict::Return)])
                        .comment("Return if policy accepted"),
                );
            }
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
        if !opts.ingress {
            out.push(
                Rule::new(vec![mark_set(marks.accept)], vec![verdict(Verdict::Return)])
                    .comment("Return if profile accepted"),
            );
        }
    }
    out.push(
        Rule::new(vec![], vec![verdict(Verdict::Drop)]).comment("Drop if no profiles matched"),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow_from_selector_to_port() -> ParsedRule {
        ParsedRule {
            action: RuleAction::Allow,
            ip_version: None,
            protocol: Some(nft::IPPROTO_TCP),
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            src: ParsedEntity {
                sets: vec![SetSpec::Selector("app == 'a'".into())],
                not_nets: vec!["10.1.0.0/16".parse().expect("net")],
                ..Default::default()
            },
            dst: ParsedEntity {
                ports: vec![(80, 80)],
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_rules_set_lookups_come_after_its_port_and_address_compares() {
        let marks = MarkBits::default();
        let cx = RenderContext {
            marks: &marks,
            log_prefix: "calico-packet",
            members: &EverySetFilled,
        };
        let rules = render_rule(&allow_from_selector_to_port(), Direction::Egress, &cx, "c");
        // IPv4 only: an IPv4 notNets leaves the rule nothing in IPv6 (`filterNets`).
        assert_eq!(rules.len(), 1, "{rules:?}");
        for r in &rules {
            let costs: Vec<u8> = r.matches.iter().map(match_cost).collect();
            assert!(costs.is_sorted(), "{r}");
            assert!(
                matches!(r.matches.last(), Some(Match::AddrSet { .. })),
                "the set lookup is last: {r}"
            );
        }
        assert!(
            rules[0]
                .to_string()
                .starts_with("meta nfproto ipv4 meta l4proto tcp th dport 80 ip saddr != 10.1.0.0/16 ip saddr @cali40s-"),
            "{}",
            rules[0]
        );
    }

    #[test]
    fn ingress_allow_accepts_and_egress_allow_marks_and_returns() {
        let marks = MarkBits::default();
        let cx = RenderContext {
            marks: &marks,
            log_prefix: "p",
            members: &EverySetFilled,
        };
        let r = allow_from_selector_to_port();
        let ingress = render_rule(&r, Direction::Ingress, &cx, "c");
        let egress = render_rule(&r, Direction::Egress, &cx, "c");
        for rule in &ingress {
            assert_eq!(
                rule.actions,
                vec![Action::Verdict(Verdict::Accept)],
                "{rule}"
            );
        }
        for rule in &egress {
            assert_eq!(
                rule.actions,
                vec![
                    Action::SetMark {
                        set: marks.accept,
                        clear: 0
                    },
                    Action::Verdict(Verdict::Return)
                ],
                "{rule}"
            );
        }
        // Pass and Deny are the same both ways.
        for action in [RuleAction::Pass, RuleAction::Deny] {
            let r = ParsedRule {
                action,
                ..r.clone()
            };
            assert_eq!(
                render_rule(&r, Direction::Ingress, &cx, "c"),
                render_rule(&r, Direction::Egress, &cx, "c")
            );
        }
    }

    #[test]
    fn only_egress_endpoint_chains_return_on_the_accept_mark() {
        let marks = MarkBits::default();
        let tiers = [TierChains {
            name: "default",
            pass_by_default: false,
            chains: vec!["p1".into(), "p2".into()],
        }];
        let profiles = vec!["prof".to_string()];
        let chain = |ingress: bool| {
            let opts = EndpointChainOptions {
                ingress,
                sources: vec!["10.0.0.1/32".parse().expect("net")],
                invalid_check: true,
                drop_vxlan: None,
                drop_ipip: false,
            };
            render_endpoint_chain(&tiers, &profiles, &opts, &marks)
        };
        let returns_on_accept = |rules: &[Rule]| {
            rules
                .iter()
                .filter(|r| r.matches == vec![mark_set(marks.accept)])
                .count()
        };
        // Egress: after each of the two policies and the profile.
        assert_eq!(returns_on_accept(&chain(false)), 3);
        let ingress = chain(true);
        assert_eq!(returns_on_accept(&ingress), 0);
        let text: Vec<String> = ingress.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "ct state established,related accept",
                "ct state invalid drop",
                "meta mark set meta mark & 0xfffdffff comment \"Start of tier default\"",
                "meta mark & 0x20000 == 0x0 jump p1",
                "meta mark & 0x20000 == 0x0 jump p2",
                "meta mark & 0x20000 == 0x0 drop comment \"End of tier default. Drop if no policies passed packet\"",
                "jump prof",
                "drop comment \"Drop if no profiles matched\"",
            ]
        );
    }
}
