//! TLS on the client and peer ports (`--tls-cert`, `--tls-key`, `--tls-ca`): a node serves
//! HTTPS and nothing else on its port; a cluster replicates and hands requests on over TLS;
//! a member that does not speak TLS, or whose certificate the cluster's CA did not sign, is
//! refused at the handshake; bad flags stop the node at start with a message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use restm_tests::{Node, free_port, restm_bin, temp_dir};
use serde_json::{Value, json};

/// A self-signed certificate for 127.0.0.1, written as `cert.pem` and `key.pem` in `dir`.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("a certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A client that trusts only `cert`.
fn trusting(cert: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn tls_args(cert: &Path, key: &Path) -> Vec<String> {
    vec!["--tls-cert".into(), cert.display().to_string(), "--tls-key".into(), key.display().to_string()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_tls_serves_https_and_refuses_plain_http_and_untrusting_clients() {
    let dir = temp_dir("tls");
    let (cert, key) = certificate(&dir);
    let args = tls_args(&cert, &key);
    let node = Node::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let https = format!("https://127.0.0.1:{}", node.port);
    let client = trusting(&cert);
    let r = client.put(format!("{https}/ptr/a")).json(&json!({"over": "tls"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(format!("{https}/ptr/a")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"over": "tls"}));
    // Plain HTTP on the TLS port gets no answer, and changes nothing.
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    assert!(plain.put(format!("http://127.0.0.1:{}/ptr/a", node.port)).json(&json!(1)).send().await.is_err());
    // A client that does not trust the certificate stops at the handshake.
    let stranger = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    assert!(stranger.get(format!("{https}/health")).send().await.is_err());
    let r = client.get(format!("{https}/ptr/a")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"over": "tls"}));
    // The CLI trusts the certificate with --ca, and only then.
    let get = |ca: Option<&Path>| {
        let mut cmd = Command::new(restm_bin());
        cmd.args(["get", "a", "--target", &https]).env_remove("RESTM_CA");
        if let Some(ca) = ca {
            cmd.arg("--ca").arg(ca);
        }
        cmd.output().unwrap()
    };
    let out = get(Some(&cert));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"over": "tls"}));
    let out = get(None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the node"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restm_events_subscribes_over_wss_trusting_ca_and_only_then() {
    use std::io::BufRead;
    let dir = temp_dir("tls-events");
    let (cert, key) = certificate(&dir);
    let args = tls_args(&cert, &key);
    let node = Node::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let https = format!("https://127.0.0.1:{}", node.port);
    let client = trusting(&cert);
    // Without --ca the system's roots do not know the self-signed certificate.
    let out = Command::new(restm_bin())
        .args(["events", "--target", &https])
        .env_remove("RESTM_CA")
        .output()
        .expect("run restm events");
    assert!(!out.status.success(), "subscribed without trusting the certificate");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot subscribe"), "{out:?}");
    // With it, the stream carries a commit made after subscribing.
    let mut events = Command::new(restm_bin())
        .args(["events", "--target", &https, "--prefix", "over-wss"])
        .arg("--ca")
        .arg(&cert)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run restm events");
    let stdout = events.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = None;
    for i in 0.. {
        // Written until one shows up: the subscription opens at some point after the spawn.
        let r = client.put(format!("{https}/ptr/over-wss")).json(&json!(i)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen = Some(line);
            break;
        }
        assert!(Instant::now() < deadline, "no event over wss:// within 20 s");
    }
    let _ = events.kill();
    let _ = events.wait();
    let line = seen.expect("an event");
    let event: Value = serde_json::from_str(&line).expect("one JSON event per line");
    assert!(line.contains("over-wss"), "{event}");
}

