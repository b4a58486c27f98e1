//! End-to-end tests against the real Docker engine: labelled containers routed through
//! the proxy, health and restarts, two agents sharing one engine, the catalogue, and
//! `deploy`. Every container and network a test creates carries a test label and is
//! removed at the end (`constellation_testkit::docker::DockerGuard`).

#![allow(clippy::unwrap_used)]

mod t01_routing;
mod t02_labels;
mod t03_two_nodes;
mod t04_restarts;
mod t05_deploy;
mod t06_compose;
mod t07_engine_loss;
mod t08_deployed_and_routed;
mod t09_warp;

/// The shared kit, plus what only this suite needs.
mod support {
    pub use constellation_testkit::docker::{docker, httpd_command, test_image, DockerGuard, HTTPD_HEALTH};
    pub use constellation_testkit::*;

    /// `[docker]` for an agent that watches only `guard`'s containers on `network`.
    pub fn docker_toml(guard: &DockerGuard, network: &str, extra: &str) -> String {
        format!(
            "[docker]\nnetwork = \"{network}\"\nconstraints = \"Label(`{}`, `{}`)\"\n{extra}\n",
            constellation_testkit::docker::TEST_LABEL,
            guard.tag
        )
    }

    /// Starts a busybox web container on `network` answering `body`, with a 1 s health
    /// check on `/health` and `labels` (key=value); returns its name.
    pub fn web_container(guard: &DockerGuard, name: &str, network: &str, labels: &[&str], body: &str) -> String {
        let name = guard.name(name);
        let health = HTTPD_HEALTH.join(" ");
        let mut args: Vec<String> = vec![
            "--name".into(),
            name.clone(),
            "--network".into(),
            network.into(),
            "--health-cmd".into(),
            health,
            "--health-interval".into(),
            "1s".into(),
            "--health-retries".into(),
            "1".into(),
            "--health-timeout".into(),
            "1s".into(),
        ];
        for l in labels {
            args.push("--label".into());
            args.push((*l).to_string());
        }
        args.push(test_image().to_string());
        args.extend(httpd_command(body));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        guard.run(&refs);
        name
    }

    /// A client GETting `host` through `web` every 10 ms on fresh connections (no
    /// resends), counting successes and keeping every failure, until [`Load::finish`].
    pub struct Load {
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        task: tokio::task::JoinHandle<(u64, Vec<Failure>)>,
    }

    /// One failed request of a [`Load`]: when it started and what the client saw.
    #[derive(Debug)]
    pub struct Failure {
        pub started: std::time::Instant,
        /// The status line and headers arrived, then the body stopped short.
        pub body_cut: bool,
        /// What the client said (shown through `Debug` in assertion messages).
        #[allow(dead_code)]
        pub text: String,
    }

    impl Load {
        /// Starts the client.
        pub fn start(web: std::net::SocketAddr, host: &str) -> Load {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (flag, host) = (stop.clone(), host.to_string());
            let task = tokio::spawn(async move {
                let (mut ok, mut errors) = (0, Vec::new());
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = std::time::Instant::now();
                    match fetch(web, "GET", &host, "/", &[], &[]).await {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => errors.push(Failure {
                            started,
                            body_cut: false,
                            text: format!("{} {}", r.status, r.text()),
                        }),
                        Err(e) => {
                            let text = e.to_string();
                            errors.push(Failure { started, body_cut: text.contains("error reading a body"), text })
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                (ok, errors)
            });
            Load { stop, task }
        }

        /// Stops the client; the successes and the failures.
        pub async fn finish(self) -> (u64, Vec<Failure>) {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            self.task.await.unwrap()
        }

        /// Stops the client; the successes, and the failures other than the one a
        /// process killed at `killed` may cause: the response it was writing when it
        /// died, whose head the proxy had already passed on (no proxy can retry that;
        /// it can only cut the client's connection, as it did). The client asks one
        /// request at a time, so at most one can be caught like this.
        pub async fn finish_around_kill(self, killed: std::time::Instant) -> (u64, Vec<Failure>) {
            let (ok, mut errors) = self.finish().await;
            let caught = errors.iter().position(|f| {
                f.body_cut
                    && f.started <= killed + std::time::Duration::from_secs(1)
                    && killed <= f.started + std::time::Duration::from_secs(2)
            });
            if let Some(i) = caught {
                let f = errors.remove(i);
                tracing::info!(?f, "a response cut by the kill");
            }
            (ok, errors)
        }
    }

    /// Makes a [`web_container`]'s health check fail (`false`) or pass again.
    pub fn set_healthy(container: &str, healthy: bool) {
        let cmd = if healthy { "echo ok > /www/health" } else { "rm -f /www/health" };
        docker(&["exec", container, "/bin/busybox", "sh", "-c", cmd]).unwrap();
    }
}
