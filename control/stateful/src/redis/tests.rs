//! Unit tests of the majority rule, the config and the secrets.

use std::net::SocketAddr;

use super::*;

fn a(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

use SentinelAnswer::{Failed, Master, Unknown};

#[test]
fn majority_of_configured_sentinels() {
    assert_eq!(majority(1), 1);
    assert_eq!(majority(2), 2);
    assert_eq!(majority(3), 2);
    assert_eq!(majority(4), 3);
    assert_eq!(majority(5), 3);
}

#[test]
fn agreement_needs_a_majority_of_configured_not_of_answers() {
    let ok = agree(3, &[Master(a(1)), Master(a(1)), Failed]);
    assert_eq!((ok.master, ok.verdict, ok.reason), (Some(a(1)), Verdict::Ok, None));
    // Two of two answering is not a majority of five.
    let few = agree(5, &[Master(a(1)), Master(a(1)), Failed, Failed, Failed]);
    assert_eq!((few.master, few.verdict), (None, Verdict::NoQuorum));
    assert!(few.reason.as_deref().unwrap_or("").contains("3 must agree"), "{few:?}");
    let one = agree(3, &[Master(a(1)), Failed, Failed]);
    assert_eq!((one.master, one.verdict), (None, Verdict::NoQuorum));
}

#[test]
fn agreement_outvotes_a_liar_and_reports_splits() {
    let outvoted = agree(3, &[Master(a(1)), Master(a(2)), Master(a(1))]);
    assert_eq!((outvoted.master, outvoted.verdict), (Some(a(1)), Verdict::Ok));
    let split = agree(3, &[Master(a(1)), Master(a(2)), Failed]);
    assert_eq!((split.master, split.verdict), (None, Verdict::Split));
    let reason = split.reason.unwrap_or_default();
    assert!(reason.contains("127.0.0.1:1 (1)") && reason.contains("127.0.0.1:2 (1)"), "{reason}");
    let three_ways = agree(3, &[Master(a(1)), Master(a(2)), Master(a(3))]);
    assert_eq!(three_ways.verdict, Verdict::Split);
}

#[test]
fn agreement_without_answers_or_knowledge() {
    assert_eq!(agree(3, &[Failed, Failed, Failed]).verdict, Verdict::Unreachable);
    let nil = agree(3, &[Unknown, Unknown, Unknown]);
    assert_eq!((nil.master, nil.verdict), (None, Verdict::NoQuorum));
    assert!(nil.reason.unwrap_or_default().contains("none knows"));
    // A nil answer is not a vote for anyone.
    let half = agree(3, &[Master(a(1)), Unknown, Unknown]);
    assert_eq!((half.master, half.verdict), (None, Verdict::NoQuorum));
    assert_eq!(agree(3, &[Master(a(1)), Unknown, Master(a(1))]).master, Some(a(1)));
}

#[test]
fn verdict_serializes_snake_case() {
    for v in [
        Verdict::Ok,
        Verdict::NoQuorum,
        Verdict::Split,
        Verdict::MasterDown,
        Verdict::NotMaster,
        Verdict::Unreachable,
        Verdict::Starting,
    ] {
        assert_eq!(serde_json::to_value(v).ok(), Some(serde_json::Value::String(v.as_str().into())));
    }
}

fn group() -> RedisGroup {
    RedisGroup::new("cache", "mymaster", vec!["127.0.0.1:26379".into(), "127.0.0.1:26380".into(), "s3:26381".into()])
}

#[test]
fn a_plain_group_is_valid_and_defaults_apply() {
    assert_eq!(group().validate(), vec![]);
    let parsed: RedisGroup = toml::from_str(
        r#"
        name = "cache"
        master_name = "mymaster"
        sentinels = ["127.0.0.1:26379", "127.0.0.1:26380", "s3:26381"]
        "#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed, group());
    assert_eq!(parsed.poll_interval_ms, 1000);
    assert_eq!(parsed.timeout_ms, 500);
    assert_eq!(parsed.down_after_ms, 5000);
    assert_eq!(parsed.failover_timeout_ms, 60000);
    assert_eq!(parsed.monitor_quorum(), 2);
}

#[test]
fn unknown_keys_are_refused() {
    let err = toml::from_str::<RedisGroup>(
        "name = \"c\"\nmaster_name = \"m\"\nsentinels = [\"127.0.0.1:1\"]\nsentinel = \"x\"\n",
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("unknown field `sentinel`"), "{err}");
}

#[test]
fn validation_names_every_bad_key() {
    let mut g = group();
    g.name = "bad name".into();
    g.master_name = String::new();
    g.sentinels.push("nope".into());
    g.sentinels.push("127.0.0.1:26379".into());
    g.password_file = Some("/p".into());
    g.password_env = Some("P".into());
    g.tls_ca_file = Some("/ca.pem".into());
    g.timeout_ms = 0;
    g.replicas = vec!["127.0.0.1:6380".into()];
    g.quorum = Some(9);
    g.down_after_ms = 0;
    let keys: Vec<String> = g.validate().into_iter().map(|(k, _)| k).collect();
    for key in [
        "name",
        "master_name",
        "sentinels[3]",
        "sentinels[4]",
        "password_env",
        "tls_ca_file",
        "timeout_ms",
        "replicas",
        "quorum",
        "down_after_ms",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} not reported in {keys:?}");
    }
    let mut g = group();
    g.master = Some("127.0.0.1:6379".into());
    g.replicas = vec!["127.0.0.1:6380".into(), "127.0.0.1:6379".into(), "127.0.0.1:6380".into(), "x".into()];
    let keys: Vec<String> = g.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["replicas[1]", "replicas[2]", "replicas[3]"]);
    g.replicas.clear();
    g.master = Some("127.0.0.1".into());
    assert_eq!(g.validate().len(), 1);
}

#[test]
fn host_port_parsing() {
    assert_eq!(parse_host_port("127.0.0.1:6379"), Ok(("127.0.0.1".into(), 6379)));
    assert_eq!(parse_host_port("[::1]:6379"), Ok(("::1".into(), 6379)));
    assert_eq!(parse_host_port("redis-a:6379"), Ok(("redis-a".into(), 6379)));
    for bad in ["", "x", ":1", "h:0", "h:99999", "::1:6379", "a b:1"] {
        assert!(parse_host_port(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn secrets_load_from_file_or_env_and_never_show() {
    let dir = std::env::temp_dir().join(format!("constellation-redis-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let file = dir.join("pw");
    std::fs::write(&file, "s3cret\n").unwrap_or_else(|e| panic!("{e}"));
    let secret = load_secret(Some(&file), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(secret.as_ref().map(Secret::expose), Some("s3cret"));
    assert_eq!(format!("{secret:?}"), "Some(<redacted>)");
    let missing = dir.join("missing");
    let err = load_secret(Some(&missing), None).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    let var = "CONSTELLATION_REDIS_TEST_UNSET_VARIABLE";
    let err = load_secret(None, Some(var)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains(var), "{err}");
    std::fs::write(&file, "\n").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(load_secret(Some(&file), None), Err(RedisError::EmptyPassword { .. })));
    assert!(matches!(load_secret(None, None), Ok(None)));
    let _ = std::fs::remove_dir_all(&dir);
}
