//! Tests of the resolver: hosts-file parsing, the address choice, and how lookups,
//! failures and timeouts become answers.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn names(list: &[(&str, u16)]) -> BTreeSet<HostPort> {
    list.iter().map(|(h, p)| HostPort::new(h, *p)).collect()
}

/// A lookup answering from a fixed table: `Ok` addresses, an error, or never.
fn table(entries: &'static [(&'static str, Option<&'static str>)], calls: Arc<AtomicUsize>) -> Arc<dyn Lookup> {
    Arc::new(move |host: &str, _port: u16| -> LookupFuture {
        calls.fetch_add(1, Ordering::Relaxed);
        let found = entries.iter().find(|(h, _)| *h == host).map(|(_, a)| *a);
        Box::pin(async move {
            match found {
                Some(Some(list)) => Ok(list.split(',').map(ip).collect()),
                Some(None) => std::future::pending().await,
                None => Err(io::Error::other("failed to lookup address information: Name or service not known")),
            }
        })
    })
}

fn settings(hosts_file: Option<PathBuf>) -> ResolverSettings {
    ResolverSettings { timeout: Duration::from_millis(100), hosts_file, ..ResolverSettings::default() }
}

#[test]
fn hosts_files_parse_like_etc_hosts() {
    let text = "# comment\n127.0.0.2   App.Test  alias.test # trailing\n\n::1 six.test\n127.0.0.3 app.test\nnonsense here\n  \n127.0.0.2 app.test\n";
    let (map, bad) = parse_hosts(text);
    assert_eq!(map["app.test"], [ip("127.0.0.2"), ip("127.0.0.3")], "file order, no repeats");
    assert_eq!(map["alias.test"], [ip("127.0.0.2")]);
    assert_eq!(map["six.test"], [ip("::1")]);
    assert_eq!(bad, [6]);
    assert!(parse_hosts("").0.is_empty());
}

#[test]
fn the_current_address_is_kept_while_still_answered_else_ipv4_first() {
    let cur: SocketAddr = "10.0.0.2:80".parse().unwrap();
    let answer = [ip("2001:db8::1"), ip("10.0.0.1"), ip("10.0.0.2")];
    assert_eq!(choose(Some(cur), &answer, 80), Some(cur));
    assert_eq!(choose(None, &answer, 80), Some("10.0.0.1:80".parse().unwrap()));
    assert_eq!(choose(Some(cur), &answer[..2], 80), Some("10.0.0.1:80".parse().unwrap()));
    assert_eq!(choose(None, &answer[..1], 8080), Some("[2001:db8::1]:8080".parse().unwrap()));
    assert_eq!(choose(Some(cur), &[], 80), None);
}

#[tokio::test]
async fn names_resolve_fail_closed_and_timeouts_keep_the_last_address() {
    static ENTRIES: [(&str, Option<&str>); 2] = [("db.test", Some("10.0.0.9,10.0.0.8")), ("slow.test", None)];
    let calls = Arc::new(AtomicUsize::new(0));
    let r = Resolver::with_lookup(settings(None), table(&ENTRIES, calls.clone()));
    let wanted = names(&[("db.test", 5432), ("gone.test", 80), ("slow.test", 80)]);
    assert!(r.want(&wanted), "nothing is answered yet");
    assert!(r.resolve_missing().await);
    let a = r.addresses();
    assert_eq!(a.address_of("db.test", 5432), Ok("10.0.0.9:5432".parse().unwrap()));
    let gone = a.address_of("gone.test", 80).unwrap_err();
    assert!(gone.starts_with("gone.test:80: failed to lookup address information"), "{gone}");
    assert_eq!(a.address_of("slow.test", 80), Err("slow.test:80: lookup timed out after 100ms".into()));
    assert!(!r.want(&wanted), "every name has an answer now");
    // The same answers again change nothing, and only missing names are asked.
    let before = calls.load(Ordering::Relaxed);
    assert!(!r.resolve_missing().await);
    assert_eq!(calls.load(Ordering::Relaxed), before);
    assert!(!r.refresh().await);
    // A name no longer wanted is forgotten.
    r.want(&names(&[("db.test", 5432)]));
    assert_eq!(r.addresses().len(), 1);
}

