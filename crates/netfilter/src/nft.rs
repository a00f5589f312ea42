//! nf_tables messages: tables, chains, rules, sets and elements, and the expressions rules are
//! made of ([`Expr`]) with builders for the matches a port forwarder and a policy engine need
//! (`match_*`, `update_mark`, `ifname_vmap`), encoded as the kernel reads them (what `nft`
//! sends for the equivalent rule). The declarative table and its engine are
//! [`crate::ruleset`]'s; this module is the vocabulary.
//!
//! Tables, chains, rules, sets and set elements are `netlink-packet-netfilter`'s typed
//! attributes. The expressions ([`Expr`]) are encoded here by hand: the crate (0.4) has no
//! `fib`, `nat`, `masq`, `ct`, `log`, `range` or `notrack`, and its `meta`/`payload`/`lookup`
//! cannot load the 32-bit registers concatenated keys use; so are the two attributes whose
//! crate encoding differs from what `nft` sends (the expression list, nested in a rule, and a
//! set's concatenation description, flagged nested), and the readers of dumped rules and
//! elements, which read only what they need and so never fail on what other tools
//! (iptables-nft) put there. Framing is the socket layer's. Kernel numbers come from `libc`
//! where it defines them; the attribute numbers (`NFTA_*`), which it does not, are written out
//! from `linux/netfilter/nf_tables.h`.

use crate::socket::{Message, NLM_F_APPEND, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL};
use calico_netlink::attr::{self as nlattr, Attrs};
use calico_netlink::packet::{DefaultNla, Emitable, NLA_F_NESTED, Nla};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, DataAttribute, Hook as HookAttribute, HookNumber, InetHookNumber,
    ListAttribute, RuleAttribute, SetAttribute, SetDescription, SetElementAttribute,
    SetElementList, SetFlags, TableAttribute,
};
use std::net::IpAddr;

/// Typed attributes as the bytes of a message.
fn emit<T: Nla>(attrs: &[T]) -> Attrs {
    let mut a = Attrs::new();
    a.buf.resize(attrs.buffer_len(), 0);
    attrs.emit(&mut a.buf);
    a
}

pub const NFPROTO_INET: u8 = libc::NFPROTO_INET as u8;
pub const NFPROTO_IPV4: u8 = libc::NFPROTO_IPV4 as u8;
pub const NFPROTO_IPV6: u8 = libc::NFPROTO_IPV6 as u8;

const NFT_MSG_NEWTABLE: u8 = libc::NFT_MSG_NEWTABLE as u8;
const NFT_MSG_DELTABLE: u8 = libc::NFT_MSG_DELTABLE as u8;
const NFT_MSG_NEWCHAIN: u8 = libc::NFT_MSG_NEWCHAIN as u8;
const NFT_MSG_GETCHAIN: u8 = libc::NFT_MSG_GETCHAIN as u8;
const NFT_MSG_DELCHAIN: u8 = libc::NFT_MSG_DELCHAIN as u8;
const NFT_MSG_NEWRULE: u8 = libc::NFT_MSG_NEWRULE as u8;
const NFT_MSG_GETRULE: u8 = libc::NFT_MSG_GETRULE as u8;
const NFT_MSG_DELRULE: u8 = libc::NFT_MSG_DELRULE as u8;

const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// `NFTNL_UDATA_*_COMMENT`, the first TLV of a table's, chain's or rule's user data.
const UDATA_COMMENT: u8 = 0;

const NF_ACCEPT: u32 = libc::NF_ACCEPT as u32;
const NF_DROP: u32 = libc::NF_DROP as u32;
const NFT_JUMP: i32 = libc::NFT_JUMP;
const NFT_GOTO: i32 = libc::NFT_GOTO;
const NFT_RETURN: i32 = libc::NFT_RETURN;
const NFT_REG_VERDICT: u32 = libc::NFT_REG_VERDICT as u32;
const NFT_REG_1: u32 = libc::NFT_REG_1 as u32;

/// Netfilter hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = libc::NF_INET_PRE_ROUTING as isize,
    Output = libc::NF_INET_LOCAL_OUT as isize,
    Postrouting = libc::NF_INET_POST_ROUTING as isize,
}

/// The priorities `nft` calls `dstnat` and `srcnat`.
pub const PRIORITY_DSTNAT: i32 = libc::NF_IP_PRI_NAT_DST;
pub const PRIORITY_SRCNAT: i32 = libc::NF_IP_PRI_NAT_SRC;

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// `meta <key>` into register 1 (`nfproto` 15, `l4proto` 16, `mark` 3).
    Meta(u32),
    /// Register 1 to the packet mark.
    MetaSetMark,
    /// Header bytes into register 1: base (1 network, 2 transport), offset, length.
    Payload(u32, u32, u32),
    /// Register 1 compared for equality with the bytes.
    CmpEq(Vec<u8>),
    /// Register 1 = (register 1 & mask) ^ xor, over mask.len() bytes.
    Bitwise {
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `fib daddr type` into register 1.
    FibDaddrType,
    /// Jump to a chain.
    Jump(String),
    Masquerade,
    /// `meta <key>` into a given register.
    MetaTo(u32, u32),
    /// Header bytes into a given register: base, offset, length, register.
    PayloadTo(u32, u32, u32, u32),
    /// A set lookup of the key starting at `sreg`; with `dreg`, a map lookup whose value
    /// goes there. A miss ends the rule.
    Lookup {
        set: String,
        sreg: u32,
        dreg: Option<u32>,
    },
    /// `meta mark` into `reg`, `reg = (reg & mask) ^ xor` (4 bytes), the mark from `reg`.
    MetaMarkTo(u32),
    BitwiseIn {
        reg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    MetaSetMarkFrom(u32),
    /// DNAT to the address in `addr_reg` and the port in `proto_reg` (IPv4 or IPv6).
    DnatRegs {
        v4: bool,
        addr_reg: u32,
        proto_reg: u32,
    },
    /// Register `sreg` compared with the bytes (as many as `data` has, so a shorter value
    /// compares a prefix: `iifname "cali*"`). Ordering compares bytes as `memcmp` does, which
    /// is numeric order for big-endian values (ports, addresses).
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Vec<u8>,
    },
    /// Register `sreg` within `[from, to]` (both inclusive, big-endian), or outside it with
    /// `neq`.
    Range {
        sreg: u32,
        neq: bool,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// The key starting at `sreg` is (or with `invert`, is not) in the named set: `ip saddr
    /// @s`, `ip saddr != @s`. A miss (a hit with `invert`) ends the rule.
    SetLookup {
        set: String,
        sreg: u32,
        invert: bool,
    },
    /// The key starting at `sreg` looked up in a verdict map, whose verdict is taken on a hit
    /// (`iifname vmap @m`); a miss goes on with the next expression.
    VmapLookup {
        map: String,
        sreg: u32,
    },
    /// `ct <key>` into `dreg` (`CT_STATE`: 4 bytes, host order, the `CT_STATE_*` bits).
    Ct {
        key: u32,
        dreg: u32,
    },
    /// A verdict: accept, drop, return, jump, goto.
    Verdict(Verdict),
    /// `log`: to the kernel log, or with a group to NFLOG (`log group N`).
    Log {
        prefix: Option<String>,
        group: Option<u16>,
    },
    /// `counter` (packets and bytes of the rule, read back by `nft list`).
    Counter,
    /// `notrack`: the packet skips conntrack (Felix's raw-table untracked policies; only in a
    /// chain hooked before conntrack, priority `raw`).
    Notrack,
}

/// `NFT_CMP_*`: how [`Expr::Cmp`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
    Lt = 2,
    Lte = 3,
    Gt = 4,
    Gte = 5,
}

