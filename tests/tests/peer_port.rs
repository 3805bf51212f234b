//! The peer port (`--peer-listen`) as users and attackers meet it: real `qm coordinator`
//! processes serving TLS, Raft only on their peer ports, and every way into Raft that is not a
//! member node refused with nothing changed.

use std::time::Duration;

use qm_shared::client::{Bearer, Connector, Transport};
use qm_shared::pb::v1 as pb;
use qm_tests::{acquire_wait, eventually, free_port, qm_bin, Cluster};
use tonic::Code;

/// A raw Raft peer client of `addr` over TLS, presenting `certs/<stem>.pem` or no certificate.
fn raft_at(c: &Cluster, addr: &str, stem: Option<&str>) -> pb::raft_peer_client::RaftPeerClient<Transport> {
    let ep = tonic::transport::Endpoint::from_shared(format!("https://{addr}")).expect("endpoint");
    let ch = Connector::tls(c.tls_as(stem)).connect(ep);
    pb::raft_peer_client::RaftPeerClient::new(Transport::new(ch, Bearer::default()))
}

/// A vote for a term far ahead, from node 9: a leader that took it would step down.
fn forged_vote(target: u64) -> pb::VoteRequest {
    let vote = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(1_000, 9), None);
    pb::VoteRequest { target_node_id: target, payload: qm_coordinator::raft::network::to_bytes(&vote) }
}

/// A forwarded write that would end session `s` (and release what it holds).
fn forged_close(s: u64) -> pb::ProposeRequest {
    let command = qm_coordinator::state::Command::CloseSession { session: qm_coordinator::state::SessionId(s) };
    pb::ProposeRequest { command: qm_coordinator::raft::network::to_bytes(&command) }
}

/// What a denial must leave as it was: the leader, a term no forged vote reached, the
/// applied index, and the one reservation session `s` holds.
#[derive(Debug)]
struct Before {
    leader: u64,
    applied: u64,
}

/// A TLS cluster of three with peer ports, a leader, and a session holding one reservation.
async fn cluster_holding_one() -> (Cluster, u64, u64) {
    let c = Cluster::start_tls_peer_ports(3);
    let leader = c.leader(&[1, 2, 3]).await;
    let client = c.client();
    let s = client.open_session("ops", 60_000).await.expect("open").session_id;
    acquire_wait(&client, s, "ops", "pg:db/table:t").await.expect("acquire");
    (c, leader, s)
}

async fn before(c: &Cluster, leader: u64) -> Before {
    let status = c.client().status().await.expect("status");
    assert_eq!(status.leader_id, Some(leader));
    Before { leader, applied: status.applied_index }
}

async fn nothing_changed(c: &Cluster, before: &Before, s: u64) {
    let after = c.client().status().await.expect("status");
    assert_eq!(after.leader_id, Some(before.leader), "the denied calls deposed nobody");
    assert!(after.term < 1_000, "term {}", after.term);
    assert!(after.applied_index >= before.applied);
    let held = c.client().list(pb::ListRequest::default()).await.expect("list").reservations;
    assert_eq!(held.len(), 1, "the session's reservation is intact: {held:?}");
    assert_eq!(held[0].session_id, s);
}

/// Waits (bounded) until node `id`'s audit log holds a denial of `method` whose message has
/// `rule`: a denial on either port is recorded like any other.
async fn audited(c: &Cluster, id: u64, method: &str, rule: &str) {
    let req = pb::ListAuditRequest { method: method.into(), denied_only: true, limit: 100, ..Default::default() };
    eventually(&format!("node {id} recording a denial of {method} ({rule})"), Duration::from_secs(10), || async {
        let got = c.client_of(id).list_audit(req.clone()).await.map_err(|e| e.to_string())?;
        let found = got.records.iter().any(|r| r.outcome == "PERMISSION_DENIED" && r.message.contains(rule));
        if found {
            Ok(())
        } else {
            Err(format!("{:?}", got.records))
        }
    })
    .await
}

