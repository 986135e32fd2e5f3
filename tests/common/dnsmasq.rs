//! dnsmasq on 127.0.0.1, authoritative for `.test`, for the tests that need real DNS.
//!
//! The port is picked by binding port 0 and letting it go, so another process may take it
//! before dnsmasq binds it (UDP and TCP both: dnsmasq listens on the two). A dnsmasq that
//! exits at once is therefore started again on a new port, a bounded number of times, and
//! a failure says what dnsmasq printed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Dnsmasq {
    process: Child,
    pub port: u16,
}

impl Dnsmasq {
    /// Start dnsmasq with the given record options; None (after a SKIP line) when it is
    /// not installed.
    pub fn start(records: &[String]) -> Option<Dnsmasq> {
        let program = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].into_iter().find(|p| Path::new(p).exists());
        let Some(program) = program else {
            super::skip("dnsmasq is not installed");
            return None;
        };
        let log = super::TempDir::new("dnsmasq");
        let mut said = String::new();
        for attempt in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
            let stderr = std::fs::File::create(log.path().join(format!("stderr.{attempt}"))).expect("dnsmasq log");
            let mut command = Command::new(program);
            command
                .args(["--no-daemon", "--conf-file=/dev/null", "--pid-file=", "--listen-address=127.0.0.1"])
                .args(["--bind-interfaces", "--no-resolv", "--no-hosts", "--local=/test/"])
                .arg(format!("--port={port}"))
                .args(records)
                .stdout(Stdio::null())
                .stderr(stderr);
            if super::is_root() {
                command.arg("--user=nobody");
            }
            quill::base::sys::die_with_parent(&mut command);
            let mut dns = Dnsmasq { process: command.spawn().expect("start dnsmasq"), port };
            let resolver = quill::mail::dns::Resolver {
                servers: vec![SocketAddr::from(([127, 0, 0, 1], port))],
                timeout: Duration::from_millis(200),
                attempts: 1,
            };
            let mut exited = false;
            let up = super::wait_for(Duration::from_secs(10), || {
                if matches!(dns.process.try_wait(), Ok(Some(_))) {
                    exited = true;
                    return true;
                }
                matches!(
                    resolver.query(b"ready.test", quill::mail::dns::TYPE_A),
                    Ok(_) | Err(quill::mail::dns::DnsError::NxDomain(_))
                )
            });
            said = std::fs::read_to_string(log.path().join(format!("stderr.{attempt}"))).unwrap_or_default();
            if up && !exited {
                return Some(dns);
            }
            if !exited {
                break;
            }
        }
        panic!("dnsmasq did not start; it said: {said}");
    }

    /// A `control/dnsservers` naming this server.
    pub fn servers(&self) -> String {
        format!("127.0.0.1:{}\noptions timeout:2 attempts:2\n", self.port)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
