//! A Redis group behind the route `cache`: writes through the route land on the master;
//! when the master is killed and the sentinels fail over, the route follows within 2 s
//! of the sentinels naming the new master, no write ever reaches a replica (no
//! `READONLY` error through the route), and a client kept on the old master is
//! disconnected. Without a sentinel quorum the route is withdrawn (connections closed).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

fn group_toml(fleet: &RedisFleet, port: u16) -> String {
    let sentinels: Vec<String> = fleet.sentinel_addrs().iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[entrypoints.redis]\naddress = \"127.0.0.1:{port}\"\n[[stateful.redis]]\nname = \"cache\"\nmaster_name = \"{}\"\nsentinels = [{}]\nentrypoint = \"redis\"\npoll_interval_ms = 500\n",
        fleet.spec().master_name,
        sentinels.join(", ")
    )
}

async fn primary(agent: &Agent) -> Option<String> {
    let st = agent.status().await;
    st["stateful"].as_array()?.iter().find(|g| g["name"] == "cache")?["primary"].as_str().map(str::to_string)
}

/// What the writer saw.
#[derive(Default)]
struct Writes {
    ok: AtomicU64,
    readonly: AtomicU64,
    other_errors: Mutex<Vec<String>>,
    last_key: AtomicU64,
}

/// Writes `SET k<i> <i>` through `entry` until `stop`, reconnecting after an error (a
/// client's own reconnect: every failed command is recorded, none is resent).
fn writer(entry: SocketAddr, stop: Arc<AtomicBool>, seen: Arc<Writes>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let client = ::redis::Client::open(format!("redis://{entry}/")).unwrap();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = con.set_read_timeout(Some(Duration::from_secs(2)));
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let r: ::redis::RedisResult<()> = ::redis::cmd("SET").arg(format!("k{i}")).arg(i).query(&mut con);
                match r {
                    Ok(()) => {
                        seen.ok.fetch_add(1, Ordering::Relaxed);
                        seen.last_key.store(i, Ordering::Relaxed);
                    }
                    Err(e) if e.code() == Some("READONLY") => {
                        seen.readonly.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        seen.other_errors.lock().unwrap().push(e.to_string());
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    })
}

#[test]
fn the_route_follows_the_master_through_a_failover_and_never_reaches_a_replica() {
    run_test(|| async {
        let mut fleet = RedisFleet::prewired(3, 3).await;
        let port = free_port();
        let agent = Agent::start("{}\n", &group_toml(&fleet, port)).await;
        let entry = SocketAddr::from(([127, 0, 0, 1], port));
        let master = fleet.server_addr(0);
        wait_for("route at the master", Duration::from_secs(10), || async {
            primary(&agent).await.as_deref() == Some(master.as_str())
        })
        .await;

        tracing::info!("phase 1: writes through the route land on the master");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Writes::default());
        let w = writer(entry, stop.clone(), seen.clone());
        wait_for("writes flowing", Duration::from_secs(5), || async { seen.ok.load(Ordering::Relaxed) >= 50 }).await;
        let k = seen.last_key.load(Ordering::Relaxed);
        assert_eq!(fleet.server_cli(0, &["GET", &format!("k{k}")]).await.trim(), k.to_string());
        // A client that stays connected across the failover.
        let kept = ::redis::Client::open(format!("redis://{entry}/")).unwrap();
        let mut kept = kept.get_connection().unwrap();
        let _: () = ::redis::cmd("SET").arg("kept").arg("1").query(&mut kept).unwrap();

        tracing::info!("phase 2: SIGKILL the master; the sentinels fail over");
        fleet.kill_server(0);
        let killed = Instant::now();
        let mut announced = None;
        while killed.elapsed() < Duration::from_secs(30) {
            if let Some(m) = fleet.sentinel_says(1).await.filter(|m| *m != master) {
                announced = Some((m, Instant::now()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (new_master, at) = announced.expect("the sentinels elected a new master");
        eventually("route at the new master", Duration::from_secs(5), || async {
            match primary(&agent).await {
                Some(p) if p == new_master => Ok(()),
                other => Err(format!("route points at {other:?}")),
            }
        })
        .await;
        let lag = at.elapsed();
        eprintln!(
            "sentinels named {new_master} {} ms after the kill; the route followed {} ms later",
            at.duration_since(killed).as_millis(),
            lag.as_millis()
        );
        assert!(lag <= Duration::from_secs(2), "route followed {lag:?} after the sentinels announced");

        tracing::info!("phase 3: writes resume on the new master; the kept client was cut");
        let before = seen.ok.load(Ordering::Relaxed);
        wait_for("writes on the new master", Duration::from_secs(10), || async {
            seen.ok.load(Ordering::Relaxed) >= before + 50
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        w.join().unwrap();
        let idx = fleet.server_index(&new_master).unwrap();
        let k = seen.last_key.load(Ordering::Relaxed);
        assert_eq!(
            fleet.server_cli(idx, &["GET", &format!("k{k}")]).await.trim(),
            k.to_string(),
            "the last write is on the new master"
        );
        assert_eq!(seen.readonly.load(Ordering::Relaxed), 0, "a write reached a replica");
        let errors = seen.other_errors.lock().unwrap().clone();
        assert!(errors.len() <= 5, "writer errors: {errors:?}");
        let r: ::redis::RedisResult<String> = ::redis::cmd("PING").query(&mut kept);
        assert!(r.is_err(), "a client of the old master kept its connection: {r:?}");
        let st = agent.status().await;
        let g = &st["stateful"][0];
        assert_eq!(g["verdict"], "ok", "{g}");
        assert!(g["detail"]["switches"].as_u64().unwrap_or(0) >= 1, "{g}");

        tracing::info!("phase 4: two sentinels gone: no quorum, the route is withdrawn");
        fleet.kill_sentinel(0);
        fleet.kill_sentinel(2);
        wait_for("route withdrawn", Duration::from_secs(10), || async { primary(&agent).await.is_none() }).await;
        // The status names the verdict first; the table without the server follows.
        wait_for("no server behind the route", Duration::from_secs(5), || async {
            let st = agent.status().await;
            st["tcp_services"].as_array().is_some_and(|s| {
                s.iter().any(|svc| svc["name"] == "cache" && svc["servers"].as_array().is_some_and(|v| v.is_empty()))
            })
        })
        .await;
        let client = ::redis::Client::open(format!("redis://{entry}/")).unwrap();
        let refused = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .and_then(|mut c| ::redis::cmd("PING").query::<String>(&mut c));
        assert!(refused.is_err(), "a withdrawn route still served: {refused:?}");
        assert!(agent.metric("constellation_redis_withdrawn_total", &["group=\"cache\""]).await >= 1.0);
    });
}
