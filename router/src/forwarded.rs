//! The client's address behind a trusted edge proxy. From a peer inside one
//! of the `--trusted-proxy` networks, `X-Forwarded-For` is read right to
//! left, skipping the trusted proxies, and the first address outside them is
//! the client's (what goes into the audit record); from any other peer the
//! header is ignored, so a client cannot claim another address.
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Parses the `--trusted-proxy` list (CIDRs; a bare address is a /32 or /128).
pub fn parse_trusted(items: &[String]) -> Result<Vec<IpNet>, String> {
    items
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("--trusted-proxy {s:?} is neither a CIDR nor an address"))
        })
        .collect()
}

/// The address to record for a request from `peer` carrying `xff` (the
/// `X-Forwarded-For` values, in order received).
pub fn client_addr(peer: Option<SocketAddr>, xff: &[&str], trusted: &[IpNet]) -> String {
    let Some(peer) = peer else {
        return String::new();
    };
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer.ip()) {
        return peer.to_string();
    }
    let hops: Vec<IpAddr> = xff
        .iter()
        .flat_map(|v| v.split(','))
        .map_while(|h| h.trim().parse::<IpAddr>().ok())
        .collect();
    match hops.iter().rev().find(|ip| !is_trusted(ip)) {
        Some(client) => client.to_string(),
        // Everyone on the way is a trusted proxy: the first of them.
        None => hops.first().map_or(peer.to_string(), IpAddr::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let trusted = parse_trusted(&["10.0.0.0/8".into(), "192.0.2.1".into()]).unwrap();
        let edge: SocketAddr = "10.1.2.3:443".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.9:5000".parse().unwrap();
        assert_eq!(
            client_addr(Some(edge), &["203.0.113.7"], &trusted),
            "203.0.113.7"
        );
        // Proxies of ours on the way are skipped; what the client itself put
        // in front (a claimed address) is not believed past an untrusted hop.
        assert_eq!(
            client_addr(Some(edge), &["1.1.1.1, 203.0.113.7, 10.9.9.9"], &trusted),
            "203.0.113.7"
        );
        assert_eq!(
            client_addr(Some(stranger), &["203.0.113.7"], &trusted),
            stranger.to_string()
        );
        assert_eq!(client_addr(Some(edge), &[], &trusted), edge.to_string());
        assert_eq!(
            client_addr(Some(edge), &["not an address"], &trusted),
            edge.to_string()
        );
        assert_eq!(
            client_addr(Some(edge), &["203.0.113.7"], &[]),
            edge.to_string()
        );
        assert!(parse_trusted(&["10.0.0.0/33".into()]).is_err());
    }
}
