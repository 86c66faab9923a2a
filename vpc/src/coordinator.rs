//! The mesh's coordinator on the gateway's VPC address: netmaps for agents (a long poll),
//! `whois`, and the name server. Reached only through WireGuard, so a request's source
//! address is the key that sent it: the asker is the instance holding that lease, and every
//! answer is about what that instance may see.
//!
//! - `GET /v1/netmap?since=N`: the asker's [`Netmap`]; waits (up to 25 s) while the version
//!   is still `N`.
//! - `GET /v1/whois/<ip>`: the [`MeshPeer`] at `ip`, if the asker peers with it.
//! - DNS (UDP and TCP) for `<app>.<domain>` and `<n>.<app>.<domain>`, A records, TTL 5 s.

use super::leases::Lease;
use super::mesh::{netmap, resolve, MeshPeer, Netmap, Reach, View};
use gatehouse::http_server::{json, serve, text, Limits};

type Reply = hyper::Response<http_body_util::Full<bytes::Bytes>>;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata::A, DNSClass, RData, Record, RecordType};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a netmap request waits for a change.
const LONG_POLL: Duration = Duration::from_secs(25);
/// The TTL of answers: short, so a departed instance leaves caches quickly.
const TTL: u32 = 5;

/// The coordinator's state and its listeners.
#[derive(Debug)]
pub struct Coordinator {
    view: tokio::sync::watch::Sender<View>,
    reach: std::sync::RwLock<Reach>,
    domain: String,
}

impl Coordinator {
    /// A coordinator for `reach` and names under `domain`, knowing nothing yet.
    pub fn new(reach: Reach, domain: &str) -> Arc<Coordinator> {
        Arc::new(Coordinator {
            view: tokio::sync::watch::Sender::new(View::default()),
            reach: std::sync::RwLock::new(reach),
            domain: domain.to_owned(),
        })
    }

    /// Records the leases, who is live and the endpoints; the version moves (and waiting
    /// agents are answered) only when something changed.
    pub fn update(
        &self,
        leases: Vec<Lease>,
        live: HashSet<String>,
        endpoints: HashMap<String, SocketAddr>,
    ) {
        self.view.send_if_modified(|v| {
            if v.same_as(&leases, &live, &endpoints) {
                return false;
            }
            v.version += 1;
            v.leases = leases;
            v.live = live;
            v.endpoints = endpoints;
            true
        });
    }

    /// Replaces the leases (after a store event), keeping liveness and endpoints, and
    /// counting the leases `fresh` says so as live (a registration just proved one).
    pub fn add_fresh(&self, leases: Vec<Lease>, fresh: impl Fn(&Lease) -> bool) {
        let (mut live, endpoints) = {
            let v = self.view.borrow();
            (v.live.clone(), v.endpoints.clone())
        };
        live.extend(
            leases
                .iter()
                .filter(|l| fresh(l))
                .map(|l| l.public_key.clone()),
        );
        self.update(leases, live, endpoints);
    }

    /// Replaces liveness and endpoints (after a liveness pass).
    pub fn set_liveness(&self, live: HashSet<String>, endpoints: HashMap<String, SocketAddr>) {
        let leases = self.view.borrow().leases.clone();
        self.update(leases, live, endpoints);
    }

    /// The asker's netmap now.
    pub fn netmap(&self, asker: Ipv4Addr) -> Option<Netmap> {
        netmap(&self.view.borrow(), &self.reach(), asker, &self.domain)
    }