/// What a rule, or a verdict map's element, decides.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Accept,
    Drop,
    /// Back to the chain that jumped here (a base chain's policy if none).
    Return,
    /// To the chain, coming back after it (unless it decides).
    Jump(String),
    /// To the chain, not coming back.
    Goto(String),
}

impl Verdict {
    /// `NF_*`/`NFT_*` verdict code and chain.
    fn code(&self) -> (u32, Option<&str>) {
        match self {
            Verdict::Accept => (NF_ACCEPT, None),
            Verdict::Drop => (NF_DROP, None),
            Verdict::Return => (NFT_RETURN as u32, None),
            Verdict::Jump(c) => (NFT_JUMP as u32, Some(c)),
            Verdict::Goto(c) => (NFT_GOTO as u32, Some(c)),
        }
    }

    /// The chain this verdict goes to, if any.
    pub fn chain(&self) -> Option<&str> {
        self.code().1
    }

    /// Writes `NFTA_DATA_VERDICT` into a data attribute being built.
    pub(crate) fn encode_data(&self, data: &mut Attrs) {
        let (code, chain) = self.code();
        data.nest(NFTA_DATA_VERDICT, |v| {
            v.u32_be(NFTA_VERDICT_CODE, code);
            if let Some(c) = chain {
                v.str(NFTA_VERDICT_CHAIN, c);
            }
        });
    }
}

/// 32-bit registers, as concatenations use them (`NFT_REG32_00` and on).
pub const REG32_00: u32 = libc::NFT_REG32_00 as u32;

pub const META_MARK: u32 = libc::NFT_META_MARK as u32;
pub const META_NFPROTO: u32 = libc::NFT_META_NFPROTO as u32;
pub const META_L4PROTO: u32 = libc::NFT_META_L4PROTO as u32;
pub const BASE_NETWORK: u32 = libc::NFT_PAYLOAD_NETWORK_HEADER as u32;
pub const BASE_TRANSPORT: u32 = libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32;
/// `RTN_LOCAL`, what `fib daddr type local` compares with (host byte order).
pub const RTN_LOCAL: u32 = libc::RTN_LOCAL as u32;

fn data_value(a: &mut Attrs, ty: u16, v: &[u8]) {
    a.nest(ty, |d| {
        d.bytes(NFTA_DATA_VALUE, v);
    });
}

fn expr(list: &mut Attrs, name: &str, data: impl FnOnce(&mut Attrs)) {
    list.nest(NFTA_LIST_ELEM, |e| {
        e.str(NFTA_EXPR_NAME, name);
        e.nest(NFTA_EXPR_DATA, data);
    });
}

impl Expr {
    fn encode(&self, list: &mut Attrs) {
        match self {
            Expr::Meta(key) => expr(list, "meta", |d| {
                d.u32_be(2, *key).u32_be(1, NFT_REG_1); // KEY, DREG
            }),
            Expr::MetaSetMark => expr(list, "meta", |d| {
                d.u32_be(2, META_MARK).u32_be(3, NFT_REG_1); // KEY, SREG
            }),
            Expr::Payload(base, offset, len) => expr(list, "payload", |d| {
                d.u32_be(1, NFT_REG_1)
                    .u32_be(2, *base)
                    .u32_be(3, *offset)
                    .u32_be(4, *len);
            }),
            Expr::CmpEq(v) => expr(list, "cmp", |d| {
                d.u32_be(1, NFT_REG_1).u32_be(2, 0); // SREG, OP eq
                data_value(d, 3, v);
            }),
            Expr::Bitwise { mask, xor } => expr(list, "bitwise", |d| {
                d.u32_be(1, NFT_REG_1)
                    .u32_be(2, NFT_REG_1)
                    .u32_be(3, mask.len() as u32);
                data_value(d, 4, mask);
                data_value(d, 5, xor);
            }),
            Expr::FibDaddrType => expr(list, "fib", |d| {
                // DREG, RESULT addrtype (3), FLAGS daddr (2)
                d.u32_be(1, NFT_REG_1).u32_be(2, 3).u32_be(3, 2);
            }),
            Expr::Jump(chain) => expr(list, "immediate", |d| {
                d.u32_be(1, NFT_REG_VERDICT);
                d.nest(2, |data| {
                    data.nest(NFTA_DATA_VERDICT, |v| {
                        v.u32_be(NFTA_VERDICT_CODE, NFT_JUMP as u32)
                            .str(NFTA_VERDICT_CHAIN, chain);
                    });
                });
            }),
            Expr::Masquerade => {
                list.nest(NFTA_LIST_ELEM, |e| {
                    e.str(NFTA_EXPR_NAME, "masq");
                });
            }
            Expr::MetaTo(key, reg) => expr(list, "meta", |d| {
                d.u32_be(2, *key).u32_be(1, *reg);
            }),
            Expr::PayloadTo(base, offset, len, reg) => expr(list, "payload", |d| {
                d.u32_be(1, *reg)
                    .u32_be(2, *base)
                    .u32_be(3, *offset)
                    .u32_be(4, *len);
            }),
            Expr::MetaMarkTo(reg) => expr(list, "meta", |d| {
                d.u32_be(2, META_MARK).u32_be(1, *reg);
            }),
            Expr::BitwiseIn { reg, mask, xor } => expr(list, "bitwise", |d| {
                d.u32_be(1, *reg)
                    .u32_be(2, *reg)
                    .u32_be(3, mask.len() as u32);
                data_value(d, 4, mask);
                data_value(d, 5, xor);
            }),
            Expr::MetaSetMarkFrom(reg) => expr(list, "meta", |d| {
                d.u32_be(2, META_MARK).u32_be(3, *reg);
            }),
            Expr::Lookup { set, sreg, dreg } => expr(list, "lookup", |d| {
                d.str(1, set).u32_be(2, *sreg).u32_be(4, set_id(set));
                if let Some(r) = dreg {
                    d.u32_be(3, *r);
                }
            }),
            Expr::DnatRegs {
                v4,
                addr_reg,
                proto_reg,
            } => expr(list, "nat", |d| {
                let family = if *v4 { NFPROTO_IPV4 } else { NFPROTO_IPV6 };
                d.u32_be(1, 1)
                    .u32_be(2, u32::from(family))
                    .u32_be(3, *addr_reg)
                    .u32_be(5, *proto_reg)
                    .u32_be(7, 0x1 | 0x2);
            }),
            Expr::Cmp { sreg, op, data } => expr(list, "cmp", |d| {
                d.u32_be(1, *sreg).u32_be(2, *op as u32);
                data_value(d, 3, data);
            }),
            Expr::Range {
                sreg,
                neq,
                from,
                to,
            } => expr(list, "range", |d| {
                d.u32_be(1, *sreg).u32_be(2, u32::from(*neq));
                data_value(d, 3, from);
                data_value(d, 4, to);
            }),
            Expr::SetLookup { set, sreg, invert } => expr(list, "lookup", |d| {
                d.str(1, set).u32_be(2, *sreg).u32_be(4, set_id(set));
                if *invert {
                    d.u32_be(5, NFT_LOOKUP_F_INV);
                }
            }),
            Expr::VmapLookup { map, sreg } => expr(list, "lookup", |d| {
                d.str(1, map)
                    .u32_be(2, *sreg)
                    .u32_be(3, NFT_REG_VERDICT)
                    .u32_be(4, set_id(map));
            }),
            Expr::Ct { key, dreg } => expr(list, "ct", |d| {
                d.u32_be(1, *dreg).u32_be(2, *key);
            }),
            Expr::Verdict(v) => expr(list, "immediate", |d| {
                d.u32_be(1, NFT_REG_VERDICT);
                d.nest(2, |data| v.encode_data(data));
            }),
            Expr::Log { prefix, group } => expr(list, "log", |d| {
                if let Some(g) = group {
                    d.u16_be(1, *g);
                }
                if let Some(p) = prefix {
                    d.str(2, p);
                }
            }),
            Expr::Counter => expr(list, "counter", |d| {
                d.u64_be(1, 0).u64_be(2, 0);
            }),
            Expr::Notrack => {
                list.nest(NFTA_LIST_ELEM, |e| {
                    e.str(NFTA_EXPR_NAME, "notrack");
                });
            }
        }
    }
}

