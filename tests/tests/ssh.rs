//! SSH over the gateway: a real sshd as the app instance, a real ssh client whose transport is
//! `openssl s_client` to the gateway (TLS terminated there, the SSH bytes relayed in tcp mode).

use gatehouse_tests::pki::TestCa;
use gatehouse_tests::{base_config, Gateway};
use std::process::{Command, Stdio};

#[test]
fn ssh_login_through_the_gateway_runs_a_command() {
    let sshd_bin = "/usr/sbin/sshd";
    assert!(
        std::path::Path::new(sshd_bin).exists(),
        "sshd not installed: run ./scripts/test.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keygen = |path: &std::path::Path| {
        let ok = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                path.to_str().unwrap(),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    keygen(&d.join("host_key"));
    keygen(&d.join("user_key"));
    std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).unwrap();
    let port = gatehouse_tests::knot::free_port();
    std::fs::create_dir_all("/run/sshd").ok(); // privilege separation directory, when root
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PermitRootLogin prohibit-password\n",
            hk = d.join("host_key").display(),
            ak = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display(),
        ),
    )
    .unwrap();
    let mut sshd = Command::new(sshd_bin)
        .args(["-D", "-e", "-f", d.join("sshd_config").to_str().unwrap()])
        .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _ = &mut sshd;
    let _sshd = Kill(sshd);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let ca = TestCa::new();
    let gw_dir = tempfile::tempdir().unwrap();
    let cert = ca.write(gw_dir.path(), "wild", &["*.gw.test"]);
    std::fs::write(d.join("ca.pem"), &ca.pem).unwrap();
    let config = format!(
        "{}\n[[apps]]\nid = \"shell\"\ndefault_port = 22\nports = [22, {port}]\n[[apps.instances]]\naddress = \"127.0.0.1\"\n[tls]\ncertificates = [{cert}]\n",
        base_config("")
    );
    let gw = Gateway::start_in(gw_dir, &config);

    let name = format!("shell-{port}.gw.test");
    let proxy = format!(
        "openssl s_client -quiet -connect {} -servername {name} -verify_hostname {name} -CAfile {} -verify_return_error",
        gw.addr,
        d.join("ca.pem").display()
    );
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let out = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-i",
            d.join("user_key").to_str().unwrap(),
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "ConnectTimeout=20",
            "-o",
            &format!("ProxyCommand={proxy}"),
        ])
        .arg(format!("{}@{name}", user.trim()))
        .arg("echo gatehouse-ssh-ok $((6 * 7))")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("gatehouse-ssh-ok 42"),
        "ssh failed ({}):\nstdout: {stdout}\nstderr: {}\nsshd: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
    );
    assert!(gw.wait_metric("gatehouse_connections_relayed_total", 1) >= 1);
}