    fn reach(&self) -> Reach {
        self.reach.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A new policy (a reload, the API): if it differs, every agent's netmap is recomputed
    /// and sent.
    pub fn set_reach(&self, reach: Reach) {
        let mut current = self.reach.write().unwrap_or_else(|p| p.into_inner());
        if *current == reach {
            return;
        }
        *current = reach;
        drop(current);
        self.view.send_modify(|v| v.version += 1);
    }

    /// The policy in force.
    pub fn current_reach(&self) -> Reach {
        self.reach()
    }

    /// Serves the HTTP API on `listener` (bound to the VPC address) until dropped.
    pub async fn serve_http(self: Arc<Self>, listener: tokio::net::TcpListener) {
        // A long poll holds its request for LONG_POLL, well inside a connection's lifetime.
        serve(listener, Limits::default(), move |req, peer| {
            let me = self.clone();
            async move { me.handle(req.method(), req.uri(), peer).await }
        })
        .await
    }

    async fn handle(&self, method: &hyper::Method, uri: &hyper::Uri, peer: SocketAddr) -> Reply {
        let IpAddr::V4(asker) = peer.ip() else {
            return text(403, "403 the VPC is IPv4\n");
        };
        if method != hyper::Method::GET {
            return text(405, "405 GET only\n");
        }
        let path = uri.path();
        if path == "/v1/netmap" {
            let since: Option<u64> = uri
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("since=")))
                .and_then(|v| v.parse().ok());
            let mut rx = self.view.subscribe();
            if since == Some(rx.borrow_and_update().version) {
                let _ = tokio::time::timeout(LONG_POLL, rx.changed()).await;
            }
            return match self.netmap(asker) {
                Some(map) => json(200, &map),
                None => text(403, format!("403 no lease at {asker}: register first\n")),
            };
        }
        if let Some(ip) = path.strip_prefix("/v1/whois/") {
            let Ok(ip) = ip.parse::<Ipv4Addr>() else {
                return text(400, "400 whois takes an IPv4 address\n");
            };
            let peer: Option<MeshPeer> = self
                .netmap(asker)
                .and_then(|m| m.peers.into_iter().find(|p| p.address == ip));
            return match peer {
                Some(p) => json(200, &p),
                None => text(404, format!("404 {ip} is not one of your peers\n")),
            };
        }
        text(404, "404 not found\n")
    }

    /// The answer to one DNS query from `asker` (`None`: not a query worth answering).
    pub fn answer(&self, query: &[u8], asker: IpAddr) -> Option<Vec<u8>> {
        let req = Message::from_vec(query).ok()?;
        if req.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.metadata.authoritative = true;
        let Some(q) = req.queries.first().filter(|_| req.queries.len() == 1) else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp.to_vec().ok();
        };
        resp.add_query(q.clone());
        if req.metadata.op_code != OpCode::Query || q.query_class() != DNSClass::IN {
            resp.metadata.response_code = ResponseCode::NotImp;
            return resp.to_vec().ok();
        }
        let found = match asker {
            IpAddr::V4(a) => resolve(
                &self.view.borrow(),
                &self.reach(),
                a,
                &q.name().to_ascii(),
                &self.domain,
            ),
            IpAddr::V6(_) => None,
        };
        match found {
            None => resp.metadata.response_code = ResponseCode::NXDomain,
            Some(addresses) if q.query_type() == RecordType::A => {
                for ip in addresses {
                    resp.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
                }
            }
            Some(_) => {} // the name exists, with no record of that type
        }
        resp.to_vec().ok()
    }

    /// Answers DNS over UDP on `socket` until dropped.
    pub async fn serve_dns_udp(self: Arc<Self>, socket: tokio::net::UdpSocket) {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            if let Some(answer) = self.answer(&buf[..n], from.ip()) {
                let _ = socket.send_to(&answer, from).await;
            }
        }
    }

    /// Answers DNS over TCP on `listener` until dropped (one query per connection at a
    /// time, 10 s for each).
    pub async fn serve_dns_tcp(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((mut stream, from)) = listener.accept().await else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let one = async {
                    loop {
                        let len = stream.read_u16().await? as usize;
                        let mut q = vec![0u8; len];
                        stream.read_exact(&mut q).await?;
                        let Some(a) = me.answer(&q, from.ip()) else {
                            return Ok::<(), std::io::Error>(());
                        };
                        stream.write_u16(a.len() as u16).await?;
                        stream.write_all(&a).await?;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), one).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn coordinator() -> Arc<Coordinator> {
        let mut vpc: gatehouse_config::Config = gatehouse_config::Config::from_toml(
            "[vpc]\nprefix = \"10.88.0.0/24\"\ngateway_address = \"10.88.0.1\"\nregister_listen = \"127.0.0.1:0\"\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let vpc = vpc.vpc.take().unwrap();
        let c = Coordinator::new(Reach::from_config(&vpc), "vpc.internal");
        let lease = |ip: u8, app: &str, ordinal| Lease {
            address: Ipv4Addr::new(10, 88, 0, ip),
            app_id: app.into(),
            public_key: format!("k{ip}"),
            registered_at: 0,
            ordinal,
            measurements: None,
        };
        c.update(
            vec![lease(2, "db", 0), lease(3, "db", 1)],
            ["k2".to_owned(), "k3".to_owned()].into(),
            HashMap::new(),
        );
        c
    }

    fn ask(c: &Coordinator, name: &str, kind: RecordType) -> Message {
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        let a = c
            .answer(&q.to_vec().unwrap(), IpAddr::from([10, 88, 0, 2]))
            .unwrap();
        Message::from_vec(&a).unwrap()
    }

    #[test]
    fn mesh_dns_answers_a_records_and_nxdomain_on_the_wire() {
        let c = coordinator();
        let a = ask(&c, "db.vpc.internal.", RecordType::A);
        assert_eq!(a.metadata.id, 7);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        let ips: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(ips, ["10.88.0.2", "10.88.0.3"]);
        assert!(a.answers.iter().all(|r| r.ttl == TTL));
        let one = ask(&c, "1.db.vpc.internal.", RecordType::A);
        assert_eq!(one.answers.len(), 1);
        let aaaa = ask(&c, "db.vpc.internal.", RecordType::AAAA);
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());
        let none = ask(&c, "web.vpc.internal.", RecordType::A);
        assert_eq!(none.metadata.response_code, ResponseCode::NXDomain);
        assert!(c.answer(b"garbage", IpAddr::from([10, 88, 0, 2])).is_none());
    }

    #[test]
    fn mesh_versions_move_only_on_change() {
        let c = coordinator();
        let v = c.view.borrow().version;
        let (leases, live) = {
            let b = c.view.borrow();
            (b.leases.clone(), b.live.clone())
        };
        c.update(leases.clone(), live.clone(), HashMap::new());
        assert_eq!(c.view.borrow().version, v, "nothing changed");
        c.set_liveness(["k2".to_owned()].into(), HashMap::new());
        assert_eq!(c.view.borrow().version, v + 1);
        let map = c.netmap(Ipv4Addr::new(10, 88, 0, 2)).unwrap();
        assert!(map.peers.is_empty(), "k3 left rotation: {map:?}");
    }
}
