//! Workers found by name: a `--worker` entry `dns+https://NAME:PORT`
//! (`#tenant=T` as for a plain URL) stands for every address NAME resolves
//! to — a Kubernetes headless Service's ready pods — each its own worker
//! (its own channel, slots in the fair queue, affinity entries). The pool
//! resolves the names again every `--worker-resolve-ms` and follows
//! replicas joining and leaving (`WorkerPool::rediscover`). Each endpoint's
//! certificate is checked as for any worker: the SPIFFE id, not the address.
//!
//! A hosts file (`--hosts-file`, lines `IP NAME…` as in /etc/hosts, read
//! again on every round) answers for the names it lists before DNS does:
//! the dev stack gives one name several loopback workers with it.
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use bulkhead_identity::tls::ExpectedServer;

/// The scheme of a discovered pool.
pub const SCHEME: &str = "dns+https://";

/// One `dns+https://` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Discovered {
    pub host: String,
    pub port: u16,
    pub expected: ExpectedServer,
    /// The entry as given (for logs).
    pub entry: String,
}

/// Parses `dns+https://NAME:PORT`; `expected` comes from the entry's
/// `#tenant=` suffix (already split off).
pub fn parse(url: &str, expected: ExpectedServer, entry: &str) -> anyhow::Result<Discovered> {
    let rest = url
        .strip_prefix(SCHEME)
        .ok_or_else(|| anyhow::anyhow!("{entry:?} is not a {SCHEME} entry"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("worker {entry:?}: expected {SCHEME}NAME:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow::anyhow!("worker {entry:?}: the port must be 1-65535"))?;
    anyhow::ensure!(
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
        "worker {entry:?}: {host:?} is not a DNS name"
    );
    Ok(Discovered {
        host: host.to_ascii_lowercase(),
        port,
        expected,
        entry: entry.to_string(),
    })
}

/// The addresses a hosts file gives `name` (empty: it does not list it).
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let mut out = vec![];
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        if words.any(|w| w.eq_ignore_ascii_case(name)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// The worker URL of one resolved address.
pub fn endpoint_url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("https://{v4}:{port}"),
        IpAddr::V6(v6) => format!("https://[{v6}]:{port}"),
    }
}

/// The URLs `d` stands for now: from the hosts file when it lists the
/// name, else from DNS.
pub async fn resolve(
    d: &Discovered,
    hosts_file: Option<&Path>,
) -> Result<BTreeSet<String>, String> {
    if let Some(path) = hosts_file {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("reading the hosts file {}: {e}", path.display()))?;
        let ips = hosts_lookup(&text, &d.host);
        if !ips.is_empty() {
            return Ok(ips.into_iter().map(|ip| endpoint_url(ip, d.port)).collect());
        }
    }
    let addrs = tokio::net::lookup_host((d.host.as_str(), d.port))
        .await
        .map_err(|e| format!("resolving {}: {e}", d.host))?;
    Ok(addrs.map(|a| endpoint_url(a.ip(), d.port)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        let d = parse(
            "dns+https://Workers.ns.svc:50061",
            ExpectedServer::AnyWorker,
            "e",
        )
        .unwrap();
        assert_eq!((d.host.as_str(), d.port), ("workers.ns.svc", 50061));
        for bad in [
            "https://w:1",
            "dns+https://w",
            "dns+https://w:0",
            "dns+https://w:x",
            "dns+https://:5",
            "dns+https://w/x:5",
            "dns+https://w_1:5",
        ] {
            assert!(parse(bad, ExpectedServer::AnyWorker, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_files() {
        let text = "127.0.0.1 workers other # a comment\n\
                    # 127.0.0.9 workers\n\
                    ::1 WORKERS\n\
                    not-an-ip workers\n\
                    127.0.0.2\tworkers\n\
                    127.0.0.1 workers\n";
        let ips: Vec<String> = hosts_lookup(text, "workers")
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(ips, ["127.0.0.1", "::1", "127.0.0.2"]);
        assert!(hosts_lookup(text, "missing").is_empty());
        assert_eq!(endpoint_url("::1".parse().unwrap(), 5), "https://[::1]:5");
        assert_eq!(
            endpoint_url("10.0.0.7".parse().unwrap(), 5),
            "https://10.0.0.7:5"
        );
    }

    #[tokio::test]
    async fn the_hosts_file_answers_before_dns() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 pool\n127.0.0.2 pool\n").unwrap();
        let d = parse("dns+https://pool:7", ExpectedServer::AnyWorker, "e").unwrap();
        let urls = resolve(&d, Some(&hosts)).await.unwrap();
        assert_eq!(
            urls.into_iter().collect::<Vec<_>>(),
            ["https://127.0.0.1:7", "https://127.0.0.2:7"]
        );
        // A name the file does not list goes to DNS ("localhost" resolves
        // everywhere).
        let d = parse("dns+https://localhost:7", ExpectedServer::AnyWorker, "e").unwrap();
        let urls = resolve(&d, Some(&hosts)).await.unwrap();
        assert!(
            urls.iter()
                .any(|u| u == "https://127.0.0.1:7" || u == "https://[::1]:7"),
            "{urls:?}"
        );
    }
}