/// A member process of a TLS cluster, killed when dropped.
struct Member {
    child: Child,
    https: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn member(id: u64, port: u16, peer: u16, initial: &str, tls: &[String]) -> Member {
    let data = temp_dir(&format!("tls-member{id}"));
    let child = Command::new(restm_bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .args(["--node-id", &id.to_string(), "--peer-listen", &format!("127.0.0.1:{peer}")])
        .args(["--initial-cluster", initial])
        .args(tls)
        .env("RUST_LOG", "warn,openraft=error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn restm");
    Member { child, https: format!("https://127.0.0.1:{port}") }
}

async fn status(client: &reqwest::Client, base: &str) -> Option<Value> {
    client.get(format!("{base}/cluster")).send().await.ok()?.json().await.ok()
}

/// Until `what` holds of member `base`'s `/cluster`, at most 30 s.
async fn until(client: &reqwest::Client, base: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = status(client, base).await
            && ok(&s)
        {
            return s;
        }
        assert!(Instant::now() < deadline, "{base}: {what} within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the third member, which must not get in, dials and answers its peers.
enum Outsider {
    /// Plain TCP.
    Plain,
    /// TLS with a certificate of its own, which the cluster's CA did not sign.
    Stranger,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_replicates_and_forwards_over_tls_and_refuses_a_member_without_it() {
    tls_cluster(Outsider::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_refuses_a_member_whose_certificate_its_ca_did_not_sign() {
    tls_cluster(Outsider::Stranger).await;
}

async fn tls_cluster(outsider: Outsider) {
    let dir = temp_dir("tls");
    let (cert, key) = certificate(&dir);
    let tls = tls_args(&cert, &key);
    let other = temp_dir("tls-other");
    let (other_cert, other_key) = certificate(&other);
    let third = match outsider {
        Outsider::Plain => Vec::new(),
        Outsider::Stranger => tls_args(&other_cert, &other_key),
    };
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("{}=https://127.0.0.1:{peer}", i + 1))
        .collect();
    let initial = initial.join(",");
    // Members 1 and 2 speak TLS; member 3 does not, and must not get in.
    let members = [
        member(1, ports[0].0, ports[0].1, &initial, &tls),
        member(2, ports[1].0, ports[1].1, &initial, &tls),
        member(3, ports[2].0, ports[2].1, &initial, &third),
    ];
    let client = trusting(&cert);
    let s =
        until(&client, &members[0].https, "a leader", |s| s["groups"][0]["leader"].as_u64().is_some()).await;
    let leader = s["groups"][0]["leader"].as_u64().unwrap();
    assert!(leader == 1 || leader == 2, "{s}");
    let follower = &members[if leader == 1 { 1 } else { 0 }].https;
    // Written through the follower: handed on to the leader over TLS, replicated over TLS.
    let r = client.put(format!("{follower}/ptr/x")).json(&json!(7)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = client.get(format!("{follower}/ptr/x")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!(7));
    // Member 3, plain TCP, is refused at the handshake: never heard from, and it never learns
    // of a leader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = status(&client, &members[leader as usize - 1].https).await.unwrap();
    let seen_third = s["members"].as_array().unwrap().iter().find(|m| m["node_id"] == 3).cloned().unwrap();
    assert_ne!(seen_third["state"], "up", "{s}");
    let own = match outsider {
        Outsider::Plain => reqwest::Client::new(),
        Outsider::Stranger => trusting(&other_cert),
    };
    let scheme = if third.is_empty() { "http" } else { "https" };
    let seen = status(&own, &format!("{scheme}://127.0.0.1:{}", ports[2].0)).await.unwrap();
    assert!(seen["groups"][0]["leader"].is_null(), "the outsider joined: {seen}");
}

#[test]
fn bad_tls_flags_stop_the_node_at_start_with_a_message() {
    let dir = temp_dir("tls");
    let (cert, key) = certificate(&dir);
    let run = |args: &[&str]| {
        let data = temp_dir("tls-bad");
        let out = Command::new(restm_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"])
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    assert!(run(&["--tls-cert", &cert]).contains("--tls-key"), "a certificate needs its key");
    let missing = dir.join("missing.pem").display().to_string();
    let err = run(&["--tls-cert", &missing, "--tls-key", &key]);
    assert!(err.contains("cannot set up TLS") && err.contains("missing.pem"), "{err}");
    // A key in place of the certificate.
    let err = run(&["--tls-cert", &key, "--tls-key", &key]);
    assert!(err.contains("no PEM certificate"), "{err}");
    let err = run(&["--tls-cert", &cert, "--tls-key", &cert]);
    assert!(err.contains("no private key"), "{err}");
    // A self-signed CA certificate: rustls peers would refuse it as a server's, so the node
    // says so now rather than at every handshake.
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let signing = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&signing).unwrap();
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    std::fs::write(&ca_cert, ca.pem()).unwrap();
    std::fs::write(&ca_key, signing.serialize_pem()).unwrap();
    let (ca_cert, ca_key) = (ca_cert.display().to_string(), ca_key.display().to_string());
    let err = run(&["--tls-cert", &ca_cert, "--tls-key", &ca_key]);
    assert!(err.contains("CaUsedAsEndEntity") && err.contains("CA:FALSE"), "{err}");
}
