//! The gateway under test: in-process (`Gateway::start` on `127.0.0.1:0`), or as a child
//! process of the `fhirgate` binary when a test needs its own memory figures or its output.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{Client, Destination, PUBLIC_HOST, Pki, wait_for_port};

/// Writes the usual files into the PKI's folder: `public.pem`/`public.key` for
/// [`PUBLIC_HOST`] (issued by the public CA) and `private-ca.pem` (the private CA).
pub fn write_usual_files(pki: &Pki) {
    pki.write_leaf("public", &pki.public_ca.issue(&[PUBLIC_HOST]));
    pki.write("private-ca.pem", &pki.private_ca.pem);
}

/// The listener every test uses: `public` on `bind`, serving `public.pem`.
pub fn listener_toml(bind: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "public"
bind = "{bind}"
  [[listeners.certificates]]
  cert = "public.pem"
  key = "public.key"
"#
    )
}

/// The upstream URL of a test [`Destination`] listening on `port`.
pub fn destination_url(port: u16) -> String {
    format!("https://localhost:{port}/fhir")
}

/// One listener `public` on `bind` with `public.pem`, and one route `dest-a`
/// (`https://fhir.example.org/dest-a` → `upstream`, trusting `private-ca.pem`); `extra` is
/// appended to the route's table (and may add further tables after it).
pub fn one_route_toml(bind: &str, upstream: &str, extra: &str) -> String {
    let listener = listener_toml(bind);
    format!(
        r#"{listener}
[[routes]]
name = "dest-a"
public_base = "https://{PUBLIC_HOST}/dest-a"
upstream = "{upstream}"
upstream_ca = "private-ca.pem"
{extra}
"#
    )
}

/// A gateway started in-process from a TOML text written into the PKI's folder (so relative
/// paths resolve there).
pub struct TestGateway {
    pub gateway: Option<fhirgate::server::Gateway>,
    /// The first listener's address.
    pub addr: SocketAddr,
}

impl TestGateway {
    pub async fn start(pki: &Pki, toml: &str) -> TestGateway {
        Self::start_as(pki, "fhirgate.toml", toml).await
    }

    /// Like [`TestGateway::start`], with the configuration written to `file_name` (for two
    /// gateways sharing one folder).
    pub async fn start_as(pki: &Pki, file_name: &str, toml: &str) -> TestGateway {
        let path = pki.write(file_name, toml);
        let config = fhirgate::config::Config::parse(toml, &path).unwrap_or_else(|e| panic!("{e}"));
        let first = config.listeners[0].name.clone();
        let gateway = super::bounded(
            "starting the gateway",
            fhirgate::server::Gateway::start(config),
        )
        .await
        .unwrap_or_else(|e| panic!("{}", fhirgate::proxy::ErrorChain(&e)));
        let addr = gateway.local_addr(&first).unwrap();
        TestGateway {
            gateway: Some(gateway),
            addr,
        }
    }

    pub fn addr_of(&self, listener: &str) -> SocketAddr {
        self.gateway.as_ref().unwrap().local_addr(listener).unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            super::bounded("stopping the gateway", g.shutdown()).await;
        }
    }
}

/// The usual set-up: a destination with a private certificate for `localhost`, a listener
/// certificate for `fhir.example.org`, and one route `/dest-a` → `/fhir`.
pub struct Setup {
    pub pki: Pki,
    pub destination: Destination,
    pub gateway: TestGateway,
}

impl Setup {
    pub async fn new() -> Setup {
        Self::with_route_extra("").await
    }

    /// `extra` is appended to the `[[routes]]` table of `dest-a`.
    pub async fn with_route_extra(extra: &str) -> Setup {
        let pki = Pki::new();
        let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
        Self::in_front_of(pki, destination, extra).await
    }

    /// The usual set-up in front of a destination that speaks HTTP/2 and HTTP/1.1 (ALPN
    /// picks HTTP/2), or only HTTP/1.1.
    pub async fn towards(http1_only: bool) -> Setup {
        let pki = Pki::new();
        let leaf = pki.private_ca.issue(&["localhost"]);
        let destination = if http1_only {
            Destination::start_http1(&leaf).await
        } else {
            Destination::start(&leaf).await
        };
        Self::in_front_of(pki, destination, "").await
    }

    /// The usual gateway in front of a destination the test started.
    pub async fn in_front_of(pki: Pki, destination: Destination, extra: &str) -> Setup {
        write_usual_files(&pki);
        let upstream = format!("https://localhost:{}/fhir", destination.addr.port());
        let gateway =
            TestGateway::start(&pki, &one_route_toml("127.0.0.1:0", &upstream, extra)).await;
        Setup {
            pki,
            destination,
            gateway,
        }
    }

    /// A client for the public listener, trusting the public CA.
    pub fn client(&self) -> Client {
        Client::new(&self.pki.public_ca.pem, self.gateway.addr)
    }
}

/// The `fhirgate` binary.
pub fn fhirgate_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fhirgate"))
}

/// What a child-process gateway wrote and how it ended.
pub struct ChildOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The gateway as a child process of the binary, with its standard output and error read
/// to the end by threads (so the pipes never fill).
pub struct ChildGateway {
    child: Child,
    pub addr: SocketAddr,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl ChildGateway {
    /// Runs `fhirgate GLOBAL_ARGS run --config CONFIG` with `RUST_LOG=rust_log` and waits
    /// until `addr` (the configured listener) accepts.
    pub async fn run(
        config: &Path,
        addr: SocketAddr,
        global_args: &[&str],
        rust_log: &str,
    ) -> ChildGateway {
        let mut child = fhirgate_command()
            .args(global_args)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the gateway binary");
        let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            })
        };
        let stdout = Some(read_all(Box::new(child.stdout.take().unwrap())));
        let stderr = Some(read_all(Box::new(child.stderr.take().unwrap())));
        let mut gateway = ChildGateway {
            child,
            addr,
            stdout,
            stderr,
        };
        // Fail fast, with its output, if it exited instead of listening.
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return gateway;
            }
            if let Ok(Some(_)) = gateway.child.try_wait() {
                let out = gateway.stop();
                panic!(
                    "the gateway exited with {:?}:\n{}\n{}",
                    out.status, out.stdout, out.stderr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_for_port(addr).await;
        gateway
    }

    /// A gateway process serving the usual route to `destination` on a free port, with
    /// the usual files written into the PKI's folder.
    pub async fn usual(
        pki: &Pki,
        destination: &Destination,
        global_args: &[&str],
        rust_log: &str,
    ) -> ChildGateway {
        write_usual_files(pki);
        let port = super::free_port();
        let upstream = format!("https://localhost:{}/fhir", destination.addr.port());
        let config = pki.write(
            "child.toml",
            &one_route_toml(&format!("127.0.0.1:{port}"), &upstream, ""),
        );
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        ChildGateway::run(&config, addr, global_args, rust_log).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM in /proc/PID/status");
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// SIGTERM, then waits (bounded: 30 s, then SIGKILL) for the exit and the whole output.
    pub fn stop(mut self) -> ChildOutput {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                _ if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    break self.child.wait().unwrap();
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        ChildOutput {
            status,
            stdout: self.stdout.take().unwrap().join().unwrap(),
            stderr: self.stderr.take().unwrap().join().unwrap(),
        }
    }
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
