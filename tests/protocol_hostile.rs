//! Hostile input on the plugin socket (issue 4), against a real `docker-volume-sshfs serve`
//! process: malformed and huge bodies, missing fields, dangerous volume names, odd sshcmd forms.
//! Every request gets a JSON answer with a clear `Err`, or works; the plugin never crashes and
//! never creates anything outside its volumes directory. Plus a property test (a small fuzzer)
//! over the request decoder.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, TempDir};
use docker_volume_sshfs::protocol::decode_call;
use proptest::prelude::*;
use serde_json::{Value, json};

struct Plugin {
    dir: TempDir,
    socket: PathBuf,
    child: Child,
}

impl Plugin {
    fn start() -> Plugin {
        let dir = TempDir::new("plugin");
        let socket = dir.path().join("sshfs.sock");
        for d in ["state", "volumes"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--volumes-dir")
            .arg(dir.path().join("volumes"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("plugin.log")).unwrap())
            .spawn()
            .expect("start the plugin");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "plugin socket did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        Plugin { dir, socket, child }
    }

    /// One HTTP/1.1 POST; returns (status, parsed JSON body).
    fn post(&self, call: &str, body: &[u8], content_type: Option<&str>) -> (u16, Value) {
        let mut s = UnixStream::connect(&self.socket).expect("plugin still listening");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!(
            "POST /{call} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            req.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        // The server may answer (413) before reading a huge body and close: ignore EPIPE.
        let _ = s.write_all(body);
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp).to_string();
        let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
        let payload = dechunk(head, payload);
        let v: Value = serde_json::from_str(&payload)
            .unwrap_or_else(|e| panic!("{call}: answer is not JSON ({e}): {payload:?}"));
        (status, v)
    }

    fn call(&self, call: &str, body: Value) -> Value {
        self.post(call, body.to_string().as_bytes(), None).1
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
            && self.call("Plugin.Activate", json!({}))["Implements"] == json!(["VolumeDriver"])
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("plugin.log")).unwrap_or_default()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(head: &str, payload: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return payload.to_string();
    }
    let mut out = String::new();
    let mut rest = payload;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

fn err_of(v: &Value) -> String {
    v["Err"].as_str().unwrap_or("").to_string()
}

fn entries_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            out.extend(entries_below(&e.path()));
        }
    }
    out
}

#[test]
fn malformed_bodies_get_clear_errors_and_the_plugin_survives() {
    let mut p = Plugin::start();
    // No Content-Type, dockerd's Content-Type, and an empty body all work.
    assert_eq!(
        p.post("Plugin.Activate", b"", None).1["Implements"],
        json!(["VolumeDriver"])
    );
    let (_, v) = p.post(
        "VolumeDriver.Capabilities",
        b"{}",
        Some("application/vnd.docker.plugins.v1.2+json"),
    );
    assert_eq!(v["Capabilities"]["Scope"], "local");

    for (call, body) in [
        ("VolumeDriver.Create", &b"{not json"[..]),
        ("VolumeDriver.Create", b"[1,2,3]"),
        ("VolumeDriver.Create", b"{\"Opts\":{}}"),
        ("VolumeDriver.Create", b"{\"Name\":5}"),
        ("VolumeDriver.Mount", b"{}"),
        ("VolumeDriver.Get", b"\xff\xfe\x00garbage"),
        ("VolumeDriver.Remove", b"null"),
        ("VolumeDriver.Frobnicate", b"{}"),
    ] {
        let (status, v) = p.post(call, body, Some("text/plain"));
        let e = err_of(&v);
        assert!(
            !e.is_empty(),
            "{call} {body:?}: status {status}, no Err in {v}"
        );
        assert!(
            e.contains("expected") || e.contains("unknown endpoint"),
            "{call}: the error says what was expected: {e}"
        );
    }
    // A 16 MiB body is refused, not buffered forever.
    let huge = vec![b'x'; 16 * 1024 * 1024];
    let (status, v) = p.post("VolumeDriver.Create", &huge, None);
    assert!(status >= 400, "huge body accepted with {status}");
    assert!(err_of(&v).contains("larger than"), "{v}");
    assert!(p.alive(), "plugin died: {}", p.log());
}