fn assert_denied<T: std::fmt::Debug>(who: &str, r: Result<T, tonic::Status>, rule: &str) {
    let s = r.expect_err(who);
    assert_eq!(s.code(), Code::PermissionDenied, "{who}: {s:?}");
    assert!(s.message().contains(rule), "{who}: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_refuses_every_raft_call_when_there_is_a_peer_port() {
    let (c, leader, s) = cluster_holding_one().await;
    let before = before(&c, leader).await;
    let client_port = c.addrs[&leader].clone();
    // Even a member node's own certificate: Raft is served only on the peer port.
    for stem in [Some(format!("node-{leader}")), Some("client-ops".to_string()), None] {
        let who = format!("a vote on the client port with {stem:?}");
        let r = raft_at(&c, &client_port, stem.as_deref()).vote(forged_vote(leader)).await;
        assert_denied(&who, r, "rule peer-port: /qm.v1.RaftPeer/Vote is served only on the peer port");
    }
    let r = raft_at(&c, &client_port, Some(&format!("node-{leader}"))).propose(forged_close(s)).await;
    assert_denied("a forwarded write on the client port", r, "rule peer-port: /qm.v1.RaftPeer/Propose");
    let r = raft_at(&c, &client_port, Some(&format!("node-{leader}"))).read_index(pb::ReadIndexRequest {}).await;
    assert_denied("a read index on the client port", r, "rule peer-port: /qm.v1.RaftPeer/ReadIndex");
    nothing_changed(&c, &before, s).await;
    audited(&c, leader, "/qm.v1.RaftPeer/Vote", "rule peer-port").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_a_client_certificate_and_no_certificate() {
    let (c, leader, s) = cluster_holding_one().await;
    let before = before(&c, leader).await;
    let peer_port = c.peer_addrs[&leader].clone();
    // A certificate from the cluster CA that names no node (`qm cert client`).
    let r = raft_at(&c, &peer_port, Some("client-ops")).vote(forged_vote(leader)).await;
    assert_denied("a client certificate on the peer port", r, "rule peer-certificate");
    let r = raft_at(&c, &peer_port, Some("client-ops")).propose(forged_close(s)).await;
    assert_denied("a forwarded write with a client certificate", r, "rule peer-certificate");
    // No certificate: mutual TLS refuses the handshake, so no call gets an answer.
    let r = raft_at(&c, &peer_port, None).vote(forged_vote(leader)).await;
    let status = r.expect_err("no certificate on the peer port");
    assert_ne!(status.code(), Code::Ok);
    assert!(!status.message().contains("rule"), "refused before any call is read: {status:?}");
    // The peer port serves nothing else, whatever the certificate and token.
    let ep = tonic::transport::Endpoint::from_shared(format!("https://{peer_port}")).expect("endpoint");
    let ch = Connector::tls(c.tls_as(Some(&format!("node-{leader}")))).connect(ep);
    let r = qm_shared::client::Client::cluster(Transport::new(ch, Bearer::new(&c.token).expect("bearer")))
        .status(pb::StatusRequest {})
        .await;
    assert_denied("Status on the peer port", r, "rule peer-port: /qm.v1.Cluster/Status is not served on the peer port");
    nothing_changed(&c, &before, s).await;
    audited(&c, leader, "/qm.v1.RaftPeer/Vote", "rule peer-certificate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_a_node_certificate_naming_a_non_member() {
    let (c, leader, s) = cluster_holding_one().await;
    c.issue_node_certificate(9);
    let before = before(&c, leader).await;
    let peer_port = c.peer_addrs[&leader].clone();
    let r = raft_at(&c, &peer_port, Some("node-9")).vote(forged_vote(leader)).await;
    assert_denied("node 9's certificate on the peer port", r, "rule peer-certificate");
    let r = raft_at(&c, &peer_port, Some("node-9")).propose(forged_close(s)).await;
    assert_denied("a forwarded write from node 9", r, "rule peer-certificate");
    nothing_changed(&c, &before, s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_on_peer_ports_elects_serves_forwards_transfers_takes_a_member_and_survives_a_leader_kill() {
    let (mut c, leader, s) = cluster_holding_one().await;
    let status = c.client().status().await.expect("status");
    assert_eq!(status.leader_address, format!("https://{}", c.addrs[&leader]), "hints name the client address");
    for m in &status.members {
        assert_eq!(m.address, format!("https://{}", c.addrs[&m.node_id]), "{m:?}");
        assert_eq!(m.peer_address, format!("https://{}", c.peer_addrs[&m.node_id]), "{m:?}");
    }

    // A peer address past its bound, or the same as the address, is refused naming the field.
    let long = format!("https://{}:7400", "h".repeat(300));
    for (peer_address, says) in [(long.as_str(), "at most 256"), ("https://127.0.0.1:1", "must differ from address")] {
        let req = pb::AddLearnerRequest {
            node_id: 7,
            address: "https://127.0.0.1:1".into(),
            peer_address: peer_address.into(),
            wait_caught_up: false,
        };
        let s = c.client().add_learner(req).await.expect_err("a bad peer address");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("peer_address") && s.message().contains(says), "{s:?}");
    }
    assert_eq!(c.client().status().await.expect("status").members.len(), 3, "nothing was added");

    // A fourth node with a peer port joins through `qm cluster add --peer-addr`.
    c.issue_node_certificate(4);
    c.peer_addrs.insert(4, format!("127.0.0.1:{}", free_port()));
    c.spawn(4, true);
    let (addr4, peer4) = (c.addrs[&4].clone(), c.peer_addrs[&4].clone());
    let added = c.qm_json(&["cluster", "add", "4", &addr4, "--peer-addr", &peer4]);
    let fourth = added["members"].as_array().expect("members").iter().find(|m| m["node_id"] == 4).cloned();
    let fourth = fourth.expect("node 4 is a member");
    assert_eq!(fourth["role"], "voter", "{added}");
    assert_eq!(fourth["peer_address"], format!("https://{peer4}"), "{added}");
    // It replicates over its peer port: it applies what the leader has.
    let applied = c.client().status().await.expect("status").applied_index;
    c.wait_applied(4, applied).await;

    // A write and a read through a follower are forwarded to the leader's peer port (asked
    // without the client library, which would follow a leader hint instead).
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).expect("a follower");
    let ep = tonic::transport::Endpoint::from_shared(format!("https://{}", c.addrs[&follower])).expect("endpoint");
    let via = Transport::new(Connector::tls(c.tls_as(None)).connect(ep), Bearer::new(&c.token).expect("bearer"));
    let open = pb::OpenSessionRequest { owner: "via-follower".into(), ttl_ms: 60_000 };
    qm_shared::client::Client::sessions(via.clone()).open_session(open).await.expect("a write through a follower");
    let listed = qm_shared::client::Client::reservations(via).list(pb::ListRequest::default()).await;
    let listed = listed.expect("a read through a follower").into_inner().reservations;
    assert!(listed.iter().any(|r| r.session_id == s), "{listed:?}");

    // Leadership is handed over through Elect on the target's peer port. Asked of the target,
    // a follower given as the client's only endpoint: the client follows its leader hint once
    // a Status names that address a member.
    let to = pb::TransferLeaderRequest { to_node_id: Some(follower) };
    let moved = c.client_of(follower).transfer_leader(to).await.expect("transfer through a follower");
    assert_eq!(moved.leader_id, Some(follower), "{moved:?}");
    let leader = c.leader(&[follower]).await;

    // The leader dies; the others (node 4 among them) elect one over their peer ports.
    c.kill(leader);
    let others: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|i| *i != leader).collect();
    let next = c.leader(&others).await;
    let client = c.client_among(&others);
    let s2 = client.open_session("ops", 60_000).await.expect("open after the kill").session_id;
    acquire_wait(&client, s2, "ops", "pg:db/table:u").await.expect("acquire after the kill");
    let held = client.list(pb::ListRequest::default()).await.expect("list").reservations;
    assert_eq!(held.len(), 2, "the first session's reservation survived: {held:?}");
    assert!(held.iter().any(|r| r.session_id == s));
    let status = eventually("the new leader named by its client address", Duration::from_secs(15), || async {
        let st = client.status().await.map_err(|e| e.to_string())?;
        if st.leader_id == Some(next) {
            Ok(st)
        } else {
            Err(format!("leader {:?}", st.leader_id))
        }
    })
    .await;
    assert_eq!(status.leader_address, format!("https://{}", c.addrs[&next]));
}

/// `qm coordinator run` with peer addresses that do not add up: exit 2 naming the key, and
/// nothing created.
#[test]
fn peer_addresses_that_do_not_add_up_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, p) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(qm_bin())
            .args(["coordinator", "run", "--id", "1", "--listen", &a, "--admin-listen", ""])
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .args(args)
            .output()
            .expect("run qm");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--peer-listen".into(), p.clone(), "--peers".into(), format!("1={a},2=127.0.0.1:1/127.0.0.1:2")],
            "gives this node (1) no peer address",
        ),
        (vec!["--peers".into(), format!("1={a}/{p}")], "node.peer_listen is not set"),
        (vec!["--peer-listen".into(), p.clone(), "--peers".into(), format!("1={a}/")], "no peer address after it"),
        (vec!["--peer-listen".into(), p.clone(), "--peers".into(), format!("1={a}/{a}")], "must differ"),
        (vec!["--peer-listen".into(), p.clone(), "--peers".into(), format!("1={a}/nowhere")], "is not host:port"),
        (vec!["--peer-listen".into(), a.clone()], "node.peer_listen"),
        (vec!["--peer-listen".into(), "nowhere".into()], "node.peer_listen = \"nowhere\": not an ip:port"),
    ];
    for (args, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!dir.path().join("d").exists(), "nothing was created");
}
