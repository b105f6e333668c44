//! The Docker plugin protocol: HTTP over the plugin's unix socket (Plugin.Activate and every
//! VolumeDriver endpoint), decoded here and handed to `driver`; plus the `serve` process itself
//! (runtime, logging, socket, start-up order, SIGTERM).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::driver::{Driver, DriverError};
use crate::state::Store;

/// Where the plugin listens and keeps its data (defaults match the bundle's config.json).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Unix socket Docker dials.
    #[arg(long, default_value = "/run/docker/plugins/sshfs.sock")]
    pub socket: PathBuf,
    /// Directory of the sled state database (the `state` mount).
    #[arg(long, default_value = "/mnt/state")]
    pub state_dir: PathBuf,
    /// Parent of the per-volume mountpoints (the propagated mount).
    #[arg(long, default_value = "/mnt/volumes")]
    pub volumes_dir: PathBuf,
}

/// Requests are a name, an ID and a few options: anything bigger is not from dockerd.
pub const MAX_BODY: usize = 1024 * 1024;

/// dockerd SIGKILLs a stopping plugin after 10 s; leave time to exit cleanly.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(8);

/// How long to wait for the state database at start-up: a previous instance that is still
/// exiting holds its lock for a moment.
const STATE_OPEN_RETRY: Duration = Duration::from_secs(6);

/// Runs the plugin until SIGTERM.
pub fn serve_main(args: ServeArgs) -> ExitCode {
    // sled keeps creating files (snapshots, blobs) after start-up, from its own threads: a
    // process-wide umask is the only way to keep every one of them root-only. Directories that
    // others must traverse (mountpoints) get their mode set explicitly.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Every FUSE session allocates a 16 MiB request buffer (fuser's). glibc raises its mmap
/// threshold once such a block is freed, so the next ones come from a malloc arena, are zeroed
/// (touched) there and stay resident after the unmount: up to 16 MiB per arena, RSS that only
/// grows with mount/unmount cycles. A fixed threshold keeps big blocks mmapped, so an unmount
/// gives them back to the kernel.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a malloc tunable; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    // Listen first: dockerd dials a new plugin for only ~12.5 s. Connections wait in the
    // backlog until the state is open, which takes milliseconds.
    let listener = bind(&args.socket)?;
    let store = match open_store(&args.state_dir).await {
        Ok(s) => s,
        Err(e) => {
            // Exiting (rather than answering every call with this error) keeps dockerd from
            // forgetting the volumes: it only drops a volume whose Get answers an error.
            let _ = std::fs::remove_file(&args.socket);
            return Err(e);
        }
    };
    let driver = Driver::new(store, args.volumes_dir.clone());
    tracing::info!(
        socket = %args.socket.display(),
        state = %args.state_dir.display(),
        volumes = %args.volumes_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    tokio::spawn({
        let driver = driver.clone();
        async move { driver.startup().await }
    });
    let app = router(driver.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("the plugin socket failed: {e}"))?;
    tracing::info!("stopping: unmounting volumes (mount counts are kept)");
    if tokio::time::timeout(SHUTDOWN_BUDGET, driver.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("unmounting took too long; exiting anyway (next start detaches leftovers)");
    }
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

fn bind(socket: &Path) -> Result<tokio::net::UnixListener, String> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the socket directory {}: {e}", dir.display()))?;
    }
    // A socket file left by a crashed run makes bind fail with EADDRINUSE.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot replace the old socket {}: {e}",
                socket.display()
            ));
        }
    }
    tokio::net::UnixListener::bind(socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))
}

