//! `strait bench` as the benchmark harness runs it: the real binary against a real `strait
//! serve`, for what only the command line does (the generator's runtime and its options).

mod support;

use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::text;

/// A `strait serve` child process, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn busy_polling_generator_delivers_everything_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {data:?}\ndomains = [\"localhost\"]\n\n[listen]\nc2s = [\"127.0.0.1:{port}\"]\n\
             c2s_direct_tls = []\n\n[upload]\nenabled = false\n\n[auth]\nscram_iterations = 4096\n"
        ),
    )
    .unwrap();
    for i in 0..2 {
        let args = [
            "user",
            "add",
            &format!("bench{i}@localhost"),
            "--data-dir",
            data.to_str().unwrap(),
            "--domain",
            "localhost",
        ];
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let o = support::run(&args, format!("pw-{i}\n").as_bytes());
        assert!(o.status.success(), "{}", text(&o));
    }
    let _server = Serve(
        Command::new(env!("CARGO_BIN_EXE_strait"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env_remove("STRAIT_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ca = data.join("tls/ca.pem");
    let o = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["bench", "messages", "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--domain", "localhost", "--ca-file"])
        .arg(&ca)
        .args([
            "--accounts",
            "2",
            "--pairs",
            "1",
            "--rate",
            "100",
            "--duration",
            "1",
            "--source-ips",
            "0",
            "--busy-poll",
        ])
        .output()
        .unwrap();
    let t = text(&o);
    // It ends (the spinning tasks do not keep the runtime alive) and delivers everything.
    assert!(o.status.success(), "{t}");
    assert!(t.contains("busy-polling"), "{t}");
    assert!(t.contains("LOST online: 0"), "{t}");
    assert!(!t.contains("delivered online: 0 "), "{t}");
}
