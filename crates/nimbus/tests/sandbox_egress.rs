//! The egress policy at the packet level (issue 13): a sandboxed Python function with
//! `network: outbound` against a real `nimbus serve`. Cloud metadata, private networks and
//! the host's own addresses are refused at once (connection refused, not a timeout), DNS to
//! the sandbox's resolver works, and a host-loopback port the operator opened with
//! `--allow-egress` is reachable at slirp's gateway 10.0.2.2, that port only.
#![allow(clippy::unwrap_used)]

mod common;

use common::Server;
use serde_json::{Value, json};
use std::net::{IpAddr, TcpListener};

const PROBE: &str = r#"
import socket, struct

def connect(host, port):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, port))
        return "connected"
    except OSError as e:
        return e.errno if e.errno is not None else repr(e)
    finally:
        s.close()

def dns():
    ns = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
    q = struct.pack(">HHHHHH", 0x4e42, 0x0100, 1, 0, 0, 0) + b"\x06nimbus\x07invalid\x00" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        s.sendto(q, (ns, 53))
        d, _ = s.recvfrom(512)
        return "answered" if d[:2] == b"\x4e\x42" else "garbled"
    except OSError as e:
        return repr(e)
    finally:
        s.close()

def main(args):
    r = {name: connect(h, p) for name, (h, p) in args["connect"].items()}
    r["dns"] = dns()
    return r
"#;

/// Whether this machine's own resolver answers (the sandbox's DNS forwards to it).
fn host_dns_answers() -> bool {
    let Ok(conf) = std::fs::read_to_string("/etc/resolv.conf") else {
        return false;
    };
    let Some(ns) = conf
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .and_then(|n| n.trim().parse::<IpAddr>().ok())
    else {
        return false;
    };
    let q: Vec<u8> = [
        &[0x4e, 0x42, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0][..],
        b"\x06nimbus\x07invalid\x00",
        &[0, 1, 0, 1],
    ]
    .concat();
    let s = std::net::UdpSocket::bind(if ns.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 512];
    s.send_to(&q, (ns, 53)).is_ok() && s.recv_from(&mut buf).is_ok()
}

const ECONNREFUSED: i64 = libc::ECONNREFUSED as i64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_functions_reach_only_what_the_egress_policy_allows() {
    let opened = TcpListener::bind("127.0.0.1:0").unwrap();
    let opened_port = opened.local_addr().unwrap().port();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    // On every address: reachable through the host's own address if that were allowed.
    let any = TcpListener::bind("0.0.0.0:0").unwrap();
    let any_port = any.local_addr().unwrap().port();
    let allow = format!("127.0.0.1:{opened_port}");
    let s = Server::start(&["--dev", "--allow-egress", &allow]).await;
    let info: Value = s
        .client
        .get(format!("{}/api/v1", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    if info["isolation"]["outboundNetwork"] != true {
        eprintln!(
            "SKIPPED: outbound network unavailable: {}",
            info["warnings"]
        );
        return;
    }
    let (st, v) = s
        .put(
            "actions/egress-probe",
            json!({"exec": {"kind": "python:default", "code": PROBE},
                   "annotations": [{"key": "network", "value": "outbound"}]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let mut connect = json!({
        "metadata": ["169.254.169.254", 80],
        "private": ["10.1.2.3", 80],
        "gateway_opened": ["10.0.2.2", opened_port],
        "gateway_other": ["10.0.2.2", closed_port],
        "slirp_dns_other_port": ["10.0.2.3", 80],
    });
    let host_ip = nimbus_egress::host_addresses()
        .into_iter()
        .find(|ip| ip.is_ipv4() && !ip.is_loopback());
    if let Some(ip) = host_ip {
        connect["host_own_address"] = json!([ip.to_string(), any_port]);
    }
    let (st, v) = s
        .post(
            "actions/egress-probe?blocking=true&result=true",
            json!({ "connect": connect }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    eprintln!("{v:#}");
    assert_eq!(v["metadata"], ECONNREFUSED, "{v}");
    assert_eq!(v["private"], ECONNREFUSED, "{v}");
    assert_eq!(v["gateway_other"], ECONNREFUSED, "{v}");
    assert_eq!(v["slirp_dns_other_port"], ECONNREFUSED, "{v}");
    if host_ip.is_some() {
        assert_eq!(v["host_own_address"], ECONNREFUSED, "{v}");
    }
    assert_eq!(v["gateway_opened"], "connected", "{v}");
    if host_dns_answers() {
        assert_eq!(v["dns"], "answered", "{v}");
    } else {
        eprintln!("this machine's resolver does not answer: DNS not checked");
    }
    drop((opened, closed, any));
}
