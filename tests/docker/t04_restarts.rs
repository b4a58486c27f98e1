//! deunhealth: a container labelled `deunhealth.restart.on.unhealthy=true` is restarted
//! when it turns unhealthy, with a backoff, at most `restart_cap_per_hour` times an
//! hour; other unhealthy containers are left alone.

use std::time::Duration;

use crate::support::*;

fn started_at(name: &str) -> String {
    docker(&["inspect", "--format", "{{.State.StartedAt}}", name]).unwrap()
}

/// A container whose health check always fails.
fn sick(guard: &DockerGuard, name: &str, net: &str, restart_label: bool) -> String {
    let name = guard.name(name);
    let mut args = vec![
        "--name",
        &name,
        "--network",
        net,
        "--health-cmd",
        "/bin/busybox false",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "--stop-timeout",
        "1",
    ];
    if restart_label {
        args.extend(["--label", "deunhealth.restart.on.unhealthy=true"]);
    }
    let image = test_image();
    args.extend([image, "/bin/busybox", "sleep", "3600"]);
    guard.run(&args);
    name
}

#[test]
fn unhealthy_labelled_containers_are_restarted_up_to_the_cap() {
    run_test(|| async {
        let guard = DockerGuard::new("restart");
        let net = guard.network("net");
        let agent =
            Agent::start("", &docker_toml(&guard, &net, "restart_backoff_ms = 300\nrestart_cap_per_hour = 2\n")).await;
        let labelled = sick(&guard, "labelled", &net, true);
        let unlabelled = sick(&guard, "unlabelled", &net, false);
        let first_start = started_at(&labelled);
        let other_start = started_at(&unlabelled);
        let (_, took) = eventually("two restarts, then the cap", Duration::from_secs(30), || async {
            let restarted = agent.metric("constellation_docker_restarts_total", &["result=\"restarted\""]).await;
            let capped = agent.metric("constellation_docker_restarts_total", &["result=\"capped\""]).await;
            if restarted == 2.0 && capped >= 1.0 {
                Ok(())
            } else {
                Err(format!("restarted {restarted}, capped {capped}"))
            }
        })
        .await;
        tracing::info!(?took, "capped");
        assert_ne!(started_at(&labelled), first_start, "the engine restarted it");
        // Capped: it stays unhealthy and is not restarted again.
        let after_cap = started_at(&labelled);
        guard.wait_health(&labelled, "unhealthy", Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(started_at(&labelled), after_cap);
        assert_eq!(agent.metric("constellation_docker_restarts_total", &["result=\"restarted\""]).await, 2.0);
        // Never restarted without the label.
        assert_eq!(guard.health(&unlabelled), "unhealthy");
        assert_eq!(started_at(&unlabelled), other_start);
        // Visible: status counts the restarts, the log says why, once for the cap.
        let s = agent.status().await;
        let c = s["docker"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == labelled.as_str())
            .unwrap()
            .clone();
        assert_eq!(c["restarts"], 2, "{c}");
        let log = agent.log();
        assert_eq!(log.matches("restarted an unhealthy container").count(), 2, "{log}");
        assert_eq!(log.matches("restart cap for this hour reached").count(), 1, "{log}");
    });
}
