//! A MongoDB replica set (the wire-protocol stand-in, driven by the real `mongodb`
//! crate inside the agents): three agents race to set up a fresh set and it is initiated
//! exactly once, under the Raft `stateful` lease; all three route `docs` to the same
//! primary; a step-down moves every route within seconds.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;

async fn primary(node: &Node) -> Option<String> {
    let st = node.status().await?;
    st["stateful"].as_array()?.iter().find(|g| g["name"] == "docs")?["primary"].as_str().map(str::to_string)
}

/// The primary all three nodes route `docs` to, once they agree on one other than `not`.
async fn agreed(fleet: &Fleet, not: Option<&str>) -> Result<String, String> {
    let mut seen = Vec::new();
    for i in 1..=3 {
        seen.push(primary(fleet.node(i)).await);
    }
    match seen.as_slice() {
        [Some(a), Some(b), Some(c)] if a == b && b == c && Some(a.as_str()) != not => Ok(a.clone()),
        other => Err(format!("{other:?}")),
    }
}

#[test]
fn three_agents_initiate_once_and_follow_a_step_down() {
    run_test(|| async {
        let standin = MongoStandin::start(3).await;
        let members: Vec<String> = standin.addrs().iter().map(|a| format!("\"{a}\"")).collect();
        let mut nodes = Vec::new();
        let mut entries = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            entries.push(SocketAddr::from(([127, 0, 0, 1], port)));
            nodes.push(NodeSpec {
                extra_toml: format!(
                    "[entrypoints.mongo]\naddress = \"127.0.0.1:{port}\"\n[[stateful.mongo]]\nname = \"docs\"\nreplica_set = \"rs0\"\nmembers = [{}]\nentrypoint = \"mongo\"\npoll_interval_ms = 200\n",
                    members.join(", ")
                ),
                ..NodeSpec::default()
            });
        }
        let mut spec = FleetSpec::new("mongo", nodes);
        spec.raft = Some(Timings::FAST);
        let mut fleet = Fleet::new(spec);
        fleet.start_all(Duration::from_secs(20)).await;

        tracing::info!("phase 1: one initiation, the same primary on every node");
        let (p, took) = eventually_or(
            "all three route docs to one primary",
            Duration::from_secs(30),
            || fleet.dump(),
            || agreed(&fleet, None),
        )
        .await;
        eprintln!("initiated once and routed by all three {} ms after start", took.as_millis());
        assert_eq!(standin.initiations(), 1, "initiated exactly once");
        assert_eq!(standin.initiate_attempts(), 1, "only the lease holder tried");
        assert_eq!(standin.addrs()[standin.primary().unwrap()].to_string(), p);

        tracing::info!("phase 2: the primary steps down; every route follows");
        standin.step_down();
        let (q, took) = eventually_or(
            "routes at the new primary",
            Duration::from_secs(10),
            || fleet.dump(),
            || agreed(&fleet, Some(&p)),
        )
        .await;
        eprintln!("all three routes followed the step-down in {} ms", took.as_millis());
        assert!(took <= Duration::from_secs(5), "followed after {took:?}");
        assert_eq!(standin.initiations(), 1);
        // The real driver, through the route of each node, talks to a writable primary.
        for entry in &entries {
            let uri = format!("mongodb://{entry}/?directConnection=true&serverSelectionTimeoutMS=3000");
            let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
            let hello = client.database("admin").run_command(mongodb::bson::doc! { "hello": 1 }).await.unwrap();
            assert_eq!(hello.get_bool("isWritablePrimary").ok(), Some(true), "{entry}: {hello}");
            assert_eq!(hello.get_str("me").ok(), Some(q.as_str()), "{entry} reaches the new primary");
        }
    });
}
