//! WireGuard control against real userspace daemons (wireguard-go) in network namespaces this
//! test creates: two interfaces configured only through `gatehouse_vpc::wireguard` (UAPI),
//! a handshake and HTTP through the tunnel, then the counters and last handshake read back
//! through both the UAPI client and the `wg` tool. Needs root (namespaces, TUN); skipped with
//! a message otherwise. Namespaces and daemons are removed by PID on every exit path.

use gatehouse_tests::netns::{ip, wireguard_ready, Net};
use gatehouse_vpc::wireguard::{KeyPair, PeerConfig, Uapi, WgTool, WireGuard};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_userspace_peers_handshake_and_report_counters() {
    if !wireguard_ready() {
        return;
    }
    let tag = std::process::id() % 100_000;
    let (a, b) = (format!("ghwa{tag}"), format!("ghwb{tag}"));
    let mut net = Net::default();
    net.namespace(&a);
    net.namespace(&b);
    let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
    ip(&["link", "set", &va, "netns", &a]);
    ip(&["link", "set", &vb, "netns", &b]);
    ip(&["-n", &a, "addr", "add", "192.168.77.1/24", "dev", &va]);
    ip(&["-n", &b, "addr", "add", "192.168.77.2/24", "dev", &vb]);
    ip(&["-n", &a, "link", "set", &va, "up"]);
    ip(&["-n", &b, "link", "set", &vb, "up"]);
    let (wa, wb) = (format!("wga{tag}"), format!("wgb{tag}"));
    net.wireguard(&a, &wa);
    net.wireguard(&b, &wb);
    let deadline = Instant::now() + Duration::from_secs(10);

    let (ka, kb) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let (ua, ub) = (Uapi::new(&wa), Uapi::new(&wb));
    assert_eq!(
        ua.state().await.unwrap().0,
        None,
        "a fresh daemon has no key"
    );
    ua.configure(&ka, Some(51820)).await.unwrap();
    ub.configure(&kb, Some(51820)).await.unwrap();
    let peer = |key: &KeyPair, ip: [u8; 4], endpoint: &str| PeerConfig {
        public_key: key.public,
        allowed_ips: vec![(Ipv4Addr::from(ip), 32)],
        endpoint: Some(endpoint.parse().unwrap()),
        keepalive: 0,
    };
    ua.set_peer(&peer(&kb, [10, 77, 0, 2], "192.168.77.2:51820"))
        .await
        .unwrap();
    ub.set_peer(&peer(&ka, [10, 77, 0, 1], "192.168.77.1:51820"))
        .await
        .unwrap();
    ip(&["-n", &a, "addr", "add", "10.77.0.1/24", "dev", &wa]);
    ip(&["-n", &a, "link", "set", &wa, "up"]);
    ip(&["-n", &b, "addr", "add", "10.77.0.2/24", "dev", &wb]);
    ip(&["-n", &b, "link", "set", &wb, "up"]);
    let (own, peers) = ua.state().await.unwrap();
    assert_eq!(own, Some(ka.public));
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].public_key, kb.public);
    assert_eq!(peers[0].last_handshake, None, "no traffic yet");

    // HTTP through the tunnel: a server bound to b's tunnel address only.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello"), "through the tunnel").unwrap();
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &b,
            "python3",
            "-m",
            "http.server",
            "--bind",
            "10.77.0.2",
            "8080",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    net.keep(server);
    let mut body = String::new();
    while Instant::now() < deadline + Duration::from_secs(10) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &a,
                "curl",
                "-s",
                "--max-time",
                "2",
                "http://10.77.0.2:8080/hello",
            ])
            .output()
            .unwrap();
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body == "through the tunnel" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(body, "through the tunnel");

    let (_, peers) = ua.state().await.unwrap();
    let p = &peers[0];
    assert!(p.last_handshake.is_some(), "handshake recorded: {p:?}");
    assert!(p.rx_bytes > 0 && p.tx_bytes > 0, "{p:?}");
    assert_eq!(p.endpoint, Some("192.168.77.2:51820".parse().unwrap()));

    // The wg tool reads the same interface the same way.
    let (own_tool, peers_tool) = WgTool::new(&wa).state().await.unwrap();
    assert_eq!(own_tool, Some(ka.public));
    assert_eq!(peers_tool[0].public_key, kb.public);
    assert!(peers_tool[0].last_handshake.is_some());

    ua.remove_peer(&kb.public).await.unwrap();
    assert!(ua.state().await.unwrap().1.is_empty());
    let e = Uapi::new("ghnonexistent").state().await.unwrap_err();
    assert!(e.to_string().contains("is the daemon running"), "{e}");
}