const NFT_LOOKUP_F_INV: u32 = libc::NFT_LOOKUP_F_INV as u32;
/// 128-bit data registers (`NFT_REG_1` .. `NFT_REG_4`); each is four of the 32-bit ones.
pub const REG_1: u32 = NFT_REG_1;
pub const REG_2: u32 = libc::NFT_REG_2 as u32;
pub const META_IIFNAME: u32 = libc::NFT_META_IIFNAME as u32;
pub const META_OIFNAME: u32 = libc::NFT_META_OIFNAME as u32;
pub const CT_STATE: u32 = libc::NFT_CT_STATE as u32;
/// `ct state` bits (`NF_CT_STATE_*` of `nf_conntrack_common.h`).
pub const CT_STATE_INVALID: u32 = 1;
pub const CT_STATE_ESTABLISHED: u32 = 1 << 1;
pub const CT_STATE_RELATED: u32 = 1 << 2;
pub const CT_STATE_NEW: u32 = 1 << 3;
pub const CT_STATE_UNTRACKED: u32 = 1 << 6;
pub const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;
pub const IPPROTO_UDP: u8 = libc::IPPROTO_UDP as u8;
pub const IPPROTO_SCTP: u8 = libc::IPPROTO_SCTP as u8;
pub const IPPROTO_ICMP: u8 = libc::IPPROTO_ICMP as u8;
pub const IPPROTO_ICMPV6: u8 = libc::IPPROTO_ICMPV6 as u8;
/// Interface names in registers: `IFNAMSIZ` bytes, NUL-padded.
pub const IFNAME_LEN: usize = libc::IFNAMSIZ;

/// `iifname`/`oifname` compared with `name`, as nft writes it: a trailing `*` compares the
/// bytes before it (`iifname "cali*"`), else the whole NUL-padded name. `neq` negates.
pub fn match_ifname(output: bool, name: &str, neq: bool) -> Vec<Expr> {
    let key = if output { META_OIFNAME } else { META_IIFNAME };
    let data = match name.strip_suffix('*') {
        Some(prefix) => prefix.as_bytes().to_vec(),
        None => ifname_key(name),
    };
    let op = if neq { CmpOp::Neq } else { CmpOp::Eq };
    vec![
        Expr::MetaTo(key, REG_1),
        Expr::Cmp {
            sreg: REG_1,
            op,
            data,
        },
    ]
}

/// An interface name as a key: `IFNAMSIZ` bytes, NUL-padded (cut to 15 bytes).
pub fn ifname_key(name: &str) -> Vec<u8> {
    let mut k = vec![0u8; IFNAME_LEN];
    let b = name.as_bytes();
    let n = b.len().min(IFNAME_LEN - 1);
    k[..n].copy_from_slice(&b[..n]);
    k
}

/// `iifname vmap @map` (or `oifname`).
pub fn ifname_vmap(output: bool, map: &str) -> Vec<Expr> {
    let key = if output { META_OIFNAME } else { META_IIFNAME };
    vec![
        Expr::MetaTo(key, REG_1),
        Expr::VmapLookup {
            map: map.into(),
            sreg: REG_1,
        },
    ]
}

/// `meta l4proto <proto>` (`!=` with `neq`).
pub fn match_l4proto(proto: u8, neq: bool) -> Vec<Expr> {
    vec![
        Expr::MetaTo(META_L4PROTO, REG_1),
        Expr::Cmp {
            sreg: REG_1,
            op: if neq { CmpOp::Neq } else { CmpOp::Eq },
            data: vec![proto],
        },
    ]
}

/// `meta l4proto { tcp, udp, sctp }`-free port load: the source or destination port (the
/// first or second 16 bits of the transport header) into `reg`. Only meaningful after a
/// protocol match of a protocol with ports.
pub fn load_port(dst: bool, reg: u32) -> Expr {
    Expr::PayloadTo(BASE_TRANSPORT, if dst { 2 } else { 0 }, 2, reg)
}

/// `th dport <first>-<last>` (a single port when equal); `neq` negates. After a protocol
/// match (see [`load_port`]).
pub fn match_ports(dst: bool, first: u16, last: u16, neq: bool) -> Vec<Expr> {
    let cmp = if first == last {
        Expr::Cmp {
            sreg: REG_1,
            op: if neq { CmpOp::Neq } else { CmpOp::Eq },
            data: first.to_be_bytes().to_vec(),
        }
    } else {
        Expr::Range {
            sreg: REG_1,
            neq,
            from: first.to_be_bytes().to_vec(),
            to: last.to_be_bytes().to_vec(),
        }
    };
    vec![load_port(dst, REG_1), cmp]
}

