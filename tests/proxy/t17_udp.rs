//! UDP routers through a real agent: request/response like DNS, two clients with their
//! own sessions, weighted services, and sessions expiring after the idle timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::support::*;

async fn ask(socket: &UdpSocket, entry: SocketAddr, q: &str) -> String {
    socket.send_to(q.as_bytes(), entry).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, from) =
        tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf)).await.expect("an answer").unwrap();
    assert_eq!(from, entry, "the answer comes from the entry point");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn udp_sessions_answer_two_clients_and_expire() {
    run_test(|| async {
        let one = UdpEcho::start("one").await;
        let two = UdpEcho::start("two").await;
        let port = free_port();
        let routes = format!(
            "udp:\n  routers:\n    dns:\n      entryPoints: [dns]\n      service: both\n  services:\n    both:\n      weighted:\n        services:\n          - name: one\n            weight: 1\n          - name: two\n            weight: 1\n    one:\n      loadBalancer:\n        servers:\n          - address: \"{}\"\n    two:\n      loadBalancer:\n        servers:\n          - address: \"{}\"\n",
            one.addr, two.addr
        );
        let extra =
            format!("[entrypoints.dns]\naddress = \"127.0.0.1:{port}/udp\"\n[proxy]\nudp_session_timeout_ms = 400\n");
        let agent = Agent::start(&routes, &extra).await;
        let entry = SocketAddr::from(([127, 0, 0, 1], port));

        tracing::info!("phase 1: two clients, each its own session, each answer its own");
        let c1 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let c2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a1 = ask(&c1, entry, "q1").await;
        let a2 = ask(&c2, entry, "q2").await;
        assert!(a1.ends_with(":q1") && a2.ends_with(":q2"), "{a1} {a2}");
        assert_ne!(
            a1.split(':').next(),
            a2.split(':').next(),
            "weighted 1:1 sends the two sessions to different servers"
        );
        // A session sticks to its server.
        for i in 0..3 {
            let again = ask(&c1, entry, &format!("r{i}")).await;
            assert_eq!(again.split(':').next(), a1.split(':').next());
        }
        assert_eq!(agent.metric("constellation_udp_sessions", &["router=\"dns\""]).await, 2.0);

        tracing::info!("phase 2: idle sessions expire");
        wait_for("sessions expired", Duration::from_secs(5), || async {
            agent.metric("constellation_udp_sessions", &["router=\"dns\""]).await == 0.0
        })
        .await;
        let st = agent.status().await;
        assert_eq!(st["udp_routes"][0]["name"], "dns", "{st}");
        assert!(agent.metric("constellation_udp_datagrams_total", &["direction=\"out\""]).await >= 5.0);
    });
}
