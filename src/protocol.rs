//! The Docker plugin protocol: HTTP over the plugin's unix socket (Plugin.Activate and every
//! VolumeDriver endpoint), its wire format decoded here and handed to `driver`, the answers
//! encoded the way dockerd reads them. The process that serves it is `cmd::serve`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::driver::{Driver, DriverError};

/// Requests are a name, an ID and a few options: anything bigger is not from dockerd.
pub const MAX_BODY: usize = 1024 * 1024;

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
        // `local`: a volume's record (options, pinned host key, password file, mount counts)
        // lives in this node's state, not across the cluster as `global` would claim. Swarm
        // ignores the scope and creates the volume on each node from the service's volume-opt
        // (tests/swarm/multinode.sh; README, Swarm).
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
