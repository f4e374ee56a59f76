//! Who may connect: per-address and per-network connection limits and a cap on
//! connections that have not registered yet, checked in the accept loop before any
//! WebSocket work is done.
//!
//! `max_connections` alone let 300 silent sockets from one machine take every slot and
//! lock out honest gamers and peers. More counts close that:
//!
//! - **Per address** (`max_connections_per_address`): connections one client address may
//!   hold at once. IPv4 addresses count one by one; IPv6 addresses count by their /64
//!   prefix, since one subscriber is routinely given a whole /64 and could otherwise open
//!   connections from 2^64 addresses. IPv4-mapped IPv6 addresses count as the IPv4
//!   address.
//! - **Per network** (`max_connections_per_network`): connections all addresses of one
//!   network (`host_prefix_v4`, `host_prefix_v6`: /24 and /48 by default) hold together,
//!   so a block of addresses is not a block of per-address shares.
//! - **Unregistered** (`max_unregistered_connections`): connections that have not yet
//!   registered as a peer or a gamer. A connection stops counting once it registers
//!   ([`Ticket::registered`]); one that never does is closed at `register_timeout`. At
//!   the cap, a newcomer is not refused while some address holds more unregistered
//!   connections than the newcomer's would: the *oldest* unregistered connection of the
//!   address holding the most is closed instead ([`Ticket::evicted`] fires), so a few
//!   addresses of squatters cannot keep honest newcomers (gamers or peers) out.
//!
//! A refused connection is dropped before the WebSocket handshake: it costs one accept
//! and one close, and the client sees the TCP connection closed (its handshake fails).
//! Sending an explanation would cost a handshake per refusal, which is what a flood is
//! after. The counts are released when the connection's [`Ticket`] is dropped, however the
//! connection ends.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address already holds `max_connections_per_address` connections.
    PerAddress,
    /// Its network already holds `max_connections_per_network` connections.
    PerNetwork,
    /// `max_unregistered_connections` connections have not registered yet.
    Unregistered,
}

/// The counts at one moment, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdmissionCounts {
    /// Connections admitted and not yet ended.
    pub connections: usize,
    /// Of those, connections that have not registered.
    pub unregistered: usize,
    /// Distinct addresses (IPv6: /64 prefixes) holding connections.
    pub addresses: usize,
}

#[derive(Debug, Default)]
struct Counts {
    per_address: HashMap<IpAddr, usize>,
    per_network: HashMap<IpAddr, usize>,
    connections: usize,
    /// Unregistered connections by address, oldest first, each with the token that
    /// closes it; their total is the unregistered count.
    waiting: HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>,
    unregistered: usize,
    next_seq: u64,
}

/// The limits admission enforces (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections one address (IPv6: /64) may hold.
    pub per_address: usize,
    /// Connections one network may hold.
    pub per_network: usize,
    /// Unregistered connections at once.
    pub unregistered: usize,
    /// The prefix lengths that make a network.
    pub prefix_v4: u8,
    /// The same for IPv6.
    pub prefix_v6: u8,
}

/// The admission counts of one coordinator.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
    /// Unregistered connections closed to make room for a newcomer, since start.
    evicted: AtomicU64,
}

/// The network an address belongs to: its IPv4 `/v4` or IPv6 `/v6` prefix (an
/// IPv4-mapped IPv6 address counts as IPv4), the rest zeroed.
pub fn network_of(ip: IpAddr, v4: u8, v6: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(mask_v4(a, v4)),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(a) => IpAddr::V4(mask_v4(a, v4)),
            None => {
                let bits = u128::from(a);
                let keep = u32::from(v6.min(128));
                let mask = if keep == 0 { 0 } else { u128::MAX << (128 - keep) };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        },
    }
}

