//! The engine as bad input: a socket that exists but cannot be opened, no socket, the
//! provider turned off, a required engine missing at start, and the engine going away
//! mid-run (a socket relay the test cuts): the agent keeps serving the last routes, says
//! so once, and picks up again when the engine is back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::support::*;

/// A unix-socket relay to the real engine, cut (every connection dropped, the socket
/// removed) when dropped.
struct Relay {
    path: PathBuf,
    tasks: JoinSet<()>,
}

impl Relay {
    fn start(path: &Path) -> Relay {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut engine) = UnixStream::connect("/var/run/docker.sock").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        });
        Relay { path: path.to_path_buf(), tasks }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection.
        self.tasks.abort_all();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn the_engine_going_away_keeps_the_last_routes_and_reconnects() {
    run_test(|| async {
        let guard = DockerGuard::new("loss");
        let net = guard.network("net");
        let sock_dir = Scratch::new("relay");
        let sock = sock_dir.path("docker.sock");
        let relay = Relay::start(&sock);
        let toml = docker_toml(&guard, &net, &format!("endpoint = \"{}\"\nretry_interval_ms = 200\n", sock.display()));
        let agent = Agent::start("", &toml).await;
        let labels = |host: &str| {
            vec![
                "traefik.enable=true".to_string(),
                format!("traefik.http.routers.{host}.rule=Host(`{host}.test`)"),
                "traefik.http.services.x.loadbalancer.server.port=8000".to_string(),
            ]
        };
        let one = labels("one");
        let a = web_container(&guard, "a", &net, &one.iter().map(String::as_str).collect::<Vec<_>>(), "one");
        guard.wait_health(&a, "healthy", Duration::from_secs(15));
        eventually("routed through the relay", Duration::from_secs(3), || async {
            let r = agent.get("one.test", "/").await;
            if r.status == 200 {
                Ok(())
            } else {
                Err(r.text())
            }
        })
        .await;

        // The engine goes away: the route stays, status says so, the log says it once.
        drop(relay);
        eventually("status shows the engine lost", Duration::from_secs(3), || async {
            let s = agent.status().await;
            if s["docker"]["connected"] == false {
                Ok(())
            } else {
                Err(s["docker"].to_string())
            }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await; // ~10 failed reconnects
        for _ in 0..5 {
            let r = agent.get("one.test", "/").await;
            assert_eq!((r.status, r.text().trim()), (200, "one"), "the last routes stay");
        }
        let s = agent.status().await;
        assert!(s["docker"]["last_error"].as_str().unwrap_or("").contains("docker.sock"), "{}", s["docker"]);
        assert_eq!(agent.metric("constellation_docker_connected", &[]).await, 0.0);
        let log = agent.log();
        assert_eq!(log.matches("lost the Docker engine").count(), 1, "{log}");
        assert!(log.matches("Docker engine unreachable").count() <= 1, "logged once: {log}");

        // Back: a full relist picks up what changed meanwhile.
        let two = labels("two");
        let b = web_container(&guard, "b", &net, &two.iter().map(String::as_str).collect::<Vec<_>>(), "two");
        guard.wait_health(&b, "healthy", Duration::from_secs(15));
        let _relay = Relay::start(&sock);
        eventually("reconnected, and the new container routed", Duration::from_secs(5), || async {
            let r = agent.get("two.test", "/").await;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.text()))
            }
        })
        .await;
        assert!(agent.log().contains("Docker engine reachable again"));
        assert!(agent.metric("constellation_docker_relists_total", &["reason=\"connect\""]).await >= 2.0);
    });
}

#[test]
fn an_engine_that_cannot_be_opened_is_a_warning_unless_required() {
    run_test(|| async {
        let dir = Scratch::new("nosock");
        // Exists, but is no socket: what an agent without access to the engine sees.
        let not_socket = dir.write("docker.sock", "");
        let b = Backend::start("b", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let files_route = routes("app", "Host(`app.test`)", &[b.url()], "");
        let toml = format!("[docker]\nendpoint = \"{}\"\nretry_interval_ms = 100\n", not_socket.display());
        let agent = Agent::start(&files_route, &toml).await;
        assert_eq!(agent.get("app.test", "/").await.status, 200, "file routes are served");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log = agent.log();
        assert_eq!(log.matches("Docker engine unreachable").count(), 1, "logged once, retried: {log}");
        let s = agent.status().await;
        assert_eq!(s["docker"]["connected"], false);
        drop(agent);

        // No socket at all and nothing said: the provider is off.
        let missing = dir.path("missing.sock");
        let agent = Agent::start(&files_route, &format!("[docker]\nendpoint = \"{}\"\n", missing.display())).await;
        assert!(agent.status().await["docker"].is_null());
        drop(agent);
        // Turned off.
        let agent = Agent::start(&files_route, "[docker]\nenabled = false\n").await;
        assert!(agent.status().await["docker"].is_null());
        drop(agent);

        // Required but missing: the agent refuses to start, saying why.
        dir.write("routes.yaml", &files_route);
        dir.write(
            "agent.toml",
            &format!(
                "[admin]\naddress = \"127.0.0.1:{}\"\n[entrypoints.web]\naddress = \"127.0.0.1:{}\"\n[routes]\nfiles = [\"routes.yaml\"]\n\
                 [docker]\nenabled = true\nendpoint = \"{}\"\n",
                free_port(),
                free_port(),
                missing.display()
            ),
        );
        let (code, _, err) = run(&["agent", "-c", "agent.toml"], &dir.0);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("[docker] enabled = true") && err.contains("missing.sock"), "{err}");
    });
}