#[tokio::test]
async fn a_timeout_after_an_answer_keeps_the_address() {
    let dir = std::env::temp_dir().join(format!("constellation-resolver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.2 slow.test\n").unwrap();
    static ENTRIES: [(&str, Option<&str>); 1] = [("slow.test", None)];
    let r = Resolver::with_lookup(settings(Some(hosts.clone())), table(&ENTRIES, Arc::default()));
    r.want(&names(&[("slow.test", 80)]));
    assert!(r.resolve_missing().await);
    assert_eq!(r.addresses().address_of("slow.test", 80), Ok("127.0.0.2:80".parse().unwrap()));
    // The hosts file forgets it; the system lookup times out: the address stays.
    std::fs::write(&hosts, "# nothing\n").unwrap();
    assert!(!r.refresh().await);
    assert_eq!(r.addresses().address_of("slow.test", 80), Ok("127.0.0.2:80".parse().unwrap()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_hosts_file_wins_and_is_read_again_every_round() {
    let dir = std::env::temp_dir().join(format!("constellation-resolver-hosts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.2 app.test\n").unwrap();
    static ENTRIES: [(&str, Option<&str>); 1] = [("app.test", Some("192.0.2.1"))];
    let calls = Arc::new(AtomicUsize::new(0));
    let r = Resolver::with_lookup(settings(Some(hosts.clone())), table(&ENTRIES, calls.clone()));
    r.want(&names(&[("app.test", 8080)]));
    assert!(r.resolve_missing().await);
    assert_eq!(r.addresses().address_of("app.test", 8080), Ok("127.0.0.2:8080".parse().unwrap()));
    assert_eq!(calls.load(Ordering::Relaxed), 0, "the system resolver is not asked");
    // Both addresses: the current one stays.
    std::fs::write(&hosts, "127.0.0.3 app.test\n127.0.0.2 app.test\n").unwrap();
    assert!(!r.refresh().await);
    // Only the new one: it is taken.
    std::fs::write(&hosts, "127.0.0.3 app.test\n").unwrap();
    assert!(r.refresh().await);
    assert_eq!(r.addresses().address_of("app.test", 8080), Ok("127.0.0.3:8080".parse().unwrap()));
    // The file is gone: the system resolver answers.
    std::fs::remove_file(&hosts).unwrap();
    assert!(r.refresh().await);
    assert_eq!(r.addresses().address_of("app.test", 8080), Ok("192.0.2.1:8080".parse().unwrap()));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn run_reports_changes_and_follows_connect_failures() {
    static ENTRIES: [(&str, Option<&str>); 1] = [("app.test", Some("127.0.0.2"))];
    let calls = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(ConnectFailures::default());
    let s = ResolverSettings {
        interval: Duration::from_secs(3600),
        min_refresh: Duration::from_millis(10),
        ..settings(None)
    };
    let r = Arc::new(Resolver::with_lookup(s, table(&ENTRIES, calls.clone())).watching(failures.clone()));
    let changes = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(r.clone().run(
        {
            let changes = changes.clone();
            move || {
                changes.fetch_add(1, Ordering::Relaxed);
            }
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let wait = |what: &'static str, cond: Box<dyn Fn() -> bool>| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // The first round runs at once (no round yet); a new name is looked up on `want`.
    r.want(&names(&[("app.test", 80)]));
    let c = changes.clone();
    wait("the first answer", Box::new(move || c.load(Ordering::Relaxed) == 1)).await;
    let before = calls.load(Ordering::Relaxed);
    failures.record();
    let c = calls.clone();
    wait("a lookup after a failed connect", Box::new(move || c.load(Ordering::Relaxed) > before)).await;
    let _ = stop_tx.send(());
    task.await.unwrap();
    assert_eq!(changes.load(Ordering::Relaxed), 1, "the same answer again is no change");
}

#[tokio::test]
async fn a_failed_lookup_keeps_a_working_address_for_a_few_rounds() {
    let dir = std::env::temp_dir().join(format!("constellation-resolver-failed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.2 flaky.test\n").unwrap();
    // The system resolver knows nothing of it: every lookup there fails outright.
    static ENTRIES: [(&str, Option<&str>); 0] = [];
    let r = Resolver::with_lookup(settings(Some(hosts.clone())), table(&ENTRIES, Arc::default()));
    r.want(&names(&[("flaky.test", 80)]));
    assert!(r.resolve_missing().await);
    let working: SocketAddr = "127.0.0.2:80".parse().unwrap();
    std::fs::write(&hosts, "# gone\n").unwrap();
    for round in 1..FAILED_ROUNDS_KEPT {
        assert!(!r.refresh().await, "round {round}: the address is kept");
        assert_eq!(r.addresses().address_of("flaky.test", 80), Ok(working));
        assert!(r.failed_names().is_empty());
    }
    assert!(r.refresh().await, "then it is given up");
    assert!(r.addresses().address_of("flaky.test", 80).is_err());
    assert_eq!(r.failed_names(), vec![HostPort::new("flaky.test", 80)], "and retried early");
    // It comes back: the count starts again from zero.
    std::fs::write(&hosts, "127.0.0.2 flaky.test\n").unwrap();
    assert!(r.resolve(r.failed_names()).await);
    assert_eq!(r.addresses().address_of("flaky.test", 80), Ok(working));
    std::fs::write(&hosts, "# gone again\n").unwrap();
    assert!(!r.refresh().await, "a fresh failure is forgiven again");
    let _ = std::fs::remove_dir_all(&dir);
}