/// The address of the given family into `reg`: source or destination.
pub fn load_addr(source: bool, v4: bool, reg: u32) -> Expr {
    let (offset, len) = match (v4, source) {
        (true, true) => (12, 4),
        (true, false) => (16, 4),
        (false, true) => (8, 16),
        (false, false) => (24, 16),
    };
    Expr::PayloadTo(BASE_NETWORK, offset, len, reg)
}

/// `ip saddr @set` / `ip6 daddr != @set`: the address looked up in an address set (after
/// [`match_family`]).
pub fn match_addr_set(source: bool, v4: bool, set: &str, invert: bool) -> Vec<Expr> {
    vec![
        load_addr(source, v4, REG_1),
        Expr::SetLookup {
            set: set.into(),
            sreg: REG_1,
            invert,
        },
    ]
}

/// `ip daddr . meta l4proto . th dport @set` (Felix's named-port sets, `hash:ip,port`): the
/// concatenated key looked up in a set of [`crate::ruleset::SetKey::Ipv4AddrProtoPort`] (or
/// IPv6) elements, after [`match_family`]. The port is the destination port with `dst`.
pub fn match_addr_proto_port_set(dst: bool, v4: bool, set: &str, invert: bool) -> Vec<Expr> {
    let addr_words = if v4 { 1 } else { 4 };
    let proto_reg = REG32_00 + addr_words;
    vec![
        load_addr(!dst, v4, REG32_00),
        Expr::MetaTo(META_L4PROTO, proto_reg),
        load_port(dst, proto_reg + 1),
        Expr::SetLookup {
            set: set.into(),
            sreg: REG32_00,
            invert,
        },
    ]
}

/// `th dport @set` over a set of ports or port ranges (after a protocol match).
pub fn match_port_set(dst: bool, set: &str, invert: bool) -> Vec<Expr> {
    vec![
        load_port(dst, REG_1),
        Expr::SetLookup {
            set: set.into(),
            sreg: REG_1,
            invert,
        },
    ]
}

/// `ct state & bits != 0`: e.g. `ct state established,related` with
/// `CT_STATE_ESTABLISHED | CT_STATE_RELATED`, `ct state invalid` with `CT_STATE_INVALID`.
pub fn match_ct_state(bits: u32) -> Vec<Expr> {
    vec![
        Expr::Ct {
            key: CT_STATE,
            dreg: REG_1,
        },
        Expr::BitwiseIn {
            reg: REG_1,
            mask: bits.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Neq,
            data: vec![0; 4],
        },
    ]
}

/// `icmp type <t> [code <c>]` (IPv4) or `icmpv6 type ...`: the protocol match nft adds as
/// a dependency, then the type and code bytes of the transport header. `neq` negates the
/// type/code match (not the protocol): `icmp type != 8`; with a code, nft's
/// `icmp type . icmp code != ...` is two bytes compared at once.
pub fn match_icmp(v4: bool, icmp_type: u8, code: Option<u8>, neq: bool) -> Vec<Expr> {
    let proto = if v4 { IPPROTO_ICMP } else { IPPROTO_ICMPV6 };
    let mut out = match_l4proto(proto, false);
    let data = match code {
        Some(c) => vec![icmp_type, c],
        None => vec![icmp_type],
    };
    out.push(Expr::PayloadTo(BASE_TRANSPORT, 0, data.len() as u32, REG_1));
    out.push(Expr::Cmp {
        sreg: REG_1,
        op: if neq { CmpOp::Neq } else { CmpOp::Eq },
        data,
    });
    out
}

/// `meta mark & mask == value` (masks as Felix writes them: `0x10000`).
pub fn match_mark(mask: u32, value: u32, neq: bool) -> Vec<Expr> {
    vec![
        Expr::MetaMarkTo(REG_1),
        Expr::BitwiseIn {
            reg: REG_1,
            mask: mask.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: REG_1,
            op: if neq { CmpOp::Neq } else { CmpOp::Eq },
            data: (value & mask).to_ne_bytes().to_vec(),
        },
    ]
}

/// `meta mark set meta mark & ~clear | set`: sets the bits of `set`, clears those of
/// `clear` (Felix's `meta mark set mark or 0x10000`, `... and 0xfff0ffff`).
pub fn update_mark(set: u32, clear: u32) -> Vec<Expr> {
    vec![
        Expr::MetaMarkTo(REG_1),
        Expr::BitwiseIn {
            reg: REG_1,
            mask: (!(set | clear)).to_ne_bytes().to_vec(),
            xor: set.to_ne_bytes().to_vec(),
        },
        Expr::MetaSetMarkFrom(REG_1),
    ]
}

/// Matches `meta nfproto <family>`.
pub fn match_family(v4: bool) -> Vec<Expr> {
    vec![
        Expr::Meta(META_NFPROTO),
        Expr::CmpEq(vec![if v4 { NFPROTO_IPV4 } else { NFPROTO_IPV6 }]),
    ]
}

/// Matches the source or destination address against a prefix (after [`match_family`]).
pub fn match_addr(source: bool, net: IpAddr, prefix: u8) -> Vec<Expr> {
    let (offset, bytes) = match net {
        IpAddr::V4(a) => (if source { 12 } else { 16 }, a.octets().to_vec()),
        IpAddr::V6(a) => (if source { 8 } else { 24 }, a.octets().to_vec()),
    };
    let bits = bytes.len() * 8;
    let prefix = usize::from(prefix).min(bits);
    let mut out = vec![Expr::Payload(BASE_NETWORK, offset, bytes.len() as u32)];
    if prefix < bits {
        let mask: Vec<u8> = (0..bytes.len())
            .map(|i| {
                let left = prefix.saturating_sub(i * 8).min(8);
                (0xffu16 << (8 - left)) as u8
            })
            .collect();
        let masked: Vec<u8> = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
        out.push(Expr::Bitwise {
            mask,
            xor: vec![0; bytes.len()],
        });
        out.push(Expr::CmpEq(masked));
    } else {
        out.push(Expr::CmpEq(bytes));
    }
    out
}

/// `meta mark set meta mark | bit`.
pub fn set_mark_bit(bit: u32) -> Vec<Expr> {
    let b = 1u32 << bit;
    vec![
        Expr::Meta(META_MARK),
        Expr::Bitwise {
            mask: (!b).to_ne_bytes().to_vec(),
            xor: b.to_ne_bytes().to_vec(),
        },
        Expr::MetaSetMark,
    ]
}

/// `meta mark set meta mark | bit`, computed in `reg` (so other registers keep their values).
pub fn set_mark_bit_in(bit: u32, reg: u32) -> Vec<Expr> {
    let b = 1u32 << bit;
    vec![
        Expr::MetaMarkTo(reg),
        Expr::BitwiseIn {
            reg,
            mask: (!b).to_ne_bytes().to_vec(),
            xor: b.to_ne_bytes().to_vec(),
        },
        Expr::MetaSetMarkFrom(reg),
    ]
}

