//! The WARP stack (4): anonymous egress. A WARP client in proxy mode (SOCKS5/HTTP through
//! GOST), a second WARP client as the NAT gateway of `warp-nat-net`, an HTTP proxy for
//! applications that only speak `HTTP_PROXY`, and an egress monitor.
//!
//! Sources: `caomingjun/warp` (cmj2002/warp-docker README: `GOST_ARGS`, `WARP_SLEEP`,
//! `WARP_LICENSE_KEY`, `WARP_ENABLE_NAT`, `NET_ADMIN` and the two sysctls; the health
//! check is the README's `cdn-cgi/trace` probe, curl is in the image); the NAT-gateway
//! layout follows bolabaden/warp-nat-routing's compose (`warp-nat-gateway` on
//! `warp-nat-net`, `ip-checker-warp` as monitor). The HTTP proxy is GOST v2
//! (`ginuerzh/gost:2.11.5`, Alpine, busybox wget honours `http_proxy`); the monitor is
//! `curlimages/curl` (Alpine). Tags of `caomingjun/warp` are `<warp version>-<gost
//! version>`; the one pinned is the one public compose files pin most.
//!
//! The WARP client needs `NET_ADMIN`, `/dev/net/tun` and forwarding sysctls (the
//! service's `cap_add`, `devices`, `sysctls`), which deploy applies.
//! Two parts of the reference layout are not services here: the host policy routing that
//! sends `warp-nat-net`'s traffic through the gateway (bolabaden's `warp-nat-setup.sh`,
//! run privileged on the host network — the model has neither) and the network's bridge
//! options (`enable_ip_masquerade=false`); both are node setup, not catalogue entries.

use super::build::{stack as make, svc, Svc, LOOPBACK};
use super::{BACKEND, WARP_NET};
use crate::model::Stack;

const WARP_IMAGE: &str = "caomingjun/warp:2026.7.1377.0-2.12.0";
const TRACE: &str = "https://www.cloudflare.com/cdn-cgi/trace";

fn warp_client(name: &str, volume: &str) -> Svc {
    svc(name, WARP_IMAGE)
        .env("WARP_SLEEP", "5")
        .secret_env("WARP_LICENSE_KEY", "WARP_LICENSE_KEY")
        .vol(volume, "/var/lib/cloudflare-warp")
        .cap_add(&["NET_ADMIN", "MKNOD", "AUDIT_WRITE"])
        .device("/dev/net/tun")
        .sysctl("net.ipv6.conf.all.disable_ipv6", "0")
        .sysctl("net.ipv4.conf.all.src_valid_mark", "1")
        .sysctl("net.ipv4.ip_forward", "1")
}

pub(super) fn stack() -> Stack {
    make(
        "warp",
        "Anonymous egress through Cloudflare WARP: SOCKS5/HTTP proxy, NAT gateway, monitor",
        vec![
            warp_client("warp", "warp-proxy-data")
                .env("GOST_ARGS", "-L :1080")
                .net(&[WARP_NET, BACKEND])
                .health_shell(&format!("curl -fsS -x socks5h://127.0.0.1:1080 {TRACE} | grep -qE 'warp=(on|plus)'"))
                .timing(60, 10, 3, 15),
            warp_client("warp-nat-gateway", "warp-nat-data")
                .env("WARP_ENABLE_NAT", "true")
                .env("GOST_ARGS", "-L :1081")
                .net(&[WARP_NET])
                .health_shell(&format!("curl -fsS {TRACE} | grep -qE 'warp=(on|plus)'"))
                .timing(30, 10, 3, 15),
            svc("warp-http-proxy", "ginuerzh/gost:2.11.5")
                .cmd(&["-L", "http://:8118", "-F", "socks5://warp-warp:1080"])
                .warp()
                .backend()
                .port(LOOPBACK, 8118, 8118)
                .health_shell(
                    "http_proxy=http://127.0.0.1:8118 wget -q -O- http://www.cloudflare.com/cdn-cgi/trace | grep -qE 'warp=(on|plus)'",
                )
                .timing(60, 10, 3, 15)
                .after_healthy("warp"),
            svc("warp-monitor", "curlimages/curl:8.10.1")
                .entrypoint(&["/bin/sh", "-c"])
                .cmd(&[&format!(
                    "while true; do curl -fsS --max-time 10 {TRACE} > /tmp/trace.new && mv /tmp/trace.new /tmp/trace || rm -f /tmp/trace; sleep 30; done"
                )])
                .warp()
                .health_shell("grep -qE 'warp=(on|plus)' /tmp/trace")
                .timing(30, 5, 3, 45)
                .after_healthy("warp-nat-gateway"),
        ],
    )
}