fn mask_v4(a: std::net::Ipv4Addr, prefix: u8) -> std::net::Ipv4Addr {
    let keep = u32::from(prefix.min(32));
    let mask = if keep == 0 { 0 } else { u32::MAX << (32 - keep) };
    std::net::Ipv4Addr::from(u32::from(a) & mask)
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64 prefix.
pub fn address_key(ip: IpAddr) -> IpAddr {
    network_of(ip, 32, 64)
}

impl Admission {
    /// Admission within `limits` (each count at least 1).
    pub fn new(limits: Limits) -> Arc<Self> {
        let limits = Limits {
            per_address: limits.per_address.max(1),
            per_network: limits.per_network.max(1),
            unregistered: limits.unregistered.max(1),
            ..limits
        };
        Arc::new(Admission { limits, counts: Mutex::new(Counts::default()), evicted: AtomicU64::new(0) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new, unregistered connection from `ip`, or says why not. At the
    /// unregistered cap, the oldest unregistered connection of the address holding the
    /// most is closed to make room, unless that would leave the newcomer's address
    /// holding the most.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let key = address_key(ip);
        let network = network_of(ip, self.limits.prefix_v4, self.limits.prefix_v6);
        let mut counts = self.lock();
        let held = counts.per_address.get(&key).copied().unwrap_or(0);
        if held >= self.limits.per_address {
            return Err(Refusal::PerAddress);
        }
        if counts.per_network.get(&network).copied().unwrap_or(0) >= self.limits.per_network {
            return Err(Refusal::PerNetwork);
        }
        if counts.unregistered >= self.limits.unregistered {
            let mine = counts.waiting.get(&key).map_or(0, VecDeque::len);
            let busiest = counts.waiting.iter().max_by_key(|(_, q)| q.len()).map(|(k, q)| (*k, q.len()));
            match busiest {
                Some((squatter, most)) if most > mine + 1 => {
                    let queue = counts.waiting.get_mut(&squatter).expect("found above");
                    let (_, token) = queue.pop_front().expect("not empty");
                    if queue.is_empty() {
                        counts.waiting.remove(&squatter);
                    }
                    counts.unregistered -= 1;
                    token.cancel();
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                _ => return Err(Refusal::Unregistered),
            }
        }
        *counts.per_address.entry(key).or_default() += 1;
        *counts.per_network.entry(network).or_default() += 1;
        counts.connections += 1;
        counts.unregistered += 1;
        let seq = counts.next_seq;
        counts.next_seq += 1;
        let evicted = CancellationToken::new();
        counts.waiting.entry(key).or_default().push_back((seq, evicted.clone()));
        Ok(Ticket { admission: self.clone(), key, network, seq, unregistered: true, evicted })
    }

    /// The counts now.
    pub fn counts(&self) -> AdmissionCounts {
        let counts = self.lock();
        AdmissionCounts {
            connections: counts.connections,
            unregistered: counts.unregistered,
            addresses: counts.per_address.len(),
        }
    }

    /// Unregistered connections closed to make room for a newcomer, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

impl Counts {
    /// Takes an unregistered connection out of the waiting lists; whether it was there
    /// (not evicted).
    fn stop_waiting(&mut self, key: IpAddr, seq: u64) -> bool {
        let Some(queue) = self.waiting.get_mut(&key) else { return false };
        let Some(at) = queue.iter().position(|(s, _)| *s == seq) else { return false };
        queue.remove(at);
        if queue.is_empty() {
            self.waiting.remove(&key);
        }
        self.unregistered = self.unregistered.saturating_sub(1);
        true
    }
}

/// One admitted connection's place in the counts; dropping it releases them.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    key: IpAddr,
    network: IpAddr,
    seq: u64,
    unregistered: bool,
    evicted: CancellationToken,
}

impl Ticket {
    /// The connection has registered: it no longer counts against the unregistered cap.
    /// Idempotent.
    pub fn registered(&mut self) {
        if std::mem::take(&mut self.unregistered) {
            self.admission.lock().stop_waiting(self.key, self.seq);
        }
    }

    /// Whether the connection still counts as unregistered.
    pub fn is_unregistered(&self) -> bool {
        self.unregistered
    }

    /// Fires when the connection, still unregistered, was closed to make room for a
    /// newcomer: the connection must end.
    pub fn evicted(&self) -> CancellationToken {
        self.evicted.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        if self.unregistered {
            counts.stop_waiting(self.key, self.seq);
        }
        counts.connections = counts.connections.saturating_sub(1);
        let counts = &mut *counts;
        for (table, key) in [(&mut counts.per_address, self.key), (&mut counts.per_network, self.network)] {
            if let Some(held) = table.get_mut(&key) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    table.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn limits(per_address: usize, unregistered: usize) -> Limits {
        Limits { per_address, per_network: 1000, unregistered, prefix_v4: 32, prefix_v6: 64 }
    }

    #[test]
    fn per_address_limit_holds_and_is_released_on_drop() {
        let a = Admission::new(limits(2, 100));
        let t1 = a.admit(v4(1)).unwrap();
        let _t2 = a.admit(v4(1)).unwrap();
        assert_eq!(a.admit(v4(1)).unwrap_err(), Refusal::PerAddress);
        let _other = a.admit(v4(2)).unwrap();
        drop(t1);
        let _t3 = a.admit(v4(1)).unwrap();
        assert_eq!(a.counts(), AdmissionCounts { connections: 3, unregistered: 3, addresses: 2 });
    }

    #[test]
    fn unregistered_cap_frees_a_slot_on_registration() {
        let a = Admission::new(limits(100, 2));
        let mut t1 = a.admit(v4(1)).unwrap();
        let _t2 = a.admit(v4(2)).unwrap();
        assert_eq!(a.admit(v4(3)).unwrap_err(), Refusal::Unregistered, "no address holds more than one");
        t1.registered();
        t1.registered();
        assert!(!t1.is_unregistered());
        let t3 = a.admit(v4(3)).unwrap();
        assert_eq!(a.counts(), AdmissionCounts { connections: 3, unregistered: 2, addresses: 3 });
        drop(t1);
        drop(t3);
        assert_eq!(a.counts(), AdmissionCounts { connections: 1, unregistered: 1, addresses: 1 });
    }

    #[test]
    fn at_the_unregistered_cap_the_busiest_addresss_oldest_connection_makes_room() {
        let a = Admission::new(limits(100, 4));
        let squatters: Vec<Ticket> = (0..3).map(|_| a.admit(v4(66)).unwrap()).collect();
        let _honest = a.admit(v4(1)).unwrap();
        let newcomer = a.admit(v4(2)).expect("the squatter's oldest goes instead");
        assert!(squatters[0].evicted().is_cancelled() && !squatters[1].evicted().is_cancelled());
        assert_eq!(a.evicted(), 1);
        assert_eq!(a.counts().unregistered, 4);
        // The evicted ticket's end releases its connection, not a second unregistered place.
        let mut squatters = squatters.into_iter();
        drop(squatters.next());
        assert_eq!(a.counts(), AdmissionCounts { connections: 4, unregistered: 4, addresses: 3 });
        // The squatter's address now holds 2, the newcomer's 1: another newcomer elsewhere
        // still makes room, but the squatter itself is refused.
        assert_eq!(a.admit(v4(66)).unwrap_err(), Refusal::Unregistered);
        let _third = a.admit(v4(3)).unwrap();
        assert_eq!(a.admit(v4(4)).unwrap_err(), Refusal::Unregistered, "every address holds one: no squatter to evict");
        drop(newcomer);
    }

    #[test]
    fn a_network_is_capped_as_a_whole() {
        let a = Admission::new(Limits { per_network: 3, prefix_v4: 24, ..limits(2, 100) });
        let _held: Vec<Ticket> = [1, 1, 2].into_iter().map(|i| a.admit(v4(i)).unwrap()).collect();
        assert_eq!(a.admit(v4(3)).unwrap_err(), Refusal::PerNetwork);
        a.admit(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1))).expect("another /24");
    }

    #[test]
    fn ipv6_counts_by_prefix_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), v4(1));
    }
}
