//! WARP gateways with the real engine: a `network` gateway probed from short-lived
//! containers on that network (breaking the network's route to the trace server is the
//! fault), and a gateway container restarted when its egress stays down, up to the cap.

use std::time::Duration;

use crate::support::warp::TraceServer;
use crate::support::*;

fn started_at(name: &str) -> String {
    docker(&["inspect", "--format", "{{.State.StartedAt}}", name]).unwrap()
}

/// The first gateway in the agent's status.
async fn gateway(agent: &Agent) -> serde_json::Value {
    agent.status().await["warp"]["gateways"][0].clone()
}

/// An iptables rule removed on drop.
struct Rule(Vec<String>);

impl Rule {
    fn insert(args: &[&str]) -> Rule {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = std::process::Command::new("iptables").arg("-I").args(&args).output().unwrap();
        assert!(out.status.success(), "iptables -I {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Rule(args)
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables").arg("-D").args(&self.0).output();
    }
}

#[test]
fn a_network_gateway_is_probed_from_a_container_on_that_network() {
    run_test(|| async {
        let guard = DockerGuard::new("warpnet");
        let net = guard.network("nat");
        let gw = docker(&["network", "inspect", "--format", "{{(index .IPAM.Config 0).Gateway}}", &net]).unwrap();
        let subnet = docker(&["network", "inspect", "--format", "{{(index .IPAM.Config 0).Subnet}}", &net]).unwrap();
        let trace = TraceServer::start_on(gw.trim().parse().unwrap(), 0, "203.0.113.9").await;
        let port = trace.addr.port().to_string();
        let url = format!("http://{}:{port}/cdn-cgi/trace", gw.trim());
        let image = test_image();
        // Busybox's own `wget -T` crashes in this static build: its `timeout` bounds it.
        let extra = format!(
            "{}\n[[warp.gateways]]\nname = \"nat\"\nnetwork = \"{net}\"\nprobe_image = \"{image}\"\nprobe_command = [\"/bin/busybox\", \"timeout\", \"{{timeout_s}}\", \"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"-\", \"{{url}}\"]\ntrace_url = \"{url}\"\ninterval_ms = 1000\nrise = 1\nfall = 1\n",
            docker_toml(&guard, &net, "")
        );
        let agent = Agent::start("", &extra).await;
        let (_, up_after) = eventually("the network gateway up", Duration::from_secs(20), || async {
            let g = gateway(&agent).await;
            if g["up"] == true && g["ip"] == "203.0.113.9" {
                Ok(())
            } else {
                Err(format!("{g:#}"))
            }
        })
        .await;
        assert_eq!(gateway(&agent).await["via"], format!("network {net}"));

        // Break the network's route to the trace page: the probe container cannot connect.
        let rule = Rule::insert(&["INPUT", "-s", subnet.trim(), "-p", "tcp", "--dport", &port, "-j", "REJECT"]);
        eventually("the network gateway down", Duration::from_secs(20), || async {
            let g = gateway(&agent).await;
            let err = g["last_error"].as_str().unwrap_or_default().to_string();
            if g["up"] == false && err.starts_with(&format!("through network {net}: probe exited")) {
                Ok(())
            } else {
                Err(format!("{g:#}"))
            }
        })
        .await;
        drop(rule);
        eventually("the network gateway up again", Duration::from_secs(20), || async {
            let g = gateway(&agent).await;
            if g["up"] == true {
                Ok(())
            } else {
                Err(format!("{g:#}"))
            }
        })
        .await;
        // Every probe container was removed.
        let left = docker(&["ps", "-aq", "--filter", "label=constellation.warp.probe=nat"]).unwrap();
        assert!(left.trim().is_empty() || left.lines().count() <= 1, "probe containers left: {left}");
        let probes = agent.metric("constellation_warp_probes_total", &["gateway=\"nat\"", "result=\"ok\""]).await;
        eprintln!("network gateway: up {up_after:?} after start; {probes} good probes through containers");
    });
}

#[test]
fn a_gateway_container_that_stays_down_is_restarted_up_to_the_cap() {
    run_test(|| async {
        let guard = DockerGuard::new("warprestart");
        let net = guard.network("net");
        let name = guard.name("warp-client");
        let image = test_image();
        guard.run(&["--name", &name, "--network", &net, "--stop-timeout", "1", image, "/bin/busybox", "sleep", "3600"]);
        let first_start = started_at(&name);
        let extra = format!(
            "{}\n[[warp.gateways]]\nname = \"warp\"\nsocks5 = \"{}\"\ninterval_ms = 200\nrise = 1\nfall = 1\ncontainer = \"{name}\"\nrestart = true\nrestart_after_ms = 300\nmax_restarts_per_hour = 2\n",
            docker_toml(&guard, &net, ""),
            dead_addr()
        );
        let agent = Agent::start("", &extra).await;
        eventually("two restarts, then the cap", Duration::from_secs(30), || async {
            let restarted = agent
                .metric("constellation_warp_gateway_restarts_total", &["gateway=\"warp\"", "result=\"restarted\""])
                .await;
            let capped = agent
                .metric("constellation_warp_gateway_restarts_total", &["gateway=\"warp\"", "result=\"capped\""])
                .await;
            if restarted == 2.0 && capped == 1.0 {
                Ok(())
            } else {
                Err(format!("restarted {restarted}, capped {capped}"))
            }
        })
        .await;
        assert_ne!(started_at(&name), first_start, "the engine restarted it");
        let after_cap = started_at(&name);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(started_at(&name), after_cap, "no restart past the cap");
        let g = gateway(&agent).await;
        assert_eq!(g["restarts_last_hour"], 2, "{g:#}");
        assert!(g["restart_note"].as_str().unwrap().starts_with("restart cap reached: 2"), "{g:#}");
        // The container's own state is shown beside the verdict (a signal, not the verdict).
        assert_eq!((g["container"]["state"].as_str(), g["up"].as_bool()), (Some("running"), Some(false)), "{g:#}");
        assert_eq!(
            agent
                .metric("constellation_warp_gateway_restarts_total", &["gateway=\"warp\"", "result=\"restarted\""])
                .await,
            2.0
        );
        assert!(agent.log().contains("restart cap reached"), "logged once");
    });
}
