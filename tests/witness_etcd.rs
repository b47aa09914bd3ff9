//! The etcd client the witness uses, against a real etcd on 127.0.0.1 (Debian's `etcd-server`;
//! `.ci/run` installs it). Without an etcd executable each test prints SKIPPED.
//!
//! What the witness relies on: a lease can be granted, renewed and revoked; a key written with a
//! lease disappears when the lease runs out; a write conditioned on absence or on a revision
//! succeeds for exactly one of two racers; an unreachable endpoint is an error within the bound,
//! and a dead first endpoint does not stop a live second one from answering.

use std::time::{Duration, Instant};

use hotpair::drill::etcd::LocalEtcd;
use hotpair::witness::{Cas, EtcdClient, EtcdError, EtcdTls};

const TIMEOUT: Duration = Duration::from_secs(2);

async fn etcd_or_skip(name: &str) -> Option<(tempfile::TempDir, LocalEtcd)> {
    if LocalEtcd::executable().is_none() {
        eprintln!("SKIPPED {name}: no etcd executable (apt-get install etcd-server)");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = LocalEtcd::start(dir.path()).await.expect("start etcd");
    Some((dir, etcd))
}

fn client(endpoints: &[String]) -> EtcdClient {
    EtcdClient::new(endpoints, &EtcdTls::default(), TIMEOUT).expect("client")
}

#[tokio::test]
async fn of_two_racers_for_an_absent_key_exactly_one_wins() {
    let Some((_dir, etcd)) = etcd_or_skip("of_two_racers_for_an_absent_key_exactly_one_wins").await else { return };
    let client = client(&[etcd.endpoint()]);
    let key = b"/hotpair/test/leader";
    let (first, second) = tokio::join!(client.put_if_absent(key, b"a", 0), client.put_if_absent(key, b"b", 0));
    let outcomes = [first.unwrap(), second.unwrap()];
    let winners: Vec<_> = outcomes.iter().filter(|o| matches!(o, Cas::Written { .. })).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let held = client.get(key).await.unwrap().expect("the key exists");
    let loser = outcomes.iter().find_map(|o| match o {
        Cas::Lost { current } => current.clone(),
        Cas::Written { .. } => None,
    });
    assert_eq!(loser.as_ref(), Some(&held), "the loser is told what the key holds");

    // A write conditioned on the revision the winner saw succeeds once, then fails.
    let renewed = client.put_if_revision(key, b"a2", 0, held.mod_revision).await.unwrap();
    let Cas::Written { revision } = renewed else { panic!("{renewed:?}") };
    assert!(revision > held.mod_revision);
    let stale = client.put_if_revision(key, b"x", 0, held.mod_revision).await.unwrap();
    assert!(matches!(stale, Cas::Lost { current: Some(ref kv) } if kv.value == b"a2"), "{stale:?}");
    assert!(!client.delete_if_revision(key, held.mod_revision).await.unwrap());
    assert!(client.delete_if_revision(key, revision).await.unwrap());
    assert_eq!(client.get(key).await.unwrap(), None);
}

#[tokio::test]
async fn a_key_on_a_lease_lives_while_renewed_and_goes_when_it_runs_out() {
    let Some((_dir, etcd)) = etcd_or_skip("a_key_on_a_lease_lives_while_renewed_and_goes_when_it_runs_out").await
    else {
        return;
    };
    let client = client(&[etcd.endpoint()]);
    let key = b"/hotpair/test/leased";
    let lease = client.grant_lease(Duration::from_millis(1500)).await.unwrap();
    assert_eq!(lease.ttl_seconds, 2, "etcd grants whole seconds, rounded up");
    assert!(matches!(client.put_if_absent(key, b"a", lease.id).await.unwrap(), Cas::Written { .. }));
    assert_eq!(client.get(key).await.unwrap().unwrap().lease, lease.id);

    // Renewed past several TTLs, the key stays.
    let renewing_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < renewing_until {
        assert_eq!(client.keep_alive(lease.id).await.unwrap(), Some(2));
        tokio::time::sleep(Duration::from_millis(500)).await; // the renewal period under test
    }
    assert!(client.get(key).await.unwrap().is_some());

    // Left alone, it goes within the TTL (etcd checks expiry every 500 ms or so).
    let stopped = Instant::now();
    while client.get(key).await.unwrap().is_some() {
        assert!(stopped.elapsed() < Duration::from_secs(6), "the key outlived its lease by far");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopped.elapsed() >= Duration::from_secs(1), "the key went before its lease could run out");
    assert_eq!(client.keep_alive(lease.id).await.unwrap(), None, "an expired lease cannot be renewed");
    client.revoke(lease.id).await.expect("revoking a lease that is gone is not an error");
}

#[tokio::test]
async fn revoking_a_lease_deletes_its_key_at_once() {
    let Some((_dir, etcd)) = etcd_or_skip("revoking_a_lease_deletes_its_key_at_once").await else { return };
    let client = client(&[etcd.endpoint()]);
    let lease = client.grant_lease(Duration::from_secs(30)).await.unwrap();
    client.put_if_absent(b"/k", b"v", lease.id).await.unwrap();
    client.revoke(lease.id).await.unwrap();
    assert_eq!(client.get(b"/k").await.unwrap(), None);
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped_and_no_live_one_is_an_error_within_the_bound() {
    let Some((_dir, mut etcd)) =
        etcd_or_skip("a_dead_endpoint_is_skipped_and_no_live_one_is_an_error_within_the_bound").await
    else {
        return;
    };
    // A port nothing listens on, first in the list.
    let dead = format!("http://127.0.0.1:{}", hotpair::drill::pair::free_control_port().unwrap());
    let client = client(&[dead.clone(), etcd.endpoint()]);
    assert_eq!(client.get(b"/nothing").await.unwrap(), None);

    // A frozen etcd accepts connections but never answers: the call still ends in time.
    etcd.freeze();
    let started = Instant::now();
    let err = client.get(b"/nothing").await.unwrap_err();
    assert!(started.elapsed() < TIMEOUT + Duration::from_millis(500), "{:?}", started.elapsed());
    assert!(matches!(err, EtcdError::Unreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&dead) && text.contains(&etcd.endpoint()), "names every endpoint: {text}");
    etcd.resume();
    assert_eq!(client.get(b"/nothing").await.unwrap(), None);

    // Killed and restarted on the same data: keys written before are still there.
    client.put_if_absent(b"/kept", b"1", 0).await.unwrap();
    etcd.restart().await.unwrap();
    assert_eq!(client.get(b"/kept").await.unwrap().unwrap().value, b"1");
}
