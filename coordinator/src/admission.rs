//! Who may connect: per-address connection limits and a cap on connections that have not
//! registered yet, checked in the accept loop before any WebSocket work is done.
//!
//! `max_connections` alone let 300 silent sockets from one machine take every slot and
//! lock out honest gamers and peers. Two more counts close that:
//!
//! - **Per address** (`max_connections_per_address`): connections one client address may
//!   hold at once. IPv4 addresses count one by one; IPv6 addresses count by their /64
//!   prefix, since one subscriber is routinely given a whole /64 and could otherwise open
//!   connections from 2^64 addresses. IPv4-mapped IPv6 addresses count as the IPv4
//!   address.
//! - **Unregistered** (`max_unregistered_connections`): connections that have not yet
//!   registered as a peer or a gamer. A connection stops counting once it registers
//!   ([`Ticket::registered`]); one that never does is closed at `register_timeout`, so a
//!   squatter holds an unregistered slot for at most that long.
//!
//! A refused connection is dropped before the WebSocket handshake: it costs one accept
//! and one close, and the client sees the TCP connection closed (its handshake fails).
//! Sending an explanation would cost a handshake per refusal, which is what a flood is
//! after. The counts are released when the connection's [`Ticket`] is dropped, however the
//! connection ends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address already holds `max_connections_per_address` connections.
    PerAddress,
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
    connections: usize,
    unregistered: usize,
}

/// The admission counts of one coordinator.
#[derive(Debug)]
pub struct Admission {
    max_per_address: usize,
    max_unregistered: usize,
    counts: Mutex<Counts>,
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
    /// Limits of `max_per_address` connections per address and `max_unregistered`
    /// unregistered connections (each at least 1).
    pub fn new(max_per_address: usize, max_unregistered: usize) -> Arc<Self> {
        Arc::new(Admission {
            max_per_address: max_per_address.max(1),
            max_unregistered: max_unregistered.max(1),
            counts: Mutex::new(Counts::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new, unregistered connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let key = address_key(ip);
        let mut counts = self.lock();
        if counts.unregistered >= self.max_unregistered {
            return Err(Refusal::Unregistered);
        }
        let held = counts.per_address.get(&key).copied().unwrap_or(0);
        if held >= self.max_per_address {
            return Err(Refusal::PerAddress);
        }
        counts.per_address.insert(key, held + 1);
        counts.connections += 1;
        counts.unregistered += 1;
        Ok(Ticket { admission: self.clone(), key, unregistered: true })
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
}

/// One admitted connection's place in the counts; dropping it releases them.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    key: IpAddr,
    unregistered: bool,
}

impl Ticket {
    /// The connection has registered: it no longer counts against the unregistered cap.
    /// Idempotent.
    pub fn registered(&mut self) {
        if std::mem::take(&mut self.unregistered) {
            let mut counts = self.admission.lock();
            counts.unregistered = counts.unregistered.saturating_sub(1);
        }
    }

    /// Whether the connection still counts as unregistered.
    pub fn is_unregistered(&self) -> bool {
        self.unregistered
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        if self.unregistered {
            counts.unregistered = counts.unregistered.saturating_sub(1);
        }
        counts.connections = counts.connections.saturating_sub(1);
        if let Some(held) = counts.per_address.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.per_address.remove(&self.key);
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

    #[test]
    fn per_address_limit_holds_and_is_released_on_drop() {
        let a = Admission::new(2, 100);
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
        let a = Admission::new(100, 2);
        let mut t1 = a.admit(v4(1)).unwrap();
        let _t2 = a.admit(v4(2)).unwrap();
        assert_eq!(a.admit(v4(3)).unwrap_err(), Refusal::Unregistered);
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
