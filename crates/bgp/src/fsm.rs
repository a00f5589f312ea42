//! The BGP-4 finite state machine of one session (RFC 4271 §8), pure: [`Input`]s in (with
//! the current instant), [`Output`]s out; timers are deadlines the shell sleeps until. After
//! an error the session starts again by itself (BIRD's behaviour), a stop is final.
//! Collision resolution (RFC 4271 §6.8) is decided by [`collision_keeps_new`].

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rustbgpd_wire::Message;

use crate::SessionState;
use crate::wire::{self, InboundUpdate, Negotiated, Notification, OpenParams};

/// Hold time while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
pub const LARGE_HOLD: Duration = Duration::from_secs(240);

/// Fixed parameters of a session.
#[derive(Debug, Clone)]
pub struct FsmConfig {
    pub open: OpenParams,
    pub remote_as: u32,
    pub ibgp: bool,
    pub passive: bool,
    pub keepalive: Option<Duration>,
    pub connect_delay: Duration,
    pub connect_retry: Duration,
    /// After a connection attempt that failed before any session (refused: the peer is not
    /// listening yet), try again after this, doubling per failure up to `connect_retry`.
    /// `None`: every attempt waits `connect_retry` (BIRD's behaviour).
    pub refused_retry: Option<Duration>,
}

#[derive(Debug)]
pub enum Input {
    Start,
    /// Administrative stop: send `notify` (None: close silently, for graceful restart).
    Stop(Option<Notification>),
    /// A TCP connection is up (ours or accepted).
    TcpUp,
    TcpFailed(String),
    Msg(Message),
    /// A received message that did not decode.
    BadMsg(Notification),
    /// Nothing happened but time passed: timers that fell due fire (they are checked on every
    /// input).
    Tick,
}

#[derive(Debug, PartialEq)]
pub enum Output {
    /// Open a TCP connection to the peer (any previous attempt is abandoned).
    Connect,
    Send(Message),
    /// Close the TCP connection.
    Close,
    Established(Negotiated),
    /// The session left Established or failed to get there.
    Down {
        error: String,
        was_established: bool,
        graceful: bool,
    },
    Update(InboundUpdate),
    RouteRefresh(Option<wire::Family>),
    State(SessionState),
}

#[derive(Debug)]
pub struct Fsm {
    cfg: FsmConfig,
    state: SessionState,
    negotiated: Option<Negotiated>,
    connect_at: Option<Instant>,
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    hold: Duration,
    keepalive: Duration,
    stopped: bool,
    /// Connection attempts that failed in a row (for `refused_retry`'s back-off).
    failed_attempts: u32,
}

impl Fsm {
    pub fn new(cfg: FsmConfig) -> Self {
        Fsm {
            cfg,
            state: SessionState::Idle,
            negotiated: None,
            connect_at: None,
            hold_at: None,
            keepalive_at: None,
            hold: LARGE_HOLD,
            keepalive: Duration::ZERO,
            stopped: true,
            failed_attempts: 0,
        }
    }