async fn open_store(dir: &Path) -> Result<Store, String> {
    let deadline = Instant::now() + STATE_OPEN_RETRY;
    loop {
        let d = dir.to_path_buf();
        let result = tokio::task::spawn_blocking(move || Store::open(&d))
            .await
            .map_err(|e| format!("opening the state database failed: {e}"))?;
        match result {
            Ok(store) => return Ok(store),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("state database not ready, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot watch SIGTERM/SIGINT; stop the plugin with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Every path goes through one handler so that unknown endpoints, wrong bodies and oversized
/// bodies all get the `{"Err": ...}` answer dockerd understands.
pub fn router(driver: Arc<Driver>) -> Router {
    Router::new().fallback(dispatch).with_state(driver)
}

async fn dispatch(State(driver): State<Arc<Driver>>, req: Request) -> Response {
    let call = req.uri().path().trim_start_matches('/').to_string();
    let started = Instant::now();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let msg = format!(
                "request body for {call} is larger than {MAX_BODY} bytes or was cut off; \
                 send a JSON object like {{\"Name\":\"myvol\"}}"
            );
            tracing::warn!(call = %call, "{msg}");
            return error(StatusCode::PAYLOAD_TOO_LARGE, &msg);
        }
    };
    let request = match decode_call(&call, &body) {
        Ok(r) => r,
        Err(msg) => {
            tracing::warn!(call = %call, "{msg}");
            let status = if msg.starts_with("unknown endpoint") {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            return error(status, &msg);
        }
    };
    let (volume, id) = request.subject();
    // Spawned so that the work finishes (and the state stays consistent) even if dockerd hangs
    // up mid-call, and so that a panic fails one call instead of the connection.
    let result = tokio::spawn(handle(driver, request))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(call = %call, volume = %volume, "handler failed: {e}");
            Err(DriverError::Internal(volume.clone()))
        });
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(v) => {
            // dockerd asks for Capabilities before nearly every call: only worth a debug line.
            if call == "VolumeDriver.Capabilities" {
                tracing::debug!(call = %call, ms, "ok");
            } else {
                tracing::info!(call = %call, volume = %volume, id = %id, ms, "ok");
            }
            (StatusCode::OK, json_body(&v)).into_response()
        }
        Err(e) => {
            let msg = e.to_string();
            tracing::warn!(call = %call, volume = %volume, id = %id, ms, error = %msg, "failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, &msg)
        }
    }
}

/// A decoded Docker call.
#[derive(Debug)]
pub enum Call {
    Activate,
    Capabilities,
    List,
    Create {
        name: String,
        opts: BTreeMap<String, String>,
    },
    Remove {
        name: String,
    },
    Mount {
        name: String,
        id: String,
    },
    Unmount {
        name: String,
        id: String,
    },
    Path {
        name: String,
    },
    Get {
        name: String,
    },
}

impl Call {
    /// Volume name and mount ID for the log line ("-" where the call has none), cut short:
    /// a hostile 4 KiB name should not flood the log.
    fn subject(&self) -> (String, String) {
        let short = |s: &String| s.chars().take(128).collect::<String>();
        let (name, id) = match self {
            Call::Activate | Call::Capabilities | Call::List => ("-".into(), "-".into()),
            Call::Create { name, .. }
            | Call::Remove { name }
            | Call::Path { name }
            | Call::Get { name } => (name.clone(), "-".into()),
            Call::Mount { name, id } | Call::Unmount { name, id } => (name.clone(), id.clone()),
        };
        (short(&name), short(&id))
    }
}

#[derive(Deserialize)]
struct NameBody {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(rename = "Name")]
    name: String,
    /// dockerd sends null when no -o was given.
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct MountBody {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "ID", default)]
    id: String,
}

