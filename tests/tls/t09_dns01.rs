//! dns-01 end to end: the ACME orderer writes its TXT records through the DNS
//! controller's Cloudflare client (to the fake Cloudflare API), the fake copies them to
//! challtestsrv, and Pebble validates a wildcard certificate by resolving them there.

use std::time::Duration;

use crate::support::*;
use crate::t08_pebble::one_certificate_everywhere;

const TOKEN: &str = "cf-test-token-0123456789";

#[test]
fn a_wildcard_certificate_is_ordered_through_cloudflare_txt_records_and_served_by_every_node() {
    run_test(|| async {
        let backend = Backend::start("app", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let pebble = Pebble::start(PebbleSpec::default()).await;
        let fake = cloudflare::FakeCloudflare::start(TOKEN).await.unwrap();
        fake.add_zone("example.test");
        fake.mirror_txt_to(&pebble.challtest_url());
        let ca = pebble.ca_file().display().to_string();
        let mut secure = Vec::new();
        let mut nodes = Vec::new();
        for _ in 1..=3 {
            let (ep, addr) = websecure("");
            secure.push(addr);
            let extra = format!(
                "{ep}[dns]\nzone = \"example.test\"\napi_url = \"{}\"\napi_token_file = \"cf.token\"\n\
                 [acme]\ndirectory = \"{}\"\nca_file = \"{ca}\"\nchallenge = \"dns-01\"\nretry_min_ms = 500\nretry_max_ms = 4000\n",
                fake.api_url(),
                pebble.directory_url()
            );
            nodes.push(NodeSpec { extra_toml: extra, route_files: vec!["routes.yaml".into()], ..NodeSpec::default() });
        }
        let mut spec = FleetSpec::new("dns01", nodes);
        spec.raft = Some(Timings::FAST);
        spec.roles = vec!["lb".into(), "dns".into()];
        let mut fleet = Fleet::new(spec);
        fleet.dir.write("cf.token", &format!("{TOKEN}\n"));
        let routes = tls_routes(
            &[(
                "app",
                "Host(`app.w.example.test`)",
                Some("{certResolver: default, domains: [{main: \"*.w.example.test\", sans: [w.example.test]}]}"),
            )],
            &backend.url(),
            "",
        );
        fleet.dir.write("routes.yaml", &routes);
        fleet.start_all(Duration::from_secs(20)).await;
        let root = pebble.issuing_root_pem().await;

        let (first, took) = eventually_or(
            "all three serve app.w.example.test with the wildcard certificate",
            Duration::from_secs(60),
            || format!("{}\npebble log:\n{}", fleet.dump(), pebble.log()),
            || one_certificate_everywhere(&secure, "app.w.example.test", &root),
        )
        .await;
        eprintln!("wildcard issued through dns-01 and served by all three {took:?} after start");
        assert!(!first.is_empty());

        // The challenge records went through Cloudflare (two values on one name: the
        // wildcard's and the base name's), and are removed once the order is done.
        let created = fake
            .log()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/dns_records") && r.status == 200)
            .count();
        assert!(created >= 2, "TXT records created through the fake Cloudflare API: {created}");
        eventually("challenge TXT records removed", Duration::from_secs(20), || async {
            let left = fake.find("_acme-challenge.w.example.test", "TXT");
            left.is_empty().then_some(()).ok_or_else(|| format!("{left:?}"))
        })
        .await;
        // The DNS controller's own records never carry the challenge comment.
        for r in fake.records() {
            if r["type"] == "TXT" {
                panic!("a TXT record is left: {r}");
            }
        }
    });
}
