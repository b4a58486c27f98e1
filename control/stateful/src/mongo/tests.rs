//! Unit tests of the mongo follower's pure parts: primary choice, validation, configs.

use mongodb::bson::{doc, oid::ObjectId, Bson};

use super::follower::{initial_config, reconfigured};
use super::*;

fn member(set: &str, writable: bool) -> Option<HelloView> {
    Some(HelloView { set_name: Some(set.to_string()), writable, secondary: !writable, ..HelloView::default() })
}

fn with_election(mut v: Option<HelloView>, term: u8, version: i64) -> Option<HelloView> {
    if let Some(v) = v.as_mut() {
        let mut id = [0u8; 12];
        id[11] = term;
        v.election_id = Some(id);
        v.set_version = Some(version);
    }
    v
}

fn set() -> MongoSet {
    toml::from_str(
        r#"
        name = "orders-db"
        replica_set = "rs0"
        members = ["10.0.0.1:27017", "10.0.0.2:27017", "mongo-3.internal:27017"]
        "#,
    )
    .unwrap_or_else(|e| panic!("example set parses: {e}"))
}

#[test]
fn one_writable_member_of_our_set_is_the_primary() {
    let answers = [member("rs0", false), None, member("rs0", true)];
    assert_eq!(choose_primary("rs0", &answers), PrimaryChoice::One(2));
}

#[test]
fn no_writable_member_means_no_primary() {
    assert_eq!(choose_primary("rs0", &[member("rs0", false), None, member("rs0", false)]), PrimaryChoice::None);
    assert_eq!(choose_primary("rs0", &[None, None]), PrimaryChoice::None);
}

#[test]
fn a_writable_member_of_another_set_or_without_config_is_not_our_primary() {
    let mut standalone = HelloView { writable: true, ..HelloView::default() };
    assert_eq!(choose_primary("rs0", &[Some(standalone.clone()), member("rs1", true)]), PrimaryChoice::None);
    standalone.set_name = Some("rs0".into());
    assert_eq!(choose_primary("rs0", &[Some(standalone), member("rs1", true)]), PrimaryChoice::One(0));
}

#[test]
fn two_claims_are_settled_by_election_id_then_set_version() {
    let old = with_election(member("rs0", true), 3, 5);
    let new = with_election(member("rs0", true), 4, 5);
    assert_eq!(choose_primary("rs0", &[old.clone(), new.clone()]), PrimaryChoice::One(1));
    assert_eq!(choose_primary("rs0", &[new.clone(), old]), PrimaryChoice::One(0));
    // Same election id: the higher config version wins.
    let newer_config = with_election(member("rs0", true), 4, 6);
    assert_eq!(choose_primary("rs0", &[newer_config, new.clone()]), PrimaryChoice::One(0));
    // A claim with an election id beats one without.
    assert_eq!(choose_primary("rs0", &[member("rs0", true), new]), PrimaryChoice::One(1));
}

#[test]
fn indistinguishable_claims_are_a_split() {
    assert_eq!(
        choose_primary("rs0", &[member("rs0", true), None, member("rs0", true)]),
        PrimaryChoice::Split(vec![0, 2])
    );
    let a = with_election(member("rs0", true), 4, 5);
    assert_eq!(choose_primary("rs0", &[a.clone(), a]), PrimaryChoice::Split(vec![0, 1]));
}

#[test]
fn hello_documents_are_read_defensively() {
    let id = ObjectId::from_bytes([0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 9]);
    let doc = doc! {
        "isWritablePrimary": true, "setName": "rs0", "setVersion": 3_i64, "electionId": id,
        "hosts": ["a:1", "b:2"], "passives": ["c:3"], "arbiters": [Bson::Int32(7)], "primary": "a:1",
    };
    let view = HelloView::from_document(&doc);
    assert!(view.writable);
    assert_eq!(view.set_name.as_deref(), Some("rs0"));
    assert_eq!(view.set_version, Some(3));
    assert_eq!(view.election_id, Some(id.bytes()));
    assert_eq!(view.hosts, vec!["a:1", "b:2", "c:3"]);
    assert_eq!(view.state("rs0"), "PRIMARY");
    assert_eq!(view.state("other"), "FOREIGN");
    // Legacy field name, mistyped fields.
    let view = HelloView::from_document(&doc! { "ismaster": true, "setName": 5, "setVersion": "x" });
    assert!(view.writable);
    assert_eq!(view.set_name, None);
    assert_eq!(view.set_version, None);
    assert_eq!(view.state("rs0"), "UNINITIATED");
}