/// `meta mark & bit == bit`.
pub fn match_mark_bit(bit: u32) -> Vec<Expr> {
    let b = 1u32 << bit;
    vec![
        Expr::Meta(META_MARK),
        Expr::Bitwise {
            mask: b.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::CmpEq(b.to_ne_bytes().to_vec()),
    ]
}

/// `fib daddr type local`.
pub fn match_local_daddr() -> Vec<Expr> {
    vec![
        Expr::FibDaddrType,
        Expr::CmpEq(RTN_LOCAL.to_ne_bytes().to_vec()),
    ]
}

/// Longest comment nf_tables keeps, in bytes (nft's `NFT_USERDATA_MAXLEN` is 256, but nft
/// itself writes at most 128 bytes with the NUL, and lists what it wrote).
pub const COMMENT_MAX: usize = 127;

/// The comment as it is stored and listed back: cut to [`COMMENT_MAX`] bytes at a character
/// boundary. Whoever compares a listed comment with its source compares with this.
pub fn comment_text(comment: &str) -> &str {
    let mut end = comment.len().min(COMMENT_MAX);
    while !comment.is_char_boundary(end) {
        end -= 1;
    }
    &comment[..end]
}

fn comment_udata(comment: &str) -> Vec<u8> {
    let mut c: Vec<u8> = comment_text(comment).as_bytes().to_vec();
    c.push(0);
    let mut out = vec![UDATA_COMMENT, c.len() as u8];
    out.extend_from_slice(&c);
    out
}

/// The comment of a user-data blob, if it has one.
pub fn udata_comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if ty == UDATA_COMMENT {
            return Some(nlattr::as_str(value));
        }
        rest = &rest[2 + len..];
    }
    None
}

/// Creates a table (nothing if it exists).
pub fn new_table(family: u8, name: &str, comment: &str) -> Message {
    let a = emit(&[
        TableAttribute::Name(name.into()),
        TableAttribute::UserData(comment_udata(comment)),
    ]);
    Message::nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, family, a)
}

/// A chain: a base chain if `hook` is given (type nat, policy accept).
pub fn new_chain(
    family: u8,
    table: &str,
    name: &str,
    hook: Option<(Hook, i32)>,
    comment: Option<&str>,
) -> Message {
    let mut attrs = vec![
        ChainAttribute::Table(table.into()),
        ChainAttribute::Name(name.into()),
    ];
    if let Some((hook, prio)) = hook {
        attrs.push(ChainAttribute::Hook(vec![
            HookAttribute::Number(HookNumber::Inet(InetHookNumber::from(hook as u32))),
            // The priority is a signed 32-bit number sent as its bits.
            HookAttribute::Priority(prio as u32),
        ]));
        attrs.push(ChainAttribute::Policy(NF_ACCEPT));
        attrs.push(ChainAttribute::Type("nat".into()));
    }
    attrs.extend(comment.map(|c| ChainAttribute::UserData(comment_udata(c))));
    Message::nft(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE | NLM_F_EXCL,
        family,
        emit(&attrs),
    )
}

/// Appends a rule; `echo` asks the kernel to send it back with its handle.
pub fn new_rule(
    family: u8,
    table: &str,
    chain: &str,
    exprs: &[Expr],
    comment: Option<&str>,
    echo: bool,
) -> Message {
    let mut list = Attrs::new();
    for e in exprs {
        e.encode(&mut list);
    }
    let mut attrs = vec![
        RuleAttribute::Table(table.into()),
        RuleAttribute::Chain(chain.into()),
        RuleAttribute::Other(DefaultNla::new(
            NFTA_RULE_EXPRESSIONS | NLA_F_NESTED,
            list.buf,
        )),
    ];
    attrs.extend(comment.map(|c| RuleAttribute::UserData(comment_udata(c))));
    let flags = NLM_F_CREATE | NLM_F_APPEND | if echo { NLM_F_ECHO } else { 0 };
    Message::nft(NFT_MSG_NEWRULE, flags, family, emit(&attrs))
}

/// Deletes a table and everything in it.
pub fn del_table(family: u8, name: &str) -> Message {
    let a = emit(&[TableAttribute::Name(name.into())]);
    Message::nft(NFT_MSG_DELTABLE, 0, family, a)
}

/// Deletes one rule by handle.
pub fn del_rule(family: u8, table: &str, chain: &str, handle: u64) -> Message {
    let a = emit(&[
        RuleAttribute::Table(table.into()),
        RuleAttribute::Chain(chain.into()),
        RuleAttribute::Handle(handle),
    ]);
    Message::nft(NFT_MSG_DELRULE, 0, family, a)
}

/// A chain message (`NFT_MSG_*CHAIN`) naming one chain.
fn chain_message(cmd: u8, family: u8, table: &str, chain: &str) -> Message {
    let a = emit(&[
        ChainAttribute::Table(table.into()),
        ChainAttribute::Name(chain.into()),
    ]);
    Message::nft(cmd, 0, family, a)
}

/// A rule message (`NFT_MSG_*RULE`) for every rule of one chain.
fn rules_message(cmd: u8, family: u8, table: &str, chain: &str) -> Message {
    let a = emit(&[
        RuleAttribute::Table(table.into()),
        RuleAttribute::Chain(chain.into()),
    ]);
    Message::nft(cmd, 0, family, a)
}

/// Deletes every rule of a chain.
pub fn flush_chain(family: u8, table: &str, chain: &str) -> Message {
    rules_message(NFT_MSG_DELRULE, family, table, chain)
}

/// Deletes an (empty, unreferenced) chain.
pub fn del_chain(family: u8, table: &str, chain: &str) -> Message {
    chain_message(NFT_MSG_DELCHAIN, family, table, chain)
}

/// Asks for one chain (the reply says whether it exists).
pub fn get_chain(family: u8, table: &str, chain: &str) -> Message {
    chain_message(NFT_MSG_GETCHAIN, family, table, chain)
}

/// Dumps the rules of one chain.
pub fn get_rules(family: u8, table: &str, chain: &str) -> Message {
    rules_message(NFT_MSG_GETRULE, family, table, chain)
}

const NFT_MSG_NEWSET: u8 = libc::NFT_MSG_NEWSET as u8;
const NFT_MSG_GETSET: u8 = libc::NFT_MSG_GETSET as u8;
const NFT_MSG_NEWSETELEM: u8 = libc::NFT_MSG_NEWSETELEM as u8;
const NFT_MSG_GETSETELEM: u8 = libc::NFT_MSG_GETSETELEM as u8;
const NFT_MSG_DELSETELEM: u8 = libc::NFT_MSG_DELSETELEM as u8;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
pub const SET_INTERVAL: u32 = libc::NFT_SET_INTERVAL as u32;
pub const SET_MAP: u32 = libc::NFT_SET_MAP as u32;
/// `NFT_SET_CONCAT` (newer than libc's list).
pub const SET_CONCAT: u32 = 0x80;

