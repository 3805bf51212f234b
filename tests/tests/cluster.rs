//! The replicated coordinator as a user runs it: real `qm coordinator` processes on loopback,
//! killed with SIGKILL, restarted from their sled directories, with a fenced checker that
//! records any overlap of exclusive holders and any token going backwards.

use std::sync::Arc;
use std::time::Duration;

use qm_shared::pb::v1 as pb;
use qm_tests::{acquire_wait, release, Cluster, Fence};

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
        if fence.enter(&r.resource, &me, r.fencing_token) {
            tokio::task::yield_now().await;
            fence.leave(&r.resource, &me);
        }
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
    let mut status = cluster.status_of(follower).await;
    for _ in 0..200 {
        if status.as_ref().is_some_and(|s| s.members.len() == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = cluster.status_of(follower).await;
    }
    let status = status.expect("status");
    assert_eq!(status.members.len(), 3, "{status:?}");
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
    for _ in 0..200 {
        if fence.entries() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
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
    let done = worker(client.clone(), fence.clone(), "writer".into(), "pg:db/table:t".into(), 120).await;
    assert_eq!(done, 120);
    let target = cluster.status_of(leader).await.expect("leader status");
    assert!(target.snapshot_index > 0, "the leader snapshotted: {target:?}");

    cluster.spawn(away, false);
    let caught_up = cluster.wait_applied(away, target.applied_index).await;
    assert!(
        caught_up.snapshot_index >= target.snapshot_index.min(caught_up.applied_index) && caught_up.snapshot_index > 0,
        "the restarted node installed a snapshot: {caught_up:?}"
    );
    // It serves the same state.
    let via = cluster.client_of(away);
    let list = via.list(pb::ListRequest::default()).await.expect("list via restarted node");
    assert!(list.reservations.is_empty());
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
            .call(|ch| {
                let addr = addr.clone();
                async move {
                    let req = pb::AddLearnerRequest { node_id: id, address: addr, wait_caught_up: true };
                    Ok(qm_shared::client::Client::cluster(ch).add_learner(req).await?.into_inner())
                }
            })
            .await
            .expect("add learner");
        client
            .call(|ch| async move {
                Ok(qm_shared::client::Client::cluster(ch)
                    .promote(pb::PromoteRequest { node_id: id })
                    .await?
                    .into_inner())
            })
            .await
            .expect("promote");
    }
    let status = client.status().await.expect("status");
    let voters = status.members.iter().filter(|m| m.role == pb::MemberRole::Voter as i32).count();
    assert_eq!(voters, 5, "{status:?}");
    assert_eq!(worker(client.clone(), fence.clone(), "five".into(), "pg:db".into(), 5).await, 5);

    for id in [4, 5] {
        client
            .call(|ch| async move {
                Ok(qm_shared::client::Client::cluster(ch).remove(pb::RemoveRequest { node_id: id }).await?.into_inner())
            })
            .await
            .expect("remove");
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

    let out = std::process::Command::new(qm_tests::qm_bin())
        .args(["cluster", "transfer-leader", "--to", &target.to_string(), "-o", "json", "--endpoint"])
        .arg(cluster.endpoints())
        .output()
        .expect("run qm");
    assert!(out.status.success(), "qm cluster transfer-leader: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(answer["leader_id"], target, "{answer}");

    // Every node agrees, the grant is intact, and writes go on through the new leader.
    for id in [1, 2, 3] {
        let status = cluster.status_of(id).await.expect("status");
        assert_eq!(status.leader_id, Some(target), "node {id}: {status:?}");
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
