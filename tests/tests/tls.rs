//! Transport security as users and attackers meet it: real `qm coordinator` processes serving
//! TLS with certificates `qm cert` made, and the ways in that must stay shut.

use qm_shared::client::{Bearer, Client, Connector, Transport};
use qm_shared::pb::v1 as pb;
use qm_tests::{acquire_wait, free_port, qm_bin, Cluster};
use tonic::Code;

/// A raw Raft peer client of node `id` over TLS, presenting the `ops` client certificate or
/// none.
fn peer(c: &Cluster, id: u64, with_client_cert: bool) -> pb::raft_peer_client::RaftPeerClient<Transport> {
    let ep = tonic::transport::Endpoint::from_shared(format!("https://{}", c.addrs[&id])).expect("endpoint");
    let ch = Connector::tls(c.client_tls(with_client_cert)).connect(ep);
    pb::raft_peer_client::RaftPeerClient::new(Transport::new(ch, Bearer::default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_clients_and_refuses_what_is_not_a_member_node() {
    let c = Cluster::start_tls(3);
    let leader = c.leader(&[1, 2, 3]).await;
    let client = c.client();
    let s = client.open_session("ops", 60_000).await.expect("open over TLS").session_id;
    acquire_wait(&client, s, "ops", "pg:db/table:t").await.expect("acquire over TLS");
    let json = c.qm_json(&["cluster", "status"]);
    assert!(
        json["members"].as_array().unwrap().iter().all(|m| m["address"].as_str().unwrap().starts_with("https://")),
        "{json}"
    );
    let applied = c.client().status().await.expect("status").applied_index;

    // A forged vote with a higher term, from a client certificate and from no certificate:
    // refused before openraft sees it.
    let vote = qm_coordinator::raft::network::to_bytes(&openraft::raft::VoteRequest::<u64>::new(
        openraft::Vote::new(1_000, 9),
        None,
    ));
    for (who, cert) in [("a client certificate", true), ("no certificate", false)] {
        let r = peer(&c, leader, cert).vote(pb::VoteRequest { target_node_id: leader, payload: vote.clone() }).await;
        let s = r.expect_err(who);
        assert_eq!(s.code(), Code::PermissionDenied, "{who}: {s:?}");
        assert!(s.message().contains("rule peer-certificate"), "{who}: {s:?}");
    }
    let command = qm_coordinator::raft::network::to_bytes(&qm_coordinator::state::Command::CloseSession {
        session: qm_coordinator::state::SessionId(s),
    });
    let r = peer(&c, leader, true).propose(pb::ProposeRequest { command }).await;
    assert_eq!(r.expect_err("propose from a client certificate").code(), Code::PermissionDenied);

    let after = c.client().status().await.expect("status");
    assert_eq!(after.leader_id, Some(leader), "the forged vote deposed nobody");
    assert!(after.term < 1_000, "term {}", after.term);
    assert!(after.applied_index >= applied);
    assert_eq!(
        c.client().list(pb::ListRequest::default()).await.expect("list").reservations.len(),
        1,
        "the session is intact"
    );

    // Plaintext to the TLS port gets no answer.
    let plain = Client::new([c.addrs[&leader].as_str()]).and_then(|cl| cl.with_token(&c.token)).expect("client");
    let r = tokio::time::timeout(std::time::Duration::from_secs(30), plain.status()).await.expect("bounded");
    assert!(r.is_err(), "plaintext answered: {r:?}");
}

/// The body of `GET path` on `addr` (HTTP/1.0), if it answers.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

#[test]
fn plaintext_on_a_non_loopback_address_needs_insecure_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("0.0.0.0:{}", free_port());
    let run = |extra: &[&str]| {
        std::process::Command::new(qm_bin())
            .args(["coordinator", "run", "--id", "1", "--listen", &listen, "--admin-listen", ""])
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .args(extra)
            .output()
            .expect("run qm")
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address") && err.contains("--insecure"), "{err}");
    assert!(!dir.path().join("d").exists(), "nothing was created");

    // With --insecure it serves, and says so at start and in /health.
    let admin = format!("127.0.0.1:{}", free_port());
    let mut node = std::process::Command::new(qm_bin())
        .args(["coordinator", "run", "--id", "1", "--listen", &listen, "--admin-listen", &admin, "--insecure"])
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn qm coordinator run");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let health = rt.block_on(qm_tests::eventually("/health answering", std::time::Duration::from_secs(20), || async {
        http_get(&admin, "/health").ok_or_else(|| "no answer".to_string())
    }));
    let _ = node.kill();
    let _ = node.wait();
    assert!(health.contains("\"insecure\":true") && health.contains("\"tls\":false"), "{health}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(node.stderr.as_mut().expect("stderr"), &mut stderr).expect("stderr");
    assert!(stderr.contains("WARNING: --insecure"), "{stderr}");

    // The CLI refuses to send a token in clear text to a non-loopback endpoint.
    let out = std::process::Command::new(qm_bin())
        .args(["reserve", "list", "--endpoint", "10.255.255.1:7070"])
        .env("QM_TOKEN", "qm_secret")
        .output()
        .expect("run qm");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-ca"));
}

/// A client certificate is an identity: with no bearer token, the principal it names
/// (`ops.client.qm`, from `qm cert client --name ops`) gets what the token of that name
/// grants, and nothing when no token has that name or it was revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_its_principal_and_the_token_of_that_name_grants_it() {
    let c = Cluster::start_tls(1);
    c.leader(&[1]).await;
    let by_cert = Client::new(c.addrs.values()).and_then(|cl| cl.with_tls(c.client_tls(true))).expect("client");
    let declare =
        || by_cert.declare_resource(pb::DeclareResourceRequest { path: "pg:cert".into(), ..Default::default() });
    let denied = declare().await.expect_err("no token named ops yet");
    assert_eq!(denied.code(), Code::Unauthenticated, "{denied:?}");
    assert!(denied.message().contains("names principal \"ops\""), "{denied:?}");
    c.qm_json(&["token", "create", "--name", "ops", "--role", "operator"]);
    declare().await.expect("the certificate's principal declares, as an operator may");
    let who = c.qm_json(&["reserve", "list"]);
    assert!(who["reservations"].as_array().unwrap().is_empty());
    // No certificate and no token: nobody.
    let anonymous = Client::new(c.addrs.values()).and_then(|cl| cl.with_tls(c.client_tls(false))).expect("client");
    let s = anonymous.list(pb::ListRequest::default()).await.expect_err("nobody");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    // Revoked: the certificate alone grants nothing any more, and nothing changed.
    c.qm_json(&["token", "revoke", "ops"]);
    let denied = declare().await.expect_err("revoked");
    assert_eq!(denied.code(), Code::Unauthenticated, "{denied:?}");
}