/// nft's data type numbers (only `nft list` reads them): concatenations are
/// `(a << 6) | b`.
pub mod types {
    pub const IPV4_ADDR: u32 = 7;
    pub const IPV6_ADDR: u32 = 8;
    pub const INET_PROTO: u32 = 12;
    pub const INET_SERVICE: u32 = 13;

    pub fn concat(parts: &[u32]) -> u32 {
        parts.iter().fold(0, |acc, t| (acc << 6) | t)
    }
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub key_type: u32,
    /// Field lengths of the key (each padded to 4 bytes in the key).
    pub key_fields: Vec<u32>,
    /// For a map: the value's type and length.
    pub data: Option<(u32, u32)>,
    pub interval: bool,
}

fn padded(len: u32) -> u32 {
    len.div_ceil(4) * 4
}

/// Creates a set or map (nothing if it exists).
pub fn new_set(family: u8, table: &str, spec: &SetSpec) -> Message {
    let key_len: u32 = spec.key_fields.iter().map(|l| padded(*l)).sum();
    let mut flags = SetFlags::empty();
    flags.set(SetFlags::Map, spec.data.is_some());
    flags.set(SetFlags::Interval, spec.interval);
    // The kernel wants the flag whenever the key is described as a concatenation.
    flags.set(SetFlags::Concat, spec.key_fields.len() > 1);
    let mut attrs = vec![
        SetAttribute::Table(table.into()),
        SetAttribute::Name(spec.name.clone()),
        SetAttribute::Flags(flags),
        SetAttribute::KeyType(spec.key_type),
        SetAttribute::KeyLen(key_len),
    ];
    if let Some((ty, len)) = spec.data {
        attrs.push(SetAttribute::DataType(ty));
        attrs.push(SetAttribute::DataLen(len));
    }
    if spec.key_fields.len() > 1 {
        let mut fields = Attrs::new();
        for f in &spec.key_fields {
            fields.nest(NFTA_LIST_ELEM, |e| {
                e.u32_be(NFTA_SET_FIELD_LEN, *f);
            });
        }
        attrs.push(SetAttribute::Description(vec![SetDescription::Other(
            DefaultNla::new(NFTA_SET_DESC_CONCAT | NLA_F_NESTED, fields.buf),
        )]));
    }
    // An ID lets rules in the same transaction refer to the set before it exists.
    attrs.push(SetAttribute::Id(set_id(&spec.name)));
    Message::nft(NFT_MSG_NEWSET, NLM_F_CREATE, family, emit(&attrs))
}

/// A stable transaction-local ID for a set name.
pub(crate) fn set_id(name: &str) -> u32 {
    name.bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
}

/// Asks for a set (the reply says whether it exists).
pub fn get_set(family: u8, table: &str, name: &str) -> Message {
    let a = emit(&[
        SetAttribute::Table(table.into()),
        SetAttribute::Name(name.into()),
    ]);
    Message::nft(NFT_MSG_GETSET, 0, family, a)
}

/// A set element: key (and key end for intervals), map value, comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elem {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Option<Vec<u8>>,
    pub comment: Option<String>,
}

fn elems_message(
    cmd: u8,
    flags: u16,
    family: u8,
    table: &str,
    set: &str,
    elems: &[Elem],
) -> Message {
    let mut attrs = vec![
        SetElementList::Table(table.into()),
        SetElementList::Set(set.into()),
    ];
    if !elems.is_empty() {
        let list = elems
            .iter()
            .map(|e| {
                let mut x = vec![SetElementAttribute::Key(DataAttribute::Value(
                    e.key.clone(),
                ))];
                if let Some(end) = &e.key_end {
                    x.push(SetElementAttribute::KeyEnd(vec![DefaultNla::new(
                        NFTA_DATA_VALUE,
                        end.clone(),
                    )]));
                }
                if let Some(d) = &e.data {
                    x.push(SetElementAttribute::Data(DataAttribute::Value(d.clone())));
                }
                if let Some(c) = &e.comment {
                    x.push(SetElementAttribute::UserData(comment_udata(c)));
                }
                ListAttribute::Element(x)
            })
            .collect();
        attrs.push(SetElementList::Elements(list));
    }
    Message::nft(cmd, flags, family, emit(&attrs))
}

/// Adds elements; an element whose key exists is an error.
pub fn add_elems(family: u8, table: &str, set: &str, elems: &[Elem]) -> Message {
    elems_message(
        NFT_MSG_NEWSETELEM,
        NLM_F_CREATE | NLM_F_EXCL,
        family,
        table,
        set,
        elems,
    )
}

/// Deletes elements by key.
pub fn del_elems(family: u8, table: &str, set: &str, elems: &[Elem]) -> Message {
    elems_message(NFT_MSG_DELSETELEM, 0, family, table, set, elems)
}

/// Bound on one message's element list: a netlink attribute's length is 16 bits, so the
/// list must stay under 64 KiB; nft keeps to about half of that too.
pub const ELEM_LIST_MAX: usize = 32 << 10;

/// An upper bound of the attribute bytes `e` takes in an element list.
pub fn elem_len(e: &Elem) -> usize {
    // Each attribute: a 4-byte header, the value padded to 4 bytes; a value nests once more.
    let value = |len: usize| 4 + 4 + len.next_multiple_of(4);
    4 + value(e.key.len())
        + e.key_end.as_ref().map_or(0, |k| value(k.len()))
        + e.data.as_ref().map_or(0, |d| value(d.len()))
        + e.comment
            .as_ref()
            .map_or(0, |c| 4 + (3 + comment_text(c).len()).next_multiple_of(4))
}

/// `elems` in as few element-list messages as keep each list under [`ELEM_LIST_MAX`]: one
/// message for a handful, several for thousands.
fn elems_chunked(
    cmd: u8,
    flags: u16,
    family: u8,
    table: &str,
    set: &str,
    elems: &[Elem],
) -> Vec<Message> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut len = 0;
    for (i, e) in elems.iter().enumerate() {
        let l = elem_len(e);
        if i > start && len + l > ELEM_LIST_MAX {
            out.push(elems_message(
                cmd,
                flags,
                family,
                table,
                set,
                &elems[start..i],
            ));
            start = i;
            len = 0;
        }
        len += l;
    }
    if start < elems.len() {
        out.push(elems_message(
            cmd,
            flags,
            family,
            table,
            set,
            &elems[start..],
        ));
    }
    out
}

/// [`add_elems`] for any number of elements: one message per [`ELEM_LIST_MAX`] bytes.
pub fn add_elems_chunked(family: u8, table: &str, set: &str, elems: &[Elem]) -> Vec<Message> {
    elems_chunked(
        NFT_MSG_NEWSETELEM,
        NLM_F_CREATE | NLM_F_EXCL,
        family,
        table,
        set,
        elems,
    )
}