/// Decodes the body whatever the Content-Type (dockerd's is not application/json, some clients
/// send none). An empty body is `{}`. Errors say what was expected.
pub fn decode_call(call: &str, body: &[u8]) -> Result<Call, String> {
    Ok(match call {
        "Plugin.Activate" => Call::Activate,
        "VolumeDriver.Capabilities" => Call::Capabilities,
        "VolumeDriver.List" => Call::List,
        "VolumeDriver.Create" => {
            let b: CreateBody = parse(
                call,
                body,
                r#"{"Name":"myvol","Opts":{"sshcmd":"user@host:/path"}}"#,
            )?;
            Call::Create {
                name: b.name,
                opts: b.opts.unwrap_or_default(),
            }
        }
        "VolumeDriver.Mount" | "VolumeDriver.Unmount" => {
            let b: MountBody = parse(call, body, r#"{"Name":"myvol","ID":"..."}"#)?;
            if call == "VolumeDriver.Mount" {
                Call::Mount {
                    name: b.name,
                    id: b.id,
                }
            } else {
                Call::Unmount {
                    name: b.name,
                    id: b.id,
                }
            }
        }
        "VolumeDriver.Remove" | "VolumeDriver.Path" | "VolumeDriver.Get" => {
            let b: NameBody = parse(call, body, r#"{"Name":"myvol"}"#)?;
            match call {
                "VolumeDriver.Remove" => Call::Remove { name: b.name },
                "VolumeDriver.Path" => Call::Path { name: b.name },
                _ => Call::Get { name: b.name },
            }
        }
        other => {
            return Err(format!(
                "unknown endpoint '/{}': this plugin implements Plugin.Activate and \
                 VolumeDriver.{{Create,Remove,Mount,Unmount,Path,Get,List,Capabilities}}",
                other.chars().take(64).collect::<String>()
            ));
        }
    })
}

fn parse<T: DeserializeOwned>(call: &str, body: &[u8], example: &str) -> Result<T, String> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    // serde_json's messages name the field and position and never echo values (so no password).
    serde_json::from_slice(body)
        .map_err(|e| format!("invalid request body for {call}: {e}; expected JSON like {example}"))
}

async fn handle(driver: Arc<Driver>, call: Call) -> Result<Value, DriverError> {
    Ok(match call {
        Call::Activate => json!({"Implements": ["VolumeDriver"]}),
        Call::Capabilities => json!({"Capabilities": {"Scope": "local"}}),
        Call::Create { name, opts } => {
            tracing::debug!(volume = %name, options = ?opts.keys().collect::<Vec<_>>(), "Create");
            driver.create(&name, opts).await?;
            json!({})
        }
        Call::Remove { name } => {
            driver.remove(&name).await?;
            json!({})
        }
        Call::Mount { name, id } => {
            let mp = driver.mount(&name, &id).await?;
            json!({"Mountpoint": mp})
        }
        Call::Unmount { name, id } => {
            driver.unmount(&name, &id).await?;
            json!({})
        }
        Call::Path { name } => json!({"Mountpoint": driver.path(&name)?}),
        Call::Get { name } => json!({"Volume": driver.get(&name)?}),
        Call::List => json!({"Volumes": driver.list()?}),
    })
}

fn json_body(v: &Value) -> Response {
    let mut resp = Body::from(v.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/vnd.docker.plugins.v1.2+json"),
    );
    resp
}

/// dockerd shows the `Err` text after "VolumeDriver.<Call>:"; any non-2xx status with an `Err`
/// body fails the call.
fn error(status: StatusCode, msg: &str) -> Response {
    (status, json_body(&json!({ "Err": msg }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_whatever_the_shape() {
        assert!(matches!(
            decode_call("Plugin.Activate", b""),
            Ok(Call::Activate)
        ));
        assert!(matches!(
            decode_call("VolumeDriver.List", b"garbage"),
            Ok(Call::List)
        ));
        match decode_call("VolumeDriver.Create", br#"{"Name":"v","Opts":null}"#).unwrap() {
            Call::Create { name, opts } => assert!(name == "v" && opts.is_empty()),
            c => panic!("{c:?}"),
        }
        match decode_call("VolumeDriver.Create", br#"{"Name":"v","Opts":{"a":"b"}}"#).unwrap() {
            Call::Create { opts, .. } => assert_eq!(opts["a"], "b"),
            c => panic!("{c:?}"),
        }
        match decode_call("VolumeDriver.Mount", br#"{"Name":"v","ID":"abc"}"#).unwrap() {
            Call::Mount { name, id } => assert!(name == "v" && id == "abc"),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn bad_bodies_say_what_is_expected() {
        let e = decode_call("VolumeDriver.Get", b"").unwrap_err();
        assert!(
            e.contains("missing field `Name`") && e.contains(r#"{"Name":"myvol"}"#),
            "{e}"
        );
        let e = decode_call("VolumeDriver.Mount", b"{\"Name\":").unwrap_err();
        assert!(
            e.starts_with("invalid request body for VolumeDriver.Mount"),
            "{e}"
        );
        let e = decode_call(
            "VolumeDriver.Create",
            br#"{"Name":"v","Opts":{"password":7}}"#,
        )
        .unwrap_err();
        assert!(!e.contains('7') || e.contains("line"), "{e}");
        let e = decode_call("VolumeDriver.Nope", b"{}").unwrap_err();
        assert!(e.starts_with("unknown endpoint"), "{e}");
    }

    #[test]
    fn secrets_in_bad_bodies_are_not_echoed() {
        let e = decode_call(
            "VolumeDriver.Create",
            br#"{"Name":"v","Opts":{"password":"hunter2", "x": 1}}"#,
        )
        .unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
