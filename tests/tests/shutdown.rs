//! SIGTERM: stop accepting, let live connections finish, then exit 0.

use gatehouse_tests::servers::{bind, echo, read_line};
use gatehouse_tests::{base_config, Gateway};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The drain deadline is 60 s and the test waits at most 20 s: exiting proves the gateway
/// noticed the last connection end rather than waiting out the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_live_connections() {
    let app = bind([127, 0, 0, 1], 0).await.unwrap();
    let port = app.local_addr().unwrap().port();
    echo(app, "echo");
    let config = format!("{}\n[[apps]]\nid = \"echo\"\ndefault_port = {port}\n[[apps.instances]]\naddress = \"127.0.0.1\"\n", base_config("")).replace("drain = \"10s\"", "drain = \"60s\"");
    let mut gw = Gateway::start(&config);
    let hello = gatehouse::hello::parse::build::client_hello(Some("echos.gw.test"), &[], 0);
    let first = gatehouse::hello::parse::build::records(&hello, 16_384);
    let mut live = TcpStream::connect(gw.addr).await.unwrap();
    live.write_all(&first).await.unwrap();
    assert_eq!(read_line(&mut live).await, "echo");

    gw.signal("TERM");
    // new connections are no longer accepted
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(gw.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "listener still accepting after SIGTERM");
    // the live one still works
    live.write_all(b"\nstill here\n").await.unwrap();
    let mut line = read_line(&mut live).await;
    while line != "still here" {
        line = read_line(&mut live).await;
    }
    assert!(
        gw.wait_exit(Duration::from_millis(300)).is_none(),
        "exited while a connection was live"
    );
    drop(live);
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .expect("exits once drained, before the deadline");
    assert!(status.success(), "{status:?}");
}