#[test]
fn dangerous_names_never_escape_the_volumes_dir() {
    let mut p = Plugin::start();
    let long = "a".repeat(4096);
    for name in [
        "../escape",
        "..",
        "a/b",
        "/abs",
        "nul\0byte",
        long.as_str(),
        "",
        "new\nline",
    ] {
        let v = p.call(
            "VolumeDriver.Create",
            json!({"Name": name, "Opts": {"sshcmd": "u@h:/p"}}),
        );
        let e = err_of(&v);
        assert!(e.contains("volume name"), "{name:?}: {v}");
        assert!(
            e.len() < 600,
            "a 4 KiB name is not echoed whole: {} bytes",
            e.len()
        );
        for call in [
            "VolumeDriver.Mount",
            "VolumeDriver.Path",
            "VolumeDriver.Remove",
        ] {
            let v = p.call(call, json!({"Name": name, "ID": "x"}));
            assert!(!err_of(&v).is_empty(), "{call} {name:?} must fail: {v}");
        }
    }
    // Names Docker accepts, including ones that look like paths after decoding, stay inside.
    for name in ["ok-vol_1.x", "dots.in.name", "%2e%2e", "-leading-dash"] {
        let v = p.call(
            "VolumeDriver.Create",
            json!({"Name": name, "Opts": {"sshcmd": "u@h:/p"}}),
        );
        assert_eq!(err_of(&v), "", "{name}: {v}");
        let path = p.call("VolumeDriver.Path", json!({"Name": name}));
        let mp = path["Mountpoint"].as_str().unwrap_or("").to_string();
        if !mp.is_empty() {
            assert!(
                Path::new(&mp).starts_with(p.dir.path().join("volumes")),
                "{name}: mountpoint {mp} is outside the volumes dir"
            );
        }
    }
    // Nothing was created next to the volumes dir.
    let top: Vec<_> = std::fs::read_dir(p.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    for entry in &top {
        assert!(
            ["state", "volumes", "sshfs.sock", "plugin.log"].contains(&entry.as_str()),
            "unexpected entry {entry} beside the volumes dir"
        );
    }
    for e in entries_below(&p.dir.path().join("volumes")) {
        assert!(e.starts_with(p.dir.path().join("volumes")));
    }
    assert!(p.alive(), "plugin died: {}", p.log());
}

#[test]
fn odd_sshcmd_forms_and_options_are_validated_at_create() {
    let mut p = Plugin::start();
    let create = |name: &str, opts: Value| {
        err_of(&p.call("VolumeDriver.Create", json!({"Name": name, "Opts": opts})))
    };
    // Accepted without contacting any server.
    assert_eq!(create("v6", json!({"sshcmd": "user@[::1]:/data"})), "");
    assert_eq!(create("nopath", json!({"sshcmd": "user@host"})), "");
    assert_eq!(
        create("atuser", json!({"sshcmd": "me@corp.com@host:/x"})),
        ""
    );
    assert_eq!(
        create("flag", json!({"sshcmd": "h:/x", "allow_other": ""})),
        ""
    );
    // Refused with what to fix.
    let e = create("missing", json!({}));
    assert!(e.contains("sshcmd"), "{e}");
    let e = create("badport", json!({"sshcmd": "h:/x", "port": "70000"}));
    assert!(e.contains("1 to 65535"), "{e}");
    let e = create("badport2", json!({"sshcmd": "h:/x", "port": "-1"}));
    assert!(e.contains("port"), "{e}");
    let e = create("unknown", json!({"sshcmd": "h:/x", "frob": "1"}));
    assert!(
        e.contains("unknown option 'frob'") && e.contains("IdentityFile"),
        "{e}"
    );
    let e = create("badv6", json!({"sshcmd": "u@[::1:/x"}));
    assert!(e.contains("user@host:/path"), "{e}");
    let e = create(
        "secret",
        json!({"sshcmd": "h:/x", "password": "hunter2", "port": "0"}),
    );
    assert!(!e.contains("hunter2"), "a secret was echoed: {e}");

    // Get and List answer from local state, and Status holds no secret.
    assert_eq!(
        create("withpw", json!({"sshcmd": "h:/x", "password": "hunter2"})),
        ""
    );
    let got = p.call("VolumeDriver.Get", json!({"Name": "withpw"}));
    assert_eq!(got["Volume"]["Name"], "withpw", "{got}");
    assert!(!got.to_string().contains("hunter2"), "secret in Get: {got}");
    let listed = p.call("VolumeDriver.List", json!({}));
    let names: Vec<&str> = listed["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["Name"].as_str())
        .collect();
    for n in ["v6", "nopath", "atuser", "flag", "withpw"] {
        assert!(names.contains(&n), "{n} missing from List: {names:?}");
    }
    assert!(!p.log().contains("hunter2"), "secret in the log");
    assert!(p.alive(), "plugin died: {}", p.log());
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        // JSON-shaped junk reaches the field checks, not just the tokenizer.
        (prop::collection::btree_map(
            "(Name|ID|Opts|[a-z]{1,4})",
            prop_oneof![
                Just(json!(null)),
                any::<i64>().prop_map(|n| json!(n)),
                "[ -~]{0,20}".prop_map(|s| json!(s)),
                Just(json!({"sshcmd": "h:/x"})),
                Just(json!([1, "a"])),
            ],
            0..4
        ))
        .prop_map(|m| serde_json::to_vec(&m).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn decoder_never_panics(
        call in prop_oneof![
            Just("Plugin.Activate".to_string()), Just("VolumeDriver.Create".to_string()),
            Just("VolumeDriver.Remove".to_string()), Just("VolumeDriver.Mount".to_string()),
            Just("VolumeDriver.Unmount".to_string()), Just("VolumeDriver.Path".to_string()),
            Just("VolumeDriver.Get".to_string()), Just("VolumeDriver.List".to_string()),
            Just("VolumeDriver.Capabilities".to_string()), "[A-Za-z.]{0,30}",
        ],
        body in any_body(),
    ) {
        if let Err(e) = decode_call(&call, &body) {
            prop_assert!(!e.is_empty());
            prop_assert!(e.len() < 2000, "error too long: {}", e.len());
        }
    }
}