    /// Sets the R bit of the OPENs sent from now on (cleared once the restart is over).
    pub fn set_restart_bit(&mut self, restarting: bool) {
        self.cfg.open.restarting = restarting;
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The earliest timer deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.connect_at, self.hold_at, self.keepalive_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn set_state(&mut self, s: SessionState, out: &mut Vec<Output>) {
        if self.state != s {
            self.state = s;
            out.push(Output::State(s));
        }
    }

    /// Back to waiting for a connection after an error (no restart after a stop).
    fn restart(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.negotiated = None;
        self.hold_at = None;
        self.keepalive_at = None;
        if self.stopped {
            self.connect_at = None;
            self.set_state(SessionState::Idle, out);
        } else if self.cfg.passive {
            self.connect_at = None;
            self.set_state(SessionState::Active, out);
        } else {
            self.connect_at = Some(now + self.cfg.connect_retry);
            self.set_state(SessionState::Connect, out);
        }
    }

    fn fail(
        &mut self,
        now: Instant,
        error: String,
        notify: Option<Notification>,
        graceful: bool,
        out: &mut Vec<Output>,
    ) {
        let connected = matches!(
            self.state,
            SessionState::OpenSent | SessionState::OpenConfirm | SessionState::Established
        );
        let was_established = self.state == SessionState::Established;
        if connected && let Some(n) = notify {
            out.push(Output::Send(n.to_message()));
        }
        out.push(Output::Close);
        out.push(Output::Down {
            error,
            was_established,
            graceful,
        });
        self.restart(now, out);
    }

    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Start => {
                if self.stopped {
                    self.stopped = false;
                    if self.cfg.passive {
                        self.set_state(SessionState::Active, &mut out);
                    } else {
                        self.connect_at = Some(now + self.cfg.connect_delay);
                        self.set_state(SessionState::Connect, &mut out);
                    }
                }
            }
            Input::Stop(notify) => {
                self.stopped = true;
                let graceful = notify.is_none();
                self.fail(now, "stopped".into(), notify, graceful, &mut out);
            }
            Input::TcpUp => match self.state {
                SessionState::Connect | SessionState::Active | SessionState::Idle
                    if !self.stopped =>
                {
                    self.connect_at = None;
                    self.failed_attempts = 0;
                    out.push(Output::Send(wire::build_open(&self.cfg.open)));
                    self.hold_at = Some(now + LARGE_HOLD);
                    self.set_state(SessionState::OpenSent, &mut out);
                }
                _ => out.push(Output::Close),
            },
            Input::TcpFailed(e) => match self.state {
                SessionState::Connect => {
                    if let (Some(base), Some(at)) = (self.cfg.refused_retry, self.connect_at) {
                        let backoff = base
                            .saturating_mul(1 << self.failed_attempts.min(16))
                            .min(self.cfg.connect_retry);
                        self.connect_at = Some(at.min(now + backoff));
                        self.failed_attempts = self.failed_attempts.saturating_add(1);
                    }
                }
                SessionState::Active | SessionState::Idle => {}
                SessionState::Established => self.fail(now, e, None, true, &mut out),
                _ => self.fail(now, e, None, false, &mut out),
            },
            Input::BadMsg(n) => {
                self.fail(now, format!("sent {n}"), Some(n.clone()), false, &mut out)
            }
            Input::Msg(m) => self.on_message(m, now, &mut out),
            Input::Tick => {}
        }
        self.on_timers(now, &mut out);
        out
    }

    fn on_timers(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.connect_at.is_some_and(|t| t <= now) {
            self.connect_at = Some(now + self.cfg.connect_retry);
            out.push(Output::Connect);
        }
        if self.hold_at.is_some_and(|t| t <= now) {
            self.fail(
                now,
                "hold timer expired".into(),
                Some(Notification::new(4, 0)),
                false,
                out,
            );
        }
        if let Some(t) = self.keepalive_at
            && t <= now
        {
            out.push(Output::Send(Message::Keepalive));
            self.keepalive_at = Some(now + self.keepalive);
        }
    }

    fn on_message(&mut self, m: Message, now: Instant, out: &mut Vec<Output>) {
        if let Message::Notification(n) = &m {
            let n = Notification::from_message(n);
            // RFC 4271: no NOTIFICATION in reply to a NOTIFICATION.
            self.fail(now, format!("received {n}"), None, false, out);
            return;
        }
        match self.state {
            SessionState::OpenSent => match m {
                Message::Open(open) => {
                    match wire::check_open(
                        &open,
                        self.cfg.remote_as,
                        self.cfg.open.router_id,
                        self.cfg.ibgp,
                        self.cfg.open.hold_time,
                    ) {
                        Ok(neg) => {
                            self.hold = Duration::from_secs(u64::from(neg.hold_time));
                            self.keepalive = match self.cfg.keepalive {
                                Some(k) if !k.is_zero() => {
                                    k.min(self.hold.max(Duration::from_secs(1)))
                                }
                                _ => self.hold / 3,
                            };
                            out.push(Output::Send(Message::Keepalive));
                            if neg.hold_time == 0 {
                                self.hold_at = None;
                                self.keepalive_at = None;
                            } else {
                                self.hold_at = Some(now + self.hold);
                                self.keepalive_at = Some(now + self.keepalive);
                            }
                            self.negotiated = Some(neg);
                            self.set_state(SessionState::OpenConfirm, out);
                        }
                        Err(n) => self.fail(now, format!("sent {n}"), Some(n), false, out),
                    }
                }
                _ => self.fail(
                    now,
                    "unexpected message in OpenSent".into(),
                    Some(Notification::new(5, 1)),
                    false,
                    out,
                ),
            },
            SessionState::OpenConfirm => match m {
                Message::Keepalive => {
                    self.reset_hold(now);
                    self.set_state(SessionState::Established, out);
                    if let Some(n) = self.negotiated.clone() {
                        out.push(Output::Established(n));
                    }
                }
                _ => self.fail(
                    now,
                    "unexpected message in OpenConfirm".into(),
                    Some(Notification::new(5, 2)),
                    false,
                    out,
                ),
            },
            SessionState::Established => {
                self.reset_hold(now);
                match m {
                    Message::Keepalive => {}
                    Message::Update(u) => {
                        let (four, ibgp) = (
                            self.negotiated.as_ref().is_some_and(|n| n.four_octet_as),
                            self.cfg.ibgp,
                        );
                        match wire::decode_update(&u, four, ibgp) {
                            Ok(u) => out.push(Output::Update(u)),
                            Err(n) => self.fail(now, format!("sent {n}"), Some(n), false, out),
                        }
                    }
                    Message::RouteRefresh(r) => out.push(Output::RouteRefresh(
                        wire::Family::from_raw(r.afi_raw, r.safi_raw),
                    )),
                    _ => self.fail(
                        now,
                        "unexpected message in Established".into(),
                        Some(Notification::new(5, 3)),
                        false,
                        out,
                    ),
                }
            }
            // Nothing is read without a connection.
            _ => {}
        }
    }

    fn reset_hold(&mut self, now: Instant) {
        if !self.hold.is_zero() && self.hold_at.is_some() {
            self.hold_at = Some(now + self.hold);
        }
    }
}

