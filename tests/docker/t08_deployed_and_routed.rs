//! The whole path an operator takes: a docker-compose stack with Traefik labels,
//! `constellation deploy` with the agent's own config, and the agent routing the deployed
//! container by its `Host` rule — then a redeploy that changes nothing, and one that
//! replaces the container, with the route following.

use std::time::Duration;

use crate::support::*;
use crate::t05_deploy::{flow, health_block, Project};

fn stack_body(p: &Project, host: &str, body: &str) -> String {
    let cmd = httpd_command(body);
    format!(
        "services:\n  web:\n    image: {img}\n    command: {cmd}\n    labels:\n      - \"traefik.enable=true\"\n      - \"traefik.http.routers.{r}.rule=Host(`{host}`)\"\n      - \"traefik.http.services.{r}.loadbalancer.server.port=8000\"\n      - \"{label}={tag}\"\n{health}",
        img = test_image(),
        cmd = flow(&cmd.iter().map(String::as_str).collect::<Vec<_>>()),
        r = p.stack,
        label = constellation_testkit::docker::TEST_LABEL,
        tag = p.guard.tag,
        health = health_block("    "),
    )
}

#[test]
fn a_deployed_compose_stack_is_routed_by_its_labels() {
    run_test(|| async {
        let p = Project::new("routed");
        let host = format!("{}.test", p.stack);
        p.compose(&stack_body(&p, &host, "first"));
        let web = p.container("web");
        // The agent runs with the same config file `deploy` reads: [docker] and [services].
        let agent_toml = std::fs::read_to_string(p.dir.path("agent.toml")).unwrap();
        let agent = Agent::start("", &agent_toml).await;

        assert_eq!(p.deploy(&["--dry-run"]), vec![format!("create {web}")]);
        assert!(p.stack_containers().is_empty(), "a dry run creates nothing");
        assert_eq!(p.deploy(&[]), vec![format!("create {web}")]);
        let (_, took) = eventually("the deployed container is routed", Duration::from_secs(3), || async {
            let r = agent.get(&host, "/").await;
            if r.status == 200 && r.text().trim() == "first" {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.text()))
            }
        })
        .await;
        tracing::info!(?took, "routed after deploy returned");
        let s = agent.status().await;
        let c =
            s["docker"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == web.as_str()).unwrap().clone();
        assert_eq!((c["health"].as_str(), c["services"][0].as_str()), (Some("healthy"), Some(p.stack.as_str())), "{c}");

        // `traefik dump` with the same file shows the container's router and server.
        let (code, dump, err) = run(&["traefik", "dump", "-c", "agent.toml"], &p.dir.0);
        assert_eq!(code, 0, "{err}");
        let doc: serde_json::Value = serde_json::from_str(&dump).unwrap();
        assert_eq!(doc["http"]["routers"][&p.stack]["rule"], format!("Host(`{host}`)"), "{dump}");
        let servers = doc["http"]["services"][&p.stack]["loadBalancer"]["servers"].as_array().unwrap().clone();
        assert_eq!(servers.len(), 1, "{dump}");
        assert!(servers[0]["url"].as_str().unwrap().ends_with(":8000"), "{dump}");

        assert_eq!(p.deploy(&[]), vec![format!("unchanged {web}")]);
        // A changed definition replaces the container; the route follows it.
        p.compose(&stack_body(&p, &host, "second"));
        assert_eq!(p.deploy(&["--dry-run"]), vec![format!("replace {web}")]);
        assert_eq!(p.deploy(&[]), vec![format!("replace {web}")]);
        eventually("the replacement is routed", Duration::from_secs(3), || async {
            let r = agent.get(&host, "/").await;
            if r.status == 200 && r.text().trim() == "second" {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.text()))
            }
        })
        .await;
    });
}

#[test]
fn the_built_in_catalogue_is_listed_whole() {
    let dir = Scratch::new("catalogue");
    let (code, out, err) = run(&["services", "list", "--json"], &dir.0);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 57, "{out}");
    let stacks: std::collections::BTreeSet<&str> = rows.iter().filter_map(|r| r["stack"].as_str()).collect();
    assert_eq!(stacks.len(), 11, "{stacks:?}");
    let (code, table, _) = run(&["services", "list", "--stack", "metrics"], &dir.0);
    assert_eq!(code, 0);
    assert!(table.lines().next().unwrap().contains("STACK") && table.contains("grafana"), "{table}");
    assert_eq!(table.lines().count(), 1 + 9, "{table}");
    // Secrets are files on the node: a catalogue stack whose secret is missing is a
    // configuration error naming the file, before anything is planned or touched.
    let (code, plan, err) = run(&["deploy", "--stack", "wordpress", "--dry-run"], &dir.0);
    assert_eq!(code, 78, "{plan}{err}");
    assert!(err.contains("/etc/constellation/secrets/wordpress/"), "{err}");
    assert!(plan.is_empty(), "{plan}");
}

#[test]
fn the_agents_network_is_created_even_where_the_compose_file_calls_it_external() {
    let p = Project::new("extnet");
    let fresh = format!("{}-fresh", p.stack);
    p.dir.write("agent.toml", &format!("[docker]\nnetwork = \"{fresh}\"\n\n[services]\nfiles = [\"stack.yml\"]\n"));
    let cmd = httpd_command("x");
    p.compose(&format!(
        "services:\n  web:\n    image: {img}\n    command: {cmd}\n    networks: [check]\n    labels:\n      - \"{label}={tag}\"\n\
         networks:\n  check:\n    name: {fresh}\n    external: true\n",
        img = test_image(),
        cmd = flow(&cmd.iter().map(String::as_str).collect::<Vec<_>>()),
        label = constellation_testkit::docker::TEST_LABEL,
        tag = p.guard.tag,
    ));
    assert!(docker(&["network", "inspect", &fresh]).is_err(), "the network does not exist yet");
    assert_eq!(p.deploy(&[]), vec![format!("create {}", p.container("web"))]);
    let nets = docker(&[
        "inspect",
        "--format",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        &p.container("web"),
    ])
    .unwrap();
    assert_eq!(nets.trim(), fresh);
    // Removed with the stack's other objects (deploy labels what it creates).
    let labels = docker(&["network", "inspect", "--format", "{{json .Labels}}", &fresh]).unwrap();
    assert!(labels.contains("constellation.managed"), "{labels}");
}