/// [`del_elems`] for any number of elements: one message per [`ELEM_LIST_MAX`] bytes.
pub fn del_elems_chunked(family: u8, table: &str, set: &str, elems: &[Elem]) -> Vec<Message> {
    elems_chunked(NFT_MSG_DELSETELEM, 0, family, table, set, elems)
}

/// Asks for one element by key (the reply says whether it exists).
pub fn get_elem(family: u8, table: &str, set: &str, elem: &Elem) -> Message {
    let only_key = Elem {
        key: elem.key.clone(),
        key_end: elem.key_end.clone(),
        data: None,
        comment: None,
    };
    elems_message(NFT_MSG_GETSETELEM, 0, family, table, set, &[only_key])
}

/// Dumps a set's elements.
pub fn get_elems(family: u8, table: &str, set: &str) -> Message {
    elems_message(NFT_MSG_GETSETELEM, 0, family, table, set, &[])
}

fn data_of(p: &[u8]) -> Vec<u8> {
    nlattr::find(p, NFTA_DATA_VALUE)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// Decodes the elements of a set-element message.
pub fn elems_of(attrs: &[u8]) -> Vec<Elem> {
    let Some(list) = nlattr::find(attrs, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Vec::new();
    };
    nlattr::parse(list)
        .filter(|(ty, _)| *ty == NFTA_LIST_ELEM)
        .map(|(_, e)| Elem {
            key: nlattr::find(e, NFTA_SET_ELEM_KEY)
                .map(data_of)
                .unwrap_or_default(),
            key_end: nlattr::find(e, NFTA_SET_ELEM_KEY_END).map(data_of),
            data: nlattr::find(e, NFTA_SET_ELEM_DATA).map(data_of),
            comment: nlattr::find(e, NFTA_SET_ELEM_USERDATA).and_then(udata_comment),
        })
        .collect()
}

/// A rule as dumped or echoed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
    /// The chains the rule jumps or goes to.
    pub targets: Vec<String>,
}

fn verdict_chains(buf: &[u8], out: &mut Vec<String>) {
    // Walks the expression list for immediate verdicts naming a chain.
    for (ty, elem) in nlattr::parse(buf) {
        if ty != NFTA_LIST_ELEM {
            continue;
        }
        let name = nlattr::find(elem, NFTA_EXPR_NAME).map(nlattr::as_str);
        if name.as_deref() != Some("immediate") {
            continue;
        }
        let chain = nlattr::find(elem, NFTA_EXPR_DATA)
            .and_then(|d| nlattr::find(d, 2))
            .and_then(|d| nlattr::find(d, NFTA_DATA_VERDICT))
            .and_then(|v| nlattr::find(v, NFTA_VERDICT_CHAIN))
            .map(nlattr::as_str);
        out.extend(chain);
    }
}

/// Decodes a rule message.
pub fn rule_info(attrs: &[u8]) -> Option<RuleInfo> {
    let mut info = RuleInfo {
        chain: String::new(),
        handle: 0,
        comment: None,
        targets: Vec::new(),
    };
    for (ty, p) in nlattr::parse(attrs) {
        match ty {
            NFTA_RULE_CHAIN => info.chain = nlattr::as_str(p),
            NFTA_RULE_HANDLE => info.handle = nlattr::as_u64_be(p)?,
            NFTA_RULE_USERDATA => info.comment = udata_comment(p),
            NFTA_RULE_EXPRESSIONS => verdict_chains(p, &mut info.targets),
            _ => {}
        }
    }
    Some(info)
}