/// RFC 4271 §6.8: of two connections to the same peer, the one initiated by the speaker with
/// the higher BGP identifier survives. Returns whether the new (inbound) connection is kept
/// against an existing outbound one; an Established session always stays.
pub fn collision_keeps_new(
    local_id: Ipv4Addr,
    remote_id: Ipv4Addr,
    existing: SessionState,
) -> bool {
    existing != SessionState::Established && u32::from(local_id) < u32::from(remote_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build_open;

    fn cfg(passive: bool) -> FsmConfig {
        FsmConfig {
            open: OpenParams {
                local_as: 64512,
                router_id: Ipv4Addr::new(10, 0, 0, 1),
                hold_time: 9,
                gr_time: None,
                restarting: false,
            },
            remote_as: 64512,
            ibgp: true,
            passive,
            keepalive: None,
            connect_delay: Duration::from_secs(2),
            connect_retry: Duration::from_secs(5),
            refused_retry: None,
        }
    }

    fn peer_open() -> Message {
        build_open(&OpenParams {
            local_as: 64512,
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            hold_time: 240,
            gr_time: None,
            restarting: false,
        })
    }

    fn sends(out: &[Output]) -> Vec<&Message> {
        out.iter()
            .filter_map(|o| {
                if let Output::Send(m) = o {
                    Some(m)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn active_session_connects_after_the_delay_and_gets_established() {
        let t0 = Instant::now();
        let mut f = Fsm::new(cfg(false));
        let out = f.handle(Input::Start, t0);
        assert_eq!(out, vec![Output::State(SessionState::Connect)]);
        assert_eq!(f.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert!(
            f.handle(Input::Tick, t0 + Duration::from_secs(2))
                .contains(&Output::Connect)
        );
        // Refused: retried after connect_retry.
        f.handle(
            Input::TcpFailed("refused".into()),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(f.next_deadline(), Some(t0 + Duration::from_secs(7)));
        let out = f.handle(Input::TcpUp, t0 + Duration::from_secs(7));
        assert!(matches!(sends(&out)[..], [Message::Open(_)]));
        let out = f.handle(Input::Msg(peer_open()), t0 + Duration::from_secs(7));
        assert_eq!(sends(&out), vec![&Message::Keepalive]);
        assert_eq!(f.state(), SessionState::OpenConfirm);
        let out = f.handle(Input::Msg(Message::Keepalive), t0 + Duration::from_secs(8));
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Established(n) if n.hold_time == 9))
        );
        // Keepalive every hold/3, hold timer from the last message.
        let out = f.handle(Input::Tick, t0 + Duration::from_secs(10));
        assert_eq!(sends(&out), vec![&Message::Keepalive]);
        let out = f.handle(Input::Tick, t0 + Duration::from_secs(17));
        assert!(
            out.iter().any(
                |o| matches!(o, Output::Send(Message::Notification(n)) if n.code.as_u8() == 4)
            )
        );
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Down {
                was_established: true,
                graceful: false,
                ..
            }
        )));
        assert_eq!(f.state(), SessionState::Connect);
    }

    #[test]
    fn refused_attempts_back_off_from_the_quick_retry_to_connect_retry() {
        let t0 = Instant::now();
        let mut f = Fsm::new(FsmConfig {
            connect_delay: Duration::ZERO,
            refused_retry: Some(Duration::from_millis(500)),
            ..cfg(false)
        });
        assert!(f.handle(Input::Start, t0).contains(&Output::Connect));
        let mut at = t0;
        for wait_ms in [500, 1000, 2000, 4000, 5000, 5000] {
            f.handle(Input::TcpFailed("refused".into()), at);
            assert_eq!(f.next_deadline(), Some(at + Duration::from_millis(wait_ms)));
            at += Duration::from_millis(wait_ms);
            assert!(f.handle(Input::Tick, at).contains(&Output::Connect));
        }
        // A connection resets the back-off.
        f.handle(Input::TcpUp, at);
        f.handle(Input::TcpFailed("reset".into()), at);
        assert_eq!(f.next_deadline(), Some(at + Duration::from_secs(5)));
        assert!(
            f.handle(Input::Tick, at + Duration::from_secs(5))
                .contains(&Output::Connect)
        );
        f.handle(
            Input::TcpFailed("refused".into()),
            at + Duration::from_secs(5),
        );
        assert_eq!(f.next_deadline(), Some(at + Duration::from_millis(5500)));
    }

    #[test]
    fn passive_session_never_connects() {
        let t0 = Instant::now();
        let mut f = Fsm::new(cfg(true));
        f.handle(Input::Start, t0);
        assert_eq!(f.state(), SessionState::Active);
        assert_eq!(f.next_deadline(), None);
        assert!(
            !f.handle(Input::Tick, t0 + Duration::from_secs(100))
                .contains(&Output::Connect)
        );
    }

    #[test]
    fn wrong_peer_as_gets_open_error_bad_peer_as() {
        let t0 = Instant::now();
        let mut c = cfg(false);
        c.remote_as = 65000;
        c.ibgp = false;
        let mut f = Fsm::new(c);
        f.handle(Input::Start, t0);
        f.handle(Input::TcpUp, t0);
        let out = f.handle(Input::Msg(peer_open()), t0);
        assert!(
            matches!(sends(&out)[..], [Message::Notification(n)] if n.code.as_u8() == 2 && n.subcode == 2)
        );
    }

    #[test]
    fn unexpected_message_is_an_fsm_error_and_tcp_loss_is_graceful() {
        let t0 = Instant::now();
        let mut f = Fsm::new(cfg(false));
        f.handle(Input::Start, t0);
        f.handle(Input::TcpUp, t0);
        let out = f.handle(Input::Msg(Message::Keepalive), t0);
        assert!(
            matches!(sends(&out)[..], [Message::Notification(n)] if n.code.as_u8() == 5 && n.subcode == 1)
        );
        f.handle(Input::TcpUp, t0);
        f.handle(Input::Msg(peer_open()), t0);
        f.handle(Input::Msg(Message::Keepalive), t0);
        let out = f.handle(Input::TcpFailed("reset".into()), t0);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Down { graceful: true, .. }))
        );
    }

    #[test]
    fn stop_without_notification_is_final() {
        let t0 = Instant::now();
        let mut f = Fsm::new(cfg(false));
        f.handle(Input::Start, t0);
        f.handle(Input::TcpUp, t0);
        let out = f.handle(Input::Stop(Some(Notification::new(6, 2))), t0);
        assert!(matches!(sends(&out)[..], [Message::Notification(n)] if n.code.as_u8() == 6));
        assert_eq!(f.state(), SessionState::Idle);
        assert_eq!(f.next_deadline(), None);
    }

    #[test]
    fn collision_keeps_the_connection_of_the_higher_identifier() {
        let lo = Ipv4Addr::new(10, 0, 0, 1);
        let hi = Ipv4Addr::new(10, 0, 0, 2);
        assert!(collision_keeps_new(lo, hi, SessionState::OpenConfirm));
        assert!(!collision_keeps_new(hi, lo, SessionState::OpenConfirm));
        assert!(!collision_keeps_new(lo, hi, SessionState::Established));
    }
}
