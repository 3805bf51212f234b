//! The replicated coordinator as a user runs it: real `qm coordinator` processes on loopback,
//! killed with SIGKILL, restarted from their sled directories, with a fenced checker that
//! records any overlap of exclusive holders and any token going backwards.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_tests::{acquire_wait, eventually, release, Cluster, Fence};

/// One client's loop: acquire, enter the fence, leave, release; `rounds` times.
async fn worker(
    client: qm_shared::client::Client,
    fence: Arc<Fence>,
    me: String,
    resource: String,
    rounds: u32,
) -> u32 {
    let mut done = 0;
    let mut session = None;
    for _ in 0..rounds * 4 {
        if done == rounds {
            break;
        }
        let s = match session {
            Some(s) => s,
            None => match client.open_session(&me, 10_000).await {
                Ok(r) => {
                    session = Some(r.session_id);
                    r.session_id
                }
                Err(_) => continue,
            },
        };
        let got = tokio::time::timeout(Duration::from_secs(20), acquire_wait(&client, s, &me, &resource)).await;
        let Ok(Ok(r)) = got else {
            // The answer was lost (a failover mid-call): the request may still be queued or
            // granted under this session. Start clean, as an agent would: close it, reopen.
            let _ = client.close_session(s).await;
            session = None;
            continue;
        };
        // A refused token or an overlap is recorded; the test asserts there were none.
        fence.write(&r.resource, &me, r.fencing_token).await;
        let _ = release(&client, s, r.id).await;
        done += 1;
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_from_config_and_a_follower_only_client_succeeds() {
    let cluster = Cluster::start(3, 10_000);
    let leader = cluster.leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).expect("a follower");
    // The follower learns the membership when it applies the leader's first entries.
    let status = eventually("the follower knowing all three members", Duration::from_secs(10), || async {
        match cluster.status_of(follower).await {
            Some(s) if s.members.len() == 3 => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(status.members.iter().all(|m| m.role == pb::MemberRole::Voter as i32));

    // A client that knows only a follower: writes are forwarded, reads use read-index.
    let client = cluster.client_of(follower);
    let fence = Fence::default();
    let s = client.open_session("follower-client", 10_000).await.expect("open via follower").session_id;
    let r = acquire_wait(&client, s, "follower-client", "pg:db/table:t").await.expect("acquire via follower");
    assert!(fence.enter(&r.resource, "follower-client", r.fencing_token));
    let list = client.list(pb::ListRequest::default()).await.expect("list via follower");
    assert_eq!(list.reservations.len(), 1);
    assert_eq!(list.reservations[0].fencing_token, r.fencing_token);
    fence.leave(&r.resource, "follower-client");
    release(&client, s, r.id).await.expect("release via follower");
    assert!(fence.violations().is_empty(), "{:?}", fence.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_under_load_loses_no_acknowledged_grant() {
    let mut cluster = Cluster::start(3, 10_000);
    let leader = cluster.leader(&[1, 2, 3]).await;
    let client = cluster.client();
    let fence = Arc::new(Fence::default());

    // A grant acknowledged before the kill must survive it, with the same token.
    let holder = client.open_session("long-holder", 60_000).await.expect("open").session_id;
    let held = acquire_wait(&client, holder, "long-holder", "pg:db/table:held").await.expect("acquire");
    // The holder keeps its session and lease alive, as a real holder does, for as long as the
    // test runs: the grant must outlive the failover, not merely its first lease.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let keeper = {
        let client = cluster.client();
        let id = held.id;
        tokio::spawn(async move {
            loop {
                let _ = client.keepalive(holder).await;
                let _ =
                    client.extend(pb::ExtendRequest { reservation_id: id, session_id: holder, lease_ms: 20_000 }).await;
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        })
    };

    let mut tasks = Vec::new();
    for i in 0..4 {
        let resource = format!("pg:db/table:hot{}", i % 2);
        tasks.push(tokio::spawn(worker(cluster.client(), fence.clone(), format!("agent-{i}"), resource, 15)));
    }
    // Kill the leader once the load is running.
    eventually("eight fenced writes before the kill", Duration::from_secs(10), || async {
        if fence.entries() >= 8 {
            Ok(())
        } else {
            Err(format!("{} writes", fence.entries()))
        }
    })
    .await;
    cluster.kill(leader);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let new_leader = cluster.leader(&others).await;
    assert_ne!(new_leader, leader);
    let mut done = 0;
    for t in tasks {
        done += t.await.expect("worker");
    }
    assert_eq!(done, 60, "every client finished its rounds across the failover");

    let list = client
        .list(pb::ListRequest { session_id: Some(holder), ..Default::default() })
        .await
        .expect("list after failover");
    let _ = stop.send(());
    keeper.await.expect("keeper");
    assert_eq!(list.reservations.len(), 1, "the acknowledged grant survived: {list:?}");
    assert_eq!(list.reservations[0].fencing_token, held.fencing_token);
    assert!(fence.violations().is_empty(), "{:?}", fence.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_catches_up_and_far_behind_node_gets_a_snapshot() {
    // Snapshot (and purge) every 100 entries, so a node away for 300 needs a snapshot.
    let mut cluster = Cluster::start(3, 100);
    let leader = cluster.leader(&[1, 2, 3]).await;
    let away = [1, 2, 3].into_iter().find(|i| *i != leader).expect("a follower");
    cluster.kill(away);
    let client = cluster.client();
    let fence = Arc::new(Fence::default());
    // Something the snapshot must carry: a grant held throughout (a session of 5 minutes).
    let holder = client.open_session("snapshot-holder", 300_000).await.expect("open").session_id;
    let held = acquire_wait(&client, holder, "snapshot-holder", "pg:db/table:kept").await.expect("acquire");
    let done = worker(client.clone(), fence.clone(), "writer".into(), "pg:db/table:t".into(), 120).await;
    assert_eq!(done, 120);
    let target = cluster.status_of(leader).await.expect("leader status");
    assert!(target.snapshot_index > 0, "the leader snapshotted: {target:?}");

    cluster.spawn(away, false);
    let caught_up = cluster.wait_applied(away, target.applied_index).await;
    assert!(caught_up.snapshot_index > 0, "the restarted node has a snapshot: {caught_up:?}");
    // Installed from the leader, not taken by itself after replaying the log: the leader had
    // purged the entries it missed.
    let log = cluster.log_of(away);
    assert!(log.contains("installed a snapshot from the leader"), "node {away} never installed one:\n{log}");
    // It holds the same state: the held grant, token for token, as the leader has it.
    let list = |c: Client| async move {
        let mut l = c.list(pb::ListRequest::default()).await.expect("list").reservations;
        l.sort_by_key(|r| r.id);
        l
    };
    let (there, here) = (list(cluster.client_of(leader)).await, list(cluster.client_of(away)).await);
    assert_eq!(here, there, "node {away} serves the leader's reservations");
    assert_eq!(here.len(), 1, "{here:?}");
    assert_eq!((here[0].id, here[0].fencing_token), (held.id, held.fencing_token));
    assert!(fence.violations().is_empty(), "{:?}", fence.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_three_five_three() {
    let mut cluster = Cluster::start(3, 10_000);
    cluster.leader(&[1, 2, 3]).await;
    let client = cluster.client();
    let fence = Arc::new(Fence::default());
    for id in [4, 5] {
        cluster.spawn(id, true);
        let addr = format!("http://{}", cluster.addrs[&id]);
        client
            .add_learner(pb::AddLearnerRequest {
                node_id: id,
                address: addr,
                wait_caught_up: true,
                ..Default::default()
            })
            .await
            .expect("add learner");
        client.promote(pb::PromoteRequest { node_id: id }).await.expect("promote");
    }
    let status = client.status().await.expect("status");
    let voters = status.members.iter().filter(|m| m.role == pb::MemberRole::Voter as i32).count();
    assert_eq!(voters, 5, "{status:?}");
    assert_eq!(worker(client.clone(), fence.clone(), "five".into(), "pg:db".into(), 5).await, 5);

    for id in [4, 5] {
        client.remove(pb::RemoveRequest { node_id: id }).await.expect("remove");
        cluster.kill(id);
    }
    let status = client.status().await.expect("status");
    let ids: Vec<u64> = status.members.iter().map(|m| m.node_id).collect();
    assert_eq!(ids, vec![1, 2, 3], "{status:?}");
    assert_eq!(worker(client, fence.clone(), "three".into(), "pg:db".into(), 5).await, 5);
    assert!(fence.violations().is_empty(), "{:?}", fence.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_from_the_cli_keeps_grants_and_writes_flowing() {
    let cluster = Cluster::start(3, 10_000);
    let leader = cluster.leader(&[1, 2, 3]).await;
    let target = [1, 2, 3].into_iter().find(|i| *i != leader).expect("a follower");
    let client = cluster.client();
    let holder = client.open_session("holder", 60_000).await.expect("open").session_id;
    let held = acquire_wait(&client, holder, "holder", "pg:db/table:held").await.expect("acquire");

    let answer = cluster.qm_json(&["cluster", "transfer-leader", "--to", &target.to_string()]);
    assert_eq!(answer["leader_id"], target, "{answer}");

    // Every node comes to know the new leader (a third node hears of it with the new
    // leader's first append), the grant is intact, and writes go on through the new leader.
    for id in [1, 2, 3] {
        eventually(&format!("node {id} following node {target}"), Duration::from_secs(10), || async {
            match cluster.status_of(id).await {
                Some(s) if s.leader_id == Some(target) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let list = client
        .list(pb::ListRequest { session_id: Some(holder), ..Default::default() })
        .await
        .expect("list after transfer");
    assert_eq!(list.reservations.len(), 1, "{list:?}");
    assert_eq!(list.reservations[0].fencing_token, held.fencing_token);
    let fence = Arc::new(Fence::default());
    assert_eq!(worker(client, fence.clone(), "after".into(), "pg:db/table:t".into(), 5).await, 5);
    assert!(fence.violations().is_empty(), "{:?}", fence.violations());
}

/// A deposed leader that catches up by installing a snapshot, then is elected again, serves
/// writes. It once did not: the write it had proposed in its old term was never answered
/// (openraft answers a pending write on apply or truncation, and a snapshot install does
/// neither), its leader duties waited on it forever, and in its new term it never committed
/// RestartLeases, so every write was refused while its heartbeats kept it leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_elected_leader_that_caught_up_by_snapshot_serves_writes() {
    let mut cluster = Cluster::start(3, 10_000);
    let old = cluster.leader(&[1, 2, 3]).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let client = cluster.client();
    client.open_session("before", 60_000).await.expect("a write before the kill");
    cluster.kill(old);

    // Run the cluster well ahead of the dead node (each open and close is one entry), then
    // compact the log on both survivors so the old leader can only catch up by snapshot.
    let new = cluster.leader(&others).await;
    let start = cluster.status_of(new).await.expect("status").applied_index;
    let survivors = cluster.client_among(&others);
    for i in 0..5_000u64 {
        let s = survivors.open_session(&format!("ahead-{i}"), 60_000).await.expect("open while one node is down");
        survivors.close_session(s.session_id).await.expect("close while one node is down");
        if i % 100 == 99 && cluster.status_of(new).await.is_some_and(|st| st.applied_index >= start + 1_500) {
            break;
        }
    }
    // The leader elected while the old one was down keeps the log the old one still needs (its
    // replication to it is in flight from where it was), so hand leadership to the other
    // survivor, which starts its replication from the end of the log and may purge below it.
    let other = *others.iter().find(|i| **i != new).expect("the other survivor");
    let (code, out, err) = cluster.qm(&["cluster", "transfer-leader", "--to", &other.to_string()]);
    assert_eq!(code, 0, "qm cluster transfer-leader --to {other}: {err}");
    let moved_to: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(moved_to["leader_id"], other, "{moved_to}");
    for id in &others {
        let (code, out, err) = cluster.qm_on(*id, &["cluster", "snapshot"]);
        assert_eq!(code, 0, "qm cluster snapshot on node {id}: {err}");
        let snap: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert!(snap["snapshot_index"].as_u64().unwrap_or(0) >= start + 1_500, "node {id}: {snap}");
    }
    let target = cluster.status_of(new).await.expect("status").applied_index;

    // Restart it while the others are paused: it resumes as leader of its old term (its vote
    // was committed) and proposes that term's RestartLeases, which cannot commit. Without the
    // pause this is a race the restarted node wins only sometimes.
    for id in &others {
        cluster.pause(*id);
    }
    cluster.spawn(old, false);
    let proposed =
        eventually(&format!("node {old} proposing as leader of its old term"), Duration::from_secs(30), || {
            let cluster = &cluster;
            async move {
                match cluster.status_of(old).await {
                    Some(s) if s.leader_id == Some(old) && s.last_log_index > s.applied_index => Ok(s),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    // A leader that has not committed its term's RestartLeases serves nothing, and says so.
    assert!(
        !proposed.ready && proposed.not_ready_reason.contains("RestartLeases"),
        "node {old} is leader without serving, and reports itself not ready: {proposed:?}"
    );
    // Unable to commit it, it steps down and says why in its log.
    eventually(&format!("node {old} stepping down"), Duration::from_secs(30), || async {
        let log = cluster.log_of(old);
        if log.contains("stepping down: its term's RestartLeases did not commit") {
            Ok(())
        } else {
            Err(format!("its log:\n{log}"))
        }
    })
    .await;
    for id in &others {
        cluster.resume(*id);
    }
    let caught_up = cluster.wait_applied(old, target).await;
    assert!(caught_up.term > proposed.term, "node {old} learned the newer term: {caught_up:?}");
    assert!(caught_up.snapshot_index > start, "node {old} caught up through a snapshot: {caught_up:?}");

    // Hand leadership back to it (retried: it may still be catching up with the last entries).
    let moved = eventually(&format!("leadership moving to node {old}"), Duration::from_secs(30), || async {
        let (code, out, err) = cluster.qm(&["cluster", "transfer-leader", "--to", &old.to_string()]);
        match serde_json::from_str::<serde_json::Value>(&out) {
            Ok(answer) if code == 0 && answer["leader_id"] == old => Ok(answer),
            _ => Err(format!("exit {code}: {out}{err}")),
        }
    })
    .await;

    // Writes succeed through it. Each attempt is a client call with its own retry budget; a
    // leader that never commits its term's RestartLeases refuses every one of them.
    let via_old = cluster.client_of(old);
    let mut last = None;
    let mut served = false;
    for _ in 0..6 {
        match via_old.open_session("after", 60_000).await {
            Ok(_) => {
                served = true;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    assert!(served, "no write served after leadership moved to node {old} ({moved}): {last:?}");
    let status = cluster.status_of(old).await.expect("status");
    assert!(status.ready, "node {old} reports itself ready: {status:?}");
}

/// `qm cluster add` promotes a node only once it has replicated the log up to its addition:
/// an address where nothing runs stays a learner (the command says so and exits 1), and the
/// single voter goes on serving writes. Promoted at once, it would have made a second voter
/// that never answers, and the cluster could not commit anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_catches_up_is_left_a_learner_and_writes_go_on() {
    let c = Cluster::start(1, 10_000);
    c.leader(&[1]).await;
    let nowhere = format!("127.0.0.1:{}", qm_tests::free_port());
    let (code, _, err) = c.qm(&["cluster", "add", "9", &nowhere, "--timeout-ms", "2000"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("has not caught up") && err.contains("not promoted"), "{err}");
    assert!(err.contains(&nowhere) && err.contains("qm cluster promote 9"), "{err}");
    let status = c.qm_json(&["cluster", "status"]);
    let nine = status["members"].as_array().unwrap().iter().find(|m| m["node_id"] == 9).cloned();
    assert_eq!(nine.map(|m| m["role"].clone()), Some("learner".into()), "{status:#}");
    // Node 1 alone still commits.
    let granted = c.qm_json(&["reserve", "acquire", "pg:after-add"]);
    assert_eq!(granted["status"], "granted", "{granted:#}");
}

/// A paused node that a client's calls timed out against (each one reset by the client while
/// the node could not read) answers again on the same connection once it resumes: the resets
/// it finds queued are not taken for an attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_timed_out_against_a_paused_node_do_not_cost_the_connection() {
    use qm_shared::client::{Bearer, Connector, Transport};
    let c = Cluster::start(1, 10_000);
    c.leader(&[1]).await;
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addrs[&1])).expect("endpoint");
    let transport = Transport::new(Connector::tcp().connect(ep), Bearer::new(&c.token).expect("token"));
    let status = || {
        let mut cluster = Client::cluster(transport.clone());
        async move { cluster.status(pb::StatusRequest {}).await }
    };
    status().await.expect("answers before the pause");
    c.pause(1);
    let calls: Vec<_> = (0..64).map(|_| tokio::time::timeout(Duration::from_millis(200), status())).collect();
    for answer in futures::future::join_all(calls).await {
        assert!(answer.is_err(), "a paused node answers nothing: {answer:?}");
    }
    c.resume(1);
    for i in 0..5 {
        let answer = status().await;
        assert!(answer.is_ok(), "call {i} on the same connection after the resume: {answer:?}");
    }
}

/// Removing a voter is refused when the voters it would leave have no majority that answers,
/// and the cluster is as before; removing the unreachable one instead goes through, and the
/// two left keep writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_voter_that_would_leave_no_answering_quorum_is_refused() {
    let mut cluster = Cluster::start(3, 10_000);
    let leader = cluster.leader(&[1, 2, 3]).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let (live, dead) = (followers[0], followers[1]);
    cluster.kill(dead);
    let (code, _, err) = cluster.qm(&["cluster", "remove", &live.to_string()]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&format!("removing node {live} would leave voters")), "{err}");
    assert!(err.contains(&format!("of which only [{leader}] answer")), "{err}");
    let status = cluster.client().status().await.expect("status");
    assert_eq!(status.members.len(), 3, "nothing changed: {status:?}");

    let (code, out, err) = cluster.qm(&["cluster", "remove", &dead.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let status = cluster.client().status().await.expect("status");
    let ids: BTreeSet<u64> = status.members.iter().map(|m| m.node_id).collect();
    assert_eq!(ids, BTreeSet::from([leader, live]), "{status:?}");
    cluster.client().open_session("after", 10_000).await.expect("the two left keep writing");
}