// What the kernel makes of these encoders is tested in tests/kernel.rs (read back by
// `nft`); here only the prefix arithmetic.
#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A comment longer than nf_tables keeps is stored cut, and [`comment_text`] says exactly
    /// what is listed back (at a character boundary).
    #[test]
    fn long_comments_are_cut_as_comment_text_says() {
        let long = "c".repeat(200);
        assert_eq!(comment_text(&long).len(), COMMENT_MAX);
        assert_eq!(
            udata_comment(&comment_udata(&long)).as_deref(),
            Some(comment_text(&long))
        );
        assert_eq!(comment_text("short"), "short");
        let wide = format!("{}é", "x".repeat(COMMENT_MAX - 1));
        assert_eq!(comment_text(&wide), "x".repeat(COMMENT_MAX - 1));
    }

    #[test]
    fn prefixes_become_masks() {
        let e = match_addr(true, IpAddr::V4(Ipv4Addr::new(10, 244, 1, 77)), 26);
        assert_eq!(e[0], Expr::Payload(BASE_NETWORK, 12, 4));
        assert_eq!(
            e[1],
            Expr::Bitwise {
                mask: vec![255, 255, 255, 192],
                xor: vec![0; 4]
            }
        );
        assert_eq!(e[2], Expr::CmpEq(vec![10, 244, 1, 64]));
        let host = match_addr(false, "fd00::5".parse().expect("ip"), 128);
        assert_eq!(host.len(), 2);
        assert_eq!(host[0], Expr::Payload(BASE_NETWORK, 24, 16));
    }

    /// Thousands of elements split into lists under the attribute bound, in order, and a
    /// handful stay one message (one per call, as before).
    #[test]
    fn element_lists_are_chunked_under_the_attribute_bound() {
        let elem = |i: u32| Elem {
            key: i.to_be_bytes().to_vec(),
            key_end: Some(i.to_be_bytes().to_vec()),
            data: Some(vec![0; 20]),
            comment: Some("x".repeat(200)),
        };
        let few: Vec<Elem> = (0..10).map(elem).collect();
        assert_eq!(add_elems_chunked(NFPROTO_INET, "t", "s", &few).len(), 1);
        let many: Vec<Elem> = (0..20_000).map(elem).collect();
        let msgs = del_elems_chunked(NFPROTO_INET, "t", "s", &many);
        assert!(msgs.len() > 1);
        let mut seen = 0;
        for m in &msgs {
            let list = nlattr::find(&m.attrs.buf, NFTA_SET_ELEM_LIST_ELEMENTS).expect("list");
            assert!(list.len() <= ELEM_LIST_MAX, "{}", list.len());
            let got = elems_of(&m.attrs.buf);
            assert_eq!(got[0].key, many[seen].key);
            seen += got.len();
        }
        assert_eq!(seen, many.len());
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    fn samples() -> Vec<(&'static str, Message)> {
        let f = NFPROTO_INET;
        let map = SetSpec {
            name: "hostipports4".into(),
            key_type: types::concat(&[types::IPV4_ADDR, types::INET_PROTO, types::INET_SERVICE]),
            key_fields: vec![4, 1, 2],
            data: Some((types::concat(&[types::IPV4_ADDR, types::INET_SERVICE]), 8)),
            interval: false,
        };
        let interval = SetSpec {
            name: "hairpin4".into(),
            key_type: types::concat(&[types::IPV4_ADDR, types::IPV4_ADDR]),
            key_fields: vec![4, 4],
            data: None,
            interval: true,
        };
        let plain = SetSpec {
            name: "localhost4".into(),
            key_type: types::IPV4_ADDR,
            key_fields: vec![4],
            data: None,
            interval: false,
        };
        let elem = Elem {
            key: vec![10, 0, 0, 1, 10, 0, 0, 2],
            key_end: Some(vec![10, 0, 0, 255, 10, 0, 0, 2]),
            data: Some(vec![10, 244, 1, 5, 0, 80, 0, 0]),
            comment: Some("c1".into()),
        };
        let mut rule = match_local_daddr();
        rule.extend(match_family(true));
        rule.extend(match_addr(true, "10.1.2.3".parse().expect("ip"), 24));
        rule.extend(set_mark_bit(13));
        rule.push(Expr::Jump("x".into()));
        rule.push(Expr::Masquerade);
        vec![
            ("new_table", new_table(f, "t", "a comment")),
            ("del_table", del_table(f, "t")),
            (
                "base_chain",
                new_chain(
                    f,
                    "t",
                    "prerouting",
                    Some((Hook::Prerouting, PRIORITY_DSTNAT)),
                    None,
                ),
            ),
            ("chain", new_chain(2, "nat", "CNI-DN-x", None, Some("cmt"))),
            ("rule", new_rule(f, "t", "c", &rule, Some("rc"), true)),
            ("rule_plain", new_rule(f, "t", "c", &rule[..2], None, false)),
            ("del_rule", del_rule(f, "t", "c", 42)),
            ("flush", flush_chain(f, "t", "c")),
            ("del_chain", del_chain(f, "t", "c")),
            ("get_chain", get_chain(f, "t", "c")),
            ("get_rules", get_rules(f, "t", "c")),
            ("map", new_set(f, "t", &map)),
            ("interval", new_set(f, "t", &interval)),
            ("plain", new_set(f, "t", &plain)),
            ("get_set", get_set(f, "t", "s")),
            (
                "add_elems",
                add_elems(f, "t", "s", std::slice::from_ref(&elem)),
            ),
            (
                "del_elems",
                del_elems(f, "t", "s", std::slice::from_ref(&elem)),
            ),
            ("get_elem", get_elem(f, "t", "s", &elem)),
            ("get_elems", get_elems(f, "t", "s")),
        ]
    }

    /// What each builder sent before the crate's typed attributes took over (bytes of the
    /// hand-written encoders, recorded then): the kernel gets the same messages.
    #[test]
    fn the_builders_send_what_they_sent_before() {
        let golden = [
            (
                "new_table",
                0,
                1024,
                1,
                "060001007400000010000600000a6120636f6d6d656e7400",
            ),
            ("del_table", 2, 0, 1, "0600010074000000"),
            (
                "base_chain",
                3,
                1536,
                1,
                "06000100740000000f000300707265726f7574696e67000014000480080001000000000008000200ffffff9c0800050000000001080007006e617400",
            ),
            (
                "chain",
                3,
                1536,
                2,
                "080001006e6174000d000300434e492d444e2d78000000000a000c000004636d74000000",
            ),
            (
                "rule",
                6,
                3080,
                1,
                "06000100740000000600020063000000200204802800018008000100666962001c0002800800010000000001080002000000000308000300000000022c00018008000100636d700020000280080001000000000108000200000000000c000380080001000200000024000180090001006d6574610000000014000280080002000000000f08000100000000012c00018008000100636d700020000280080001000000000108000200000000000c0003800500010002000000340001800c0001007061796c6f6164002400028008000100000000010800020000000001080003000000000c0800040000000004440001800c0001006269747769736500340002800800010000000001080002000000000108000300000000040c00048008000100ffffff000c00058008000100000000002c00018008000100636d700020000280080001000000000108000200000000000c000380080001000a01020024000180090001006d657461000000001400028008000200000000030800010000000001440001800c0001006269747769736500340002800800010000000001080002000000000108000300000000040c00048008000100ffdfffff0c000580080001000020000024000180090001006d657461000000001400028008000200000000030800030000000001380001800e000100696d6d656469617465000000240002800800010000000000180002801400028008000100fffffffd060002007800000010000180090001006d61737100000000090007000003726300000000",
            ),
            (
                "rule_plain",
                6,
                3072,
                1,
                "06000100740000000600020063000000580004802800018008000100666962001c0002800800010000000001080002000000000308000300000000022c00018008000100636d700020000280080001000000000108000200000000000c0003800800010002000000",
            ),
            (
                "del_rule",
                8,
                0,
                1,
                "060001007400000006000200630000000c000300000000000000002a",
            ),
            ("flush", 8, 0, 1, "06000100740000000600020063000000"),
            ("del_chain", 5, 0, 1, "06000100740000000600030063000000"),
            ("get_chain", 4, 0, 1, "06000100740000000600030063000000"),
            ("get_rules", 7, 0, 1, "06000100740000000600020063000000"),
            (
                "map",
                9,
                1024,
                1,
                "060001007400000011000200686f73746970706f72747334000000000800030000000088080004000000730d080005000000000c08000600000001cd08000700000000082c000980280002800c00018008000100000000040c00018008000100000000010c000180080001000000000208000a00a66fd978",
            ),
            (
                "interval",
                9,
                1024,
                1,
                "06000100740000000d0002006861697270696e3400000000080003000000008408000400000001c70800050000000008200009801c0002800c00018008000100000000040c000180080001000000000408000a00063d8928",
            ),
            (
                "plain",
                9,
                1024,
                1,
                "06000100740000000f0002006c6f63616c686f737434000008000300000000000800040000000007080005000000000408000a006072ae48",
            ),
            ("get_set", 10, 0, 1, "06000100740000000600020073000000"),
            (
                "add_elems",
                12,
                1536,
                1,
                "060001007400000006000200730000004400038040000180100001800c0001000a0000010a00000210000a800c0001000a0000ff0a000002100002800c0001000af4010500500000090006000003633100000000",
            ),
            (
                "del_elems",
                14,
                0,
                1,
                "060001007400000006000200730000004400038040000180100001800c0001000a0000010a00000210000a800c0001000a0000ff0a000002100002800c0001000af4010500500000090006000003633100000000",
            ),
            (
                "get_elem",
                13,
                0,
                1,
                "060001007400000006000200730000002800038024000180100001800c0001000a0000010a00000210000a800c0001000a0000ff0a000002",
            ),
            ("get_elems", 13, 0, 1, "06000100740000000600020073000000"),
        ];
        let got = samples();
        assert_eq!(got.len(), golden.len());
        for ((name, m), (gname, cmd, flags, family, hex)) in got.iter().zip(golden) {
            assert_eq!(*name, gname);
            let bytes: String = m.attrs.buf.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                (m.cmd, m.flags, m.family, bytes.as_str()),
                (cmd, flags, family, hex),
                "{name}"
            );
        }
    }
}
