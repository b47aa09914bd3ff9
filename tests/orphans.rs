//! `hotpair orphans show|apply` on the orphans file of a real rejoin: at `async` the old primary
//! acknowledged writes its backup never received, it was failed over, and the rejoin set them
//! aside. `show` lists them; `apply` re-applies chosen ones on the new primary, refusing a key
//! changed since unless `--force`, skipping what is already there.

mod common;

use common::{stderr, Pair};
use hotpair::config::SyncLevel;
use redis::Commands;

fn lsn_of(shown: &str, key: &str) -> u64 {
    // `show` prints "LSN n (epoch …)" and then one line per key of that transaction.
    let mut current = None;
    for line in shown.lines() {
        if let Some(rest) = line.strip_prefix("LSN ") {
            current = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if line.trim_start().starts_with(&format!("\"{key}\":")) {
            return current.unwrap_or_else(|| panic!("{key} before any LSN in:\n{shown}"));
        }
    }
    panic!("{key} not shown:\n{shown}");
}

#[test]
fn orphans_of_an_async_failover_are_shown_and_chosen_ones_re_applied_on_the_new_primary() {
    let mut pair = Pair::start(SyncLevel::Async);
    {
        let mut a = pair.redis("a");
        let () = a.mset(&[("k1", "v1"), ("k2", "v2"), ("counter", "10")]).unwrap();
    }
    pair.wait_caught_up();
    pair.hotpair_ok(&["replicate", "stop", "a"]);
    {
        // Acknowledged at `async`, never shipped: the orphans.
        let mut a = pair.redis("a");
        let () = a.set("order:1", "paid").unwrap();
        let () = a.set("k1", "v1-on-a").unwrap();
        let _: i64 = a.del("k2").unwrap();
        let _: i64 = a.incr("counter", 5).unwrap();
    }
    pair.kill("a");
    pair.hotpair_ok(&["failover", "--to", "b"]);
    let () = pair.redis("b").set("k1", "v1-on-b").unwrap();
    let _: i64 = pair.redis("b").incr("counter", 10).unwrap();
    pair.restart("a");
    let out = pair.hotpair_ok(&["rejoin", "a"]);
    assert!(out.contains("4 orphaned transaction(s)"), "{out}");
    let dir = pair.node_dir("a").join("orphans");
    let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let file = file.to_str().unwrap();

    let shown = pair.hotpair_ok(&["orphans", "show", file]);
    assert!(shown.contains("4 orphaned transaction(s)"), "{shown}");
    assert!(shown.contains("\"order:1\": (absent) -> \"paid\""), "{shown}");
    assert!(shown.contains("\"k2\": \"v2\" -> (absent)"), "{shown}");
    assert!(shown.contains("\"counter\": \"10\" -> \"15\"") && shown.contains("as sent: INCRBY counter 5"), "{shown}");
    let (order, k1, k2) = (lsn_of(&shown, "order:1"), lsn_of(&shown, "k1"), lsn_of(&shown, "k2"));
    let json = pair.hotpair_ok(&["orphans", "show", file, "--json"]);
    let lsns: Vec<u64> =
        json.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lsn"].as_u64().unwrap()).collect();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]) && lsns.len() == 4, "oldest first: {lsns:?}");

    // k1 changed on the new primary since: --all is refused, and nothing is written.
    let out = pair.hotpair(&["orphans", "apply", file, "--all"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr(&out).contains("\"k1\" is now \"v1-on-b\", but was \"v1\" before the orphan"), "{}", stderr(&out));
    let mut b = pair.redis("b");
    assert_eq!(b.get::<_, Option<String>>("order:1").unwrap(), None, "a refusal writes nothing");

    // A dry run says what it would send and writes nothing.
    let (order_arg, k2_arg) = (order.to_string(), k2.to_string());
    let out = pair.hotpair_ok(&["orphans", "apply", file, "--lsn", &order_arg, "--lsn", &k2_arg, "--dry-run"]);
    assert!(out.contains("would send SET order:1 paid") && out.contains("would send DEL k2"), "{out}");
    assert_eq!(b.get::<_, Option<String>>("order:1").unwrap(), None);

    let out = pair.hotpair_ok(&["orphans", "apply", file, "--lsn", &order_arg, "--lsn", &k2_arg]);
    assert!(out.contains("applied 2 transaction(s) as new writes on b"), "{out}");
    assert_eq!(b.get::<_, Option<String>>("order:1").unwrap().as_deref(), Some("paid"));
    assert_eq!(b.get::<_, Option<String>>("k2").unwrap(), None);
    // Again: already there, skipped.
    let out = pair.hotpair_ok(&["orphans", "apply", file, "--lsn", &order_arg, "--lsn", &k2_arg]);
    assert!(out.matches("applied earlier by `orphans apply`, skipped").count() == 2, "{out}");

    // The increment is sent again as the client sent it: added to what b holds now (20), and
    // once only, however often the command is run.
    let counter = lsn_of(&shown, "counter").to_string();
    for _ in 0..2 {
        pair.hotpair_ok(&["orphans", "apply", file, "--lsn", &counter]);
    }
    assert_eq!(b.get::<_, Option<String>>("counter").unwrap().as_deref(), Some("25"));

    // --force: the orphan's value wins over the change made since.
    pair.hotpair_ok(&["orphans", "apply", file, "--lsn", &k1.to_string(), "--force"]);
    assert_eq!(b.get::<_, Option<String>>("k1").unwrap().as_deref(), Some("v1-on-a"));
    pair.wait_caught_up();
    assert_eq!(pair.redis("a").get::<_, Option<String>>("order:1").unwrap().as_deref(), Some("paid"), "shipped to a");

    // Bad input is said clearly.
    let out = pair.hotpair(&["orphans", "apply", file, "--lsn", "999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("LSN 999999 is not in"), "{}", stderr(&out));
    let out = pair.hotpair(&["orphans", "apply", file]);
    assert!(stderr(&out).contains("--lsn N") && out.status.code() == Some(1), "{}", stderr(&out));
    let not_orphans = pair.dir().join("pair.toml");
    let out = pair.hotpair(&["orphans", "show", not_orphans.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 1: not JSON"), "{}", stderr(&out));
}