#[test]
fn the_example_set_is_valid_and_gets_defaults() {
    let set = set();
    assert_eq!(set.validate(), Vec::<(String, String)>::new());
    assert_eq!(set.poll_interval_ms, DEFAULT_POLL_INTERVAL_MS);
    assert_eq!(set.timeout_ms, DEFAULT_TIMEOUT_MS);
    assert!(set.initiate);
    assert_eq!(set.auth_source(), "admin");
}

#[test]
fn unknown_fields_are_refused() {
    let err = toml::from_str::<MongoSet>("name = \"a\"\nreplica_set = \"rs0\"\nmembers = []\nprimary = \"x\"\n");
    assert!(err.is_err_and(|e| e.to_string().contains("unknown field")));
}

#[test]
fn validation_names_every_problem() {
    let mut bad = set();
    bad.name = "orders db".into();
    bad.replica_set = String::new();
    bad.members = vec!["10.0.0.1:27017".into(), "no-port".into(), "10.0.0.1:27017".into(), "h:0".into()];
    bad.password_env = Some("MONGO_PW".into());
    bad.poll_interval_ms = 10;
    bad.timeout_ms = 0;
    let fields: Vec<String> = bad.validate().into_iter().map(|(field, _)| field).collect();
    assert_eq!(
        fields,
        ["name", "replica_set", "members[1]", "members[2]", "members[3]", "username", "poll_interval_ms", "timeout_ms"]
    );
    let mut no_members = set();
    no_members.members.clear();
    no_members.username = Some("admin".into());
    let problems = no_members.validate();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().any(|(f, why)| f == "username" && why.contains("password_file or password_env")));
}

#[test]
fn secrets_never_show_in_debug_output() {
    let secret = Secret::new("hunter2");
    assert_eq!(format!("{secret:?}"), "<redacted>");
    assert_eq!(format!("{:?}", Some(secret.clone())), "Some(<redacted>)");
    assert_eq!(secret.expose(), "hunter2");
}

#[test]
fn passwords_load_from_a_file_without_the_trailing_newline() {
    let path = std::env::temp_dir().join(format!("mongo-pw-{}", std::process::id()));
    std::fs::write(&path, "s3cret\n").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let mut set = set();
    set.username = Some("admin".into());
    set.password_file = Some(path.clone());
    let loaded = set.load_password();
    let _ = std::fs::remove_file(&path);
    assert_eq!(loaded.ok().flatten().map(|s| s.expose().to_string()), Some("s3cret".to_string()));
    set.password_file = Some(path);
    assert!(set.load_password().is_err_and(|e| e.to_string().contains("password_file")));
}

#[test]
fn initial_config_numbers_members_from_zero() {
    let config = initial_config("rs0", &["a:1".into(), "b:2".into()]);
    assert_eq!(
        config,
        doc! { "_id": "rs0", "version": 1, "members": [ { "_id": 0, "host": "a:1" }, { "_id": 1, "host": "b:2" } ] }
    );
}

#[test]
fn reconfig_bumps_the_version_and_appends_after_the_highest_id() {
    let config = doc! {
        "_id": "rs0", "version": 7_i64, "settings": { "chainingAllowed": true },
        "members": [ { "_id": 0, "host": "a:1", "priority": 2 }, { "_id": 5, "host": "b:2" } ],
    };
    let next = reconfigured(&config, &["c:3".into(), "d:4".into()]);
    assert_eq!(
        next,
        Some(doc! {
            "_id": "rs0", "version": 8_i64, "settings": { "chainingAllowed": true },
            "members": [
                { "_id": 0, "host": "a:1", "priority": 2 }, { "_id": 5, "host": "b:2" },
                { "_id": 6_i64, "host": "c:3" }, { "_id": 7_i64, "host": "d:4" },
            ],
        })
    );
    assert_eq!(reconfigured(&doc! { "_id": "rs0", "members": [] }, &["c:3".into()]), None);
}
