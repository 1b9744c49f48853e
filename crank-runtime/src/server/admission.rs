//! Counting open connections, overall and per client address, to refuse new ones past
//! the limits before any TLS work is done for them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use super::limits::ConnectionLimits;

/// Why a new connection was refused: the `reason` label of
/// `crank_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server holds `max_connections` connections.
    MaxConnections,
    /// The client's address holds `max_connections_per_ip` connections.
    MaxConnectionsPerIp,
}

impl Refusal {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// The open connections of one server.
#[derive(Debug)]
pub(crate) struct Admission {
    max: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Only addresses with a connection open: never more entries than `max`.
    per_ip: HashMap<IpAddr, usize>,
}

/// A connection's place in the counts, given back when dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub(crate) fn new(limits: &ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            max: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            open: Mutex::default(),
        })
    }

    /// Counts a new connection from `ip`, or says which limit it is past. IPv4 clients
    /// of a dual-stack listener (`::ffff:a.b.c.d`) count as their IPv4 address.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max {
            return Err(Refusal::MaxConnections);
        }
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_ip {
            return Err(Refusal::MaxConnectionsPerIp);
        }
        open.per_ip.insert(ip, from_ip + 1);
        open.total += 1;
        Ok(Admitted { admission: self.clone(), ip })
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_ip.remove(&ip);
            }
        }
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        (open.total, open.per_ip.len())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, max_per_ip: usize) -> Arc<Admission> {
        Admission::new(&ConnectionLimits {
            max_connections: max,
            max_connections_per_ip: max_per_ip,
            ..Default::default()
        })
    }

    #[test]
    fn each_address_gets_its_share_and_gives_it_back() {
        let a = admission(10, 2);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let first = a.admit(one).unwrap();
        let _second = a.admit(one).unwrap();
        assert_eq!(a.admit(one).unwrap_err(), Refusal::MaxConnectionsPerIp);
        let _other = a.admit(two).unwrap();
        drop(first);
        let _third = a.admit(one).unwrap();
        assert_eq!(a.counts(), (3, 2));
    }

    #[test]
    fn the_overall_limit_applies_across_addresses_and_entries_do_not_pile_up() {
        let a = admission(3, 2);
        let held: Vec<_> = (1..=3).map(|i| a.admit(IpAddr::from([10, 0, 0, i])).unwrap()).collect();
        assert_eq!(a.admit("10.0.0.9".parse().unwrap()).unwrap_err(), Refusal::MaxConnections);
        drop(held);
        assert_eq!(a.counts(), (0, 0));
    }

    #[test]
    fn a_mapped_ipv4_address_counts_as_itself() {
        let a = admission(10, 1);
        let _v4 = a.admit("192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(a.admit("::ffff:192.0.2.7".parse().unwrap()).unwrap_err(), Refusal::MaxConnectionsPerIp);
    }
}
