//! Metrics that only authorised scrapers read (issue 22): `metrics --listen`
//! over TLS with client certificates and with a bearer token, scraped by a
//! real HTTPS client (rustls) from the real binary serving a pin root with a
//! really shaped pod; start-up refused on bad files; and a scrape that takes
//! no pin root lock, so that Prometheus never delays an ADD.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Background, Pod};
use serde_json::json;
use tokio_rustls::rustls;

/// A scratch directory of PEM files made by the openssl CLI: a CA, a
/// server certificate for 127.0.0.1 and a client certificate signed by it,
/// and a second CA with a client certificate of its own.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("brl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Certs { dir };
        certs.ca("ca");
        certs.ca("other-ca");
        certs.signed("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
        certs.signed("client", "ca", "extendedKeyUsage=clientAuth\n");
        certs.signed("stranger", "other-ca", "extendedKeyUsage=clientAuth\n");
        certs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(&self.dir).output().expect("the openssl CLI");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn ca(&self, name: &str) {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        self.openssl(&["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", &key, "-out", &pem, "-days", "1", "-subj", &format!("/CN={name}")]);
    }

    fn signed(&self, name: &str, ca: &str, extensions: &str) {
        let (key, csr, pem, ext) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        std::fs::write(self.path(&ext), extensions).unwrap();
        self.openssl(&["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]);
        self.openssl(&[
            "x509", "-req", "-in", &csr, "-CA", &format!("{ca}.pem"), "-CAkey", &format!("{ca}.key"), "-CAcreateserial", "-out", &pem, "-days", "1", "-extfile", &ext,
        ]);
    }

    /// A TLS client trusting the CA, presenting `identity`'s certificate if any.
    fn client(&self, identity: Option<&str>) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let chain = CertificateDer::pem_file_iter(self.path(&format!("{name}.pem"))).unwrap().map(Result::unwrap).collect();
                let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        };
        Arc::new(config)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `metrics --listen 127.0.0.1:0` server and everything it writes to stderr.
struct Server {
    addr: String,
    log: Arc<Mutex<String>>,
    _process: Background,
}

impl Server {
    fn start(pin_root: &Path, extra: &[&str]) -> Server {
        let mut command = Command::new(common::plugin());
        command.args(["metrics", "--listen", "127.0.0.1:0", "--pin-root"]).arg(pin_root).args(extra).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let process = Background(child);
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut first = true;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if first {
                    let _ = tx.send(line.clone());
                    first = false;
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        let addr = line.rsplit("://").next().unwrap_or_default().trim_end_matches("/metrics").to_string();
        assert!(line.contains("serving metrics on") && !addr.is_empty(), "metrics --listen {extra:?} did not say where it listens: {line:?}");
        Server { addr, log, _process: process }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// An HTTP response: status, headers (lowercased) and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// GET /metrics over a new connection, over TLS when `tls` is given, with
/// `Authorization: Bearer token` when `token` is. An error when no response
/// came (a refused TLS handshake).
fn get(addr: &str, tls: Option<Arc<rustls::ClientConfig>>, token: Option<&str>) -> Result<Reply, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    let mut raw = Vec::new();
    match tls {
        None => {
            let mut s = tcp;
            s.write_all(request.as_bytes()).map_err(|e| format!("write: {e}"))?;
            s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
        }
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            s.write_all(request.as_bytes()).map_err(|e| format!("TLS write: {e}"))?;
            if let Err(e) = s.read_to_end(&mut raw) {
                // A reply then a close without close_notify is still a reply.
                if raw.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
                    return Err(format!("TLS read: {e}"));
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no status line: {head:?}"))?;
    Ok(Reply { status, head: head.to_lowercase(), body: body.to_string() })
}

/// A pod shaped through the real ADD, with its own pin root.
fn shaped_pod(tag: &str) -> Pod {
    let pod = Pod::new(tag);
    pod.add(json!({"kubernetes.io/egress-bandwidth": "10M", "kubernetes.io/ingress-bandwidth": "20M"}));
    pod
}

/// The exposition holds the pod's egress limit (10M: 1.25 MB/s) under its
/// container ID, and bpf_ratelimit_up 1.
fn assert_has_pod(body: &str, pod: &Pod) {
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text");
    let limit = scrape.samples.iter().find(|s| {
        s.metric == "bpf_ratelimit_limit_bytes_per_second" && s.labels.get("container_id") == Some(pod.bed.name.as_str()) && s.labels.get("direction") == Some("egress")
    });
    assert!(matches!(limit.map(|s| &s.value), Some(prometheus_parse::Value::Gauge(v)) if *v == 1.25e6), "no egress limit of the pod in:\n{body}");
    // The whole line: "bpf_ratelimit_up 1" could be the start of a HELP text.
    assert!(body.lines().any(|l| l == "bpf_ratelimit_up 1"), "{body}");
}

#[test]
fn https_with_client_certificates_serves_the_cas_clients_only() {
    let pod = shaped_pod("mtls");
    let certs = Certs::new("mtls");
    let p = |n: &str| certs.path(n).to_string_lossy().to_string();
    let server = Server::start(&pod.pin_root, &["--tls-cert", &p("server.pem"), "--tls-key", &p("server.key"), "--client-ca", &p("ca.pem")]);

    let ok = get(&server.addr, Some(certs.client(Some("client"))), None).expect("a scrape with the CA's client certificate");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_has_pod(&ok.body, &pod);
    println!("with the CA's client certificate: {} and {} bytes", ok.status, ok.body.len());

    let refused = [
        ("no client certificate", get(&server.addr, Some(certs.client(None)), None)),
        ("a client certificate from another CA", get(&server.addr, Some(certs.client(Some("stranger"))), None)),
        ("plain HTTP to the TLS port", get(&server.addr, None, None)),
    ];
    for (what, reply) in &refused {
        println!("{what}: {reply:?}");
        match reply {
            Err(_) => {}
            Ok(r) => panic!("{what}: got a reply, status {}:\n{}", r.status, r.body),
        }
    }
    // Failed handshakes neither stop the server nor flood its log.
    let again = get(&server.addr, Some(certs.client(Some("client"))), None).expect("a scrape after the refused ones");
    assert_eq!(again.status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log();
    println!("server log:\n{log}");
    let warnings = log.lines().filter(|l| l.contains("TLS handshake failed")).count();
    assert_eq!(warnings, 1, "three failed handshakes within a minute should warn once:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    drop(server);
    pod.del();
}

/// The metrics-tls kustomize component's own args, run: its flags are ones
/// this binary accepts, and with the Secret's three files where the
/// component mounts them it serves the CA's clients only.
#[test]
fn the_metrics_tls_component_serves_what_its_args_say() {
    let docs = common::kustomize::render("deploy/examples/kubeadm-metrics-tls");
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
    let metrics = ds["spec"]["template"]["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == "metrics").expect("the metrics container");
    let args: Vec<String> = metrics["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let mount = metrics["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "metrics-tls").expect("the Secret's mount")["mountPath"].as_str().unwrap().to_string();
    println!("the component runs: {args:?}, the Secret at {mount}");
    assert_eq!(args[..3], ["metrics", "--listen", "0.0.0.0:9637"], "{args:?}");
    // The Secret's keys (kubernetes.io/tls and ca.crt), in a directory of
    // our own standing in for the mount.
    let pod = shaped_pod("mtlscomp");
    let certs = Certs::new("mtlscomp");
    let secret = certs.path("secret");
    std::fs::create_dir_all(&secret).unwrap();
    for (from, to) in [("server.pem", "tls.crt"), ("server.key", "tls.key"), ("ca.pem", "ca.crt")] {
        std::fs::copy(certs.path(from), secret.join(to)).unwrap();
    }
    let extra: Vec<String> = args[3..].iter().map(|a| a.replace(&mount, &secret.to_string_lossy())).collect();
    assert!(extra.iter().any(|a| a.starts_with(&*secret.to_string_lossy())), "the args name no file in the Secret's mount: {args:?}");
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let server = Server::start(&pod.pin_root, &extra);
    let ok = get(&server.addr, Some(certs.client(Some("client"))), None).expect("a scrape with the CA's client certificate");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_has_pod(&ok.body, &pod);
    assert!(get(&server.addr, Some(certs.client(None)), None).is_err(), "the component's server answered a client with no certificate");
    assert!(get(&server.addr, None, None).is_err(), "the component's server answered plain HTTP");
    drop(server);
    pod.del();
}

#[test]
fn a_bearer_token_is_required_over_plain_http_and_over_tls_and_rotates() {
    let pod = shaped_pod("token");
    let certs = Certs::new("token");
    let p = |n: &str| certs.path(n).to_string_lossy().to_string();
    let token_file = certs.path("token");
    std::fs::write(&token_file, "first-token-0123456789\n").unwrap();
    let plain = Server::start(&pod.pin_root, &["--bearer-token-file", &p("token")]);
    let tls = Server::start(&pod.pin_root, &["--bearer-token-file", &p("token"), "--tls-cert", &p("server.pem"), "--tls-key", &p("server.key")]);
    let servers = [("plain HTTP", &plain, None), ("TLS", &tls, Some(certs.client(None)))];

    let check = |good: &str, bad: &str| {
        for (what, server, client) in &servers {
            let none = get(&server.addr, client.clone(), None).unwrap();
            assert_eq!(none.status, 401, "{what}, no token: {none:?}");
            assert!(none.head.contains("www-authenticate: bearer"), "{what}: {}", none.head);
            assert!(!none.body.contains("bpf_ratelimit"), "{what}: a 401 carried metrics");
            let wrong = get(&server.addr, client.clone(), Some(bad)).unwrap();
            assert_eq!(wrong.status, 403, "{what}, wrong token: {wrong:?}");
            assert!(!wrong.body.contains("bpf_ratelimit"), "{what}: a 403 carried metrics");
            let right = get(&server.addr, client.clone(), Some(good)).unwrap();
            assert_eq!(right.status, 200, "{what}, right token: {right:?}");
            assert_has_pod(&right.body, &pod);
            println!("{what}: no token {}, wrong {}, right {}", none.status, wrong.status, right.status);
        }
    };
    check("first-token-0123456789", "first-token-0123456788");
    // A rotated Secret: a new file renamed over the old one (new inode).
    let next = certs.path("token.new");
    std::fs::write(&next, "second-token-9876543210").unwrap();
    std::fs::rename(&next, &token_file).unwrap();
    check("second-token-9876543210", "first-token-0123456789");
    drop((plain, tls));
    pod.del();
}

/// Runs `metrics` with `args`; it must exit (not serve) within 10 s.
fn refused_start(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(common::plugin()).arg("metrics").args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("metrics {args:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (child.wait().unwrap().code(), err)
}

#[test]
fn missing_unpaired_or_invalid_files_stop_the_server_with_a_clear_message() {
    let certs = Certs::new("badfiles");
    let p = |n: &str| certs.path(n).to_string_lossy().to_string();
    std::fs::write(certs.path("garbage.pem"), "not PEM at all\n").unwrap();
    std::fs::write(certs.path("broken.pem"), "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
    std::fs::write(certs.path("empty-token"), " \n").unwrap();
    let listen = ["--listen", "127.0.0.1:0"];
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--tls-cert".into(), p("server.pem"), "--tls-key".into(), p("missing.key")], "cannot read --tls-key"),
        (vec!["--tls-cert".into(), p("server.pem")], "--tls-cert needs --tls-key"),
        (vec!["--tls-key".into(), p("server.key")], "--tls-key needs --tls-cert"),
        (vec!["--client-ca".into(), p("ca.pem")], "--client-ca needs --tls-cert and --tls-key"),
        (vec!["--tls-cert".into(), p("broken.pem"), "--tls-key".into(), p("server.key")], "is not valid PEM"),
        (vec!["--tls-cert".into(), p("garbage.pem"), "--tls-key".into(), p("server.key")], "holds no PEM certificate"),
        (vec!["--tls-cert".into(), p("server.pem"), "--tls-key".into(), p("garbage.pem")], "holds no PEM private key"),
        (vec!["--tls-cert".into(), p("server.pem"), "--tls-key".into(), p("client.key")], "not a valid certificate and its private key"),
        (vec!["--tls-cert".into(), p("server.pem"), "--tls-key".into(), p("server.key"), "--client-ca".into(), p("missing.pem")], "cannot read --client-ca"),
        (vec!["--bearer-token-file".into(), p("missing-token")], "cannot read --bearer-token-file"),
        (vec!["--bearer-token-file".into(), p("empty-token")], "is empty"),
    ];
    for (flags, expected) in &cases {
        let args: Vec<&str> = listen.iter().copied().chain(flags.iter().map(String::as_str)).collect();
        let (code, err) = refused_start(&args);
        println!("{flags:?}: exit {code:?}: {}", err.trim());
        assert_eq!(code, Some(1), "{flags:?}: {err}");
        assert!(err.contains(expected), "{flags:?}: expected {expected:?} in {err:?}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!err.contains("serving metrics"), "{flags:?} started serving: {err}");
    }
    // Server flags without a server.
    let (code, err) = refused_start(&["--tls-cert", &p("server.pem"), "--tls-key", &p("server.key")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("give --listen"), "{err}");
}

/// Holds the pin root's lock as another bpf-ratelimit command would (the
/// same flock on the directory ADD and DEL take).
fn hold_lock(pin_root: &Path) -> std::fs::File {
    let held = std::fs::File::open(pin_root).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0, "the pin root is locked already");
    held
}

#[test]
fn a_scrape_answers_while_the_pin_roots_lock_is_held_and_list_waits_for_it() {
    let pod = shaped_pod("scrapelock");
    let server = Server::start(&pod.pin_root, &[]);
    let held = hold_lock(&pod.pin_root);
    let started = Instant::now();
    let reply = get(&server.addr, None, None).expect("a scrape while the lock is held");
    let took = started.elapsed();
    println!("scrape with the pin root's lock held: {} in {took:?}", reply.status);
    assert_eq!(reply.status, 200);
    assert_has_pod(&reply.body, &pod);
    assert!(took < Duration::from_secs(1), "the scrape took {took:?} with the lock held");
    // The one-shot form reads the same way.
    let started = Instant::now();
    let out = Command::new(common::plugin()).args(["metrics", "--pin-root"]).arg(&pod.pin_root).output().unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_has_pod(&String::from_utf8_lossy(&out.stdout), &pod);
    assert!(took < Duration::from_secs(1), "metrics took {took:?} with the lock held");

    // `list` keeps the lock (it reports unreadable pods as errors): it
    // waits while the lock is held and finishes once it is free.
    let mut list = Background(
        Command::new(common::plugin()).args(["list", "--interval", "0.05", "--pin-root"]).arg(&pod.pin_root).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(list.0.try_wait().unwrap().is_none(), "list did not wait for the pin root's lock");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = list.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "list did not finish once the lock was free");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut table = String::new();
    list.0.stdout.take().unwrap().read_to_string(&mut table).unwrap();
    println!("list, once the lock was free: {status}\n{table}");
    assert!(status.success());
    assert!(table.contains("default/test"), "{table}");
    drop(server);
    pod.del();
}

/// What a scraper saw: scrapes made, pods skipped in them, and every scrape
/// that failed or said bpf_ratelimit_up 0.
#[derive(Default)]
struct Scraped {
    scrapes: u64,
    skipped: u64,
    failures: Vec<String>,
}

/// A thread scraping /metrics over plain HTTP in a loop, `pause` apart.
struct Scraper {
    stop: Arc<AtomicBool>,
    /// Pods skipped so far, as the scrapes go.
    skipped: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Scraped>,
}

impl Scraper {
    fn start(addr: &str, pause: Duration) -> Scraper {
        let (stop, skipped) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (addr, flag, skipped_so_far) = (addr.to_string(), stop.clone(), skipped.clone());
        let thread = std::thread::spawn(move || {
            let mut seen = Scraped::default();
            while !flag.load(Ordering::SeqCst) {
                match get(&addr, None, None) {
                    Ok(r) if r.status == 200 && r.body.lines().any(|l| l == "bpf_ratelimit_up 1") => {
                        let skipped = r.body.lines().find_map(|l| l.strip_prefix("bpf_ratelimit_scrape_skipped_pods ")).and_then(|v| v.parse::<u64>().ok());
                        match skipped {
                            Some(n) => {
                                seen.skipped += n;
                                skipped_so_far.fetch_add(n, Ordering::Relaxed);
                            }
                            None => seen.failures.push("no bpf_ratelimit_scrape_skipped_pods".into()),
                        }
                    }
                    Ok(r) => seen.failures.push(format!(
                        "{}: {}",
                        r.status,
                        r.body.lines().filter(|l| l.starts_with("bpf_ratelimit_up") || l.starts_with("bpf_ratelimit_read_errors")).collect::<Vec<_>>().join(" ")
                    )),
                    Err(e) => seen.failures.push(e),
                }
                seen.scrapes += 1;
                std::thread::sleep(pause);
            }
            seen
        });
        Scraper { stop, skipped, thread }
    }

    fn stop(self) -> Scraped {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Scrapes as fast as they go while one pod is added and deleted over and
/// over beside a shaped one: a scrape that reads the pod half added or half
/// removed skips it and counts it (bpf_ratelimit_scrape_skipped_pods); no
/// scrape fails or says bpf_ratelimit_up 0, and the other pod is in every one.
#[test]
fn scrapes_during_add_and_del_skip_the_pod_in_flight_and_report_no_error() {
    let anchor = shaped_pod("racea");
    let mut cycled = Pod::new("racec");
    cycled.pin_root = anchor.pin_root.clone();
    let server = Server::start(&cycled.pin_root, &[]);
    let conf = cycled.config(json!({"kubernetes.io/egress-bandwidth": "10M"}));
    let scraper = Scraper::start(&server.addr, Duration::ZERO);
    let started = Instant::now();
    let mut cycles = 0;
    // 100 cycles, and on until some scrape has caught the pod in flight,
    // for at most 30 s.
    while started.elapsed() < Duration::from_secs(30) && (cycles < 100 || scraper.skipped.load(Ordering::Relaxed) == 0) {
        let out = cycled.invoke("ADD", &conf);
        assert_eq!(out.code, 0, "ADD: {}{}", out.stdout, out.stderr);
        cycled.del();
        cycles += 1;
    }
    let seen = scraper.stop();
    println!("{cycles} ADD+DEL cycles in {:?}: {} scrapes, {} pods skipped in them, {} failed", started.elapsed(), seen.scrapes, seen.skipped, seen.failures.len());
    assert!(seen.failures.is_empty(), "{} of {} scrapes failed or reported an error: {:?}", seen.failures.len(), seen.scrapes, &seen.failures[..seen.failures.len().min(5)]);
    assert!(seen.skipped > 0, "no scrape in {} caught the pod in flight: the test proved nothing", seen.scrapes);
    let last = get(&server.addr, None, None).unwrap();
    assert_has_pod(&last.body, &anchor);
    assert!(last.body.lines().any(|l| l == "bpf_ratelimit_scrape_skipped_pods 0"), "nothing in flight now:\n{}", last.body);
    drop(server);
    anchor.del();
}

/// The nearest-rank percentile of `samples` (ms).
/// ADD's p99 with a scraper hammering /metrics is ADD's p99 without one:
/// ADD+DEL cycles of one pod beside three shaped pods (which every scrape
/// reads), in blocks with and without the scraper, interleaved so that the
/// machine's own noise falls on both. Every scrape answers 200 with
/// bpf_ratelimit_up 1.
///
/// The scraper pauses 25 ms between scrapes (some 35 a second, where
/// Prometheus makes one every 15 or 30 s), in blocks of 5 cycles: on this
/// 2-CPU machine a faster scraper takes CPU from ADD by itself, whatever the
/// lock (unpaused: p50 3.2 -> 5.5 ms; at 80/s the p99 ratio of the lock-free
/// scrape reached 1.96 and 2.33 in 2 of 12 runs), and pinning the scraper to
/// another CPU only moved the machine's other work onto ADD's. The price:
/// at 35/s this check does not tell a scrape that takes the pin root's
/// lock (ratios 0.98-1.29 measured with metrics() through read_pods; at
/// 80/s, 1.83-2.42); the test above, with the lock held, does.
#[test]
fn add_p99_is_the_same_while_a_scraper_hammers_metrics() {
    const BLOCKS: usize = 80;
    const CYCLES: usize = 5;
    const ANCHORS: usize = 3;
    const SCRAPE_PAUSE: Duration = Duration::from_millis(25);
    let mut anchors: Vec<Pod> = Vec::new();
    for i in 0..ANCHORS {
        let mut pod = Pod::new(&format!("p99a{i}"));
        if let Some(first) = anchors.first() {
            pod.pin_root = first.pin_root.clone();
        }
        pod.add(json!({"kubernetes.io/egress-bandwidth": "10M"}));
        anchors.push(pod);
    }
    let mut cycled = Pod::new("p99c");
    cycled.pin_root = anchors[0].pin_root.clone();
    let server = Server::start(&cycled.pin_root, &[]);

    let conf = cycled.config(json!({"kubernetes.io/egress-bandwidth": "10M"}));
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let (mut scraping_time, mut scrapes, mut skipped, mut failures) = (Duration::ZERO, 0, 0, Vec::new());
    for block in 0..BLOCKS {
        let block_started = Instant::now();
        let scraping = block % 2 == 1;
        let scraper = scraping.then(|| Scraper::start(&server.addr, SCRAPE_PAUSE));
        for _ in 0..CYCLES {
            let started = Instant::now();
            let out = cycled.invoke("ADD", &conf);
            let ms = started.elapsed().as_secs_f64() * 1e3;
            assert_eq!(out.code, 0, "ADD: {}{}", out.stdout, out.stderr);
            if scraping { with.push(ms) } else { without.push(ms) }
            cycled.del();
        }
        if let Some(s) = scraper {
            let seen = s.stop();
            scraping_time += block_started.elapsed();
            scrapes += seen.scrapes;
            skipped += seen.skipped;
            failures.extend(seen.failures);
        }
    }
    use bpf_ratelimit::testbed::measure::percentile;
    let (p99_without, p99_with) = (percentile(&without, 99.0), percentile(&with, 99.0));
    let (p50_without, p50_with) = (percentile(&without, 50.0), percentile(&with, 50.0));
    let n = scrapes;
    let rate = n as f64 / scraping_time.as_secs_f64();
    println!(
        "ADD over {} cycles each: without a scraper p50 {p50_without:.2} ms p99 {p99_without:.2} ms; with one ({n} scrapes, {rate:.0}/s, {} pods skipped in all) p50 {p50_with:.2} ms p99 {p99_with:.2} ms; p99 ratio {:.2}",
        without.len(),
        skipped,
        p99_with / p99_without
    );
    assert!(failures.is_empty(), "{} of {n} scrapes during ADD and DEL failed or reported an error: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(p99_with <= 1.5 * p99_without, "ADD p99 {p99_with:.2} ms with a scraper, {p99_without:.2} ms without");
    // Prometheus scrapes once in 15 or 30 s.
    assert!(rate >= 20.0, "the scraper made only {rate:.1} scrapes/s: it did not hammer");
    drop(server);
    for pod in &anchors {
        pod.del();
    }
}
