//! The plugin's persistent state: one sled record per volume (its options, creation time, mount
//! directory, mount-ID counts and pinned host key), flushed to disk on every change and readable
//! only by root.
//!
//! Records are JSON so that a newer plugin can still read an older record: everything that may
//! change shape is optional or re-derived from the raw options the user gave.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::options::MountOptions;
use crate::secret::Secret;

/// Name of the sled database directory inside the state dir.
const DB_DIR: &str = "docker-volume-sshfs.sled";
const TREE: &str = "volumes";

/// Why the state store failed. Each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot open the state database {path}: {reason}. Another plugin instance may be using it \
         (only one may run per state dir), or the files are damaged: stop the other instance, or \
         move the directory away to start with no volumes"
    )]
    Open { path: PathBuf, reason: String },
    #[error(
        "cannot prepare the state directory {path}: {reason}. Check the plugin's state.source mount"
    )]
    Dir { path: PathBuf, reason: String },
    #[error("the state database failed: {0}. Check free space and the state.source mount")]
    Db(#[from] sled::Error),
    #[error(
        "the stored record of volume '{name}' is damaged ({reason}); remove and recreate the volume"
    )]
    Decode { name: String, reason: String },
}

/// A multiset of container mount IDs: Docker reuses an ID (e.g. `docker cp` into a running
/// container mounts the same ID again), so each ID carries a count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MountCounts(BTreeMap<String, u32>);

impl MountCounts {
    pub fn add(&mut self, id: &str) {
        *self.0.entry(id.to_string()).or_insert(0) += 1;
    }

    /// Takes one occurrence of `id` away. False when the ID was not counted (an Unmount we never
    /// saw a Mount for, e.g. state from before a reinstall): the caller logs it and carries on.
    pub fn remove(&mut self, id: &str) -> bool {
        match self.0.get_mut(id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.0.remove(id);
                true
            }
            None => false,
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().map(|&n| u64::from(n)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Everything the plugin keeps about one volume.
///
/// Deliberately not `Debug`: the raw options hold the password.
#[derive(Clone, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    /// The mountpoint's directory name under the volumes dir, fixed at Create so that a later
    /// change of the naming scheme never moves (or shares) an existing volume's mountpoint.
    pub dir: String,
    /// RFC 3339, as dockerd decodes it.
    pub created_at: String,
    /// The `-o` options exactly as given, so that they can be re-validated by a newer parser.
    /// Values are secrets because any of them may be a password.
    pub raw_options: BTreeMap<String, Secret>,
    /// The options as parsed at Create (for reference); `None` if the stored shape is from an
    /// incompatible version, in which case they are parsed again from `raw_options`.
    #[serde(default, deserialize_with = "lenient")]
    pub options: Option<MountOptions>,
    #[serde(default)]
    pub mounts: MountCounts,
    /// SHA256 fingerprint of the server's key, pinned at the first successful mount.
    #[serde(default)]
    pub host_key: Option<String>,
}

impl VolumeRecord {
    /// The raw options in the form the option parser takes.
    pub fn docker_opts(&self) -> BTreeMap<String, String> {
        self.raw_options
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect()
    }
}

/// A shape we cannot read (an older or newer version) becomes `None` instead of failing the
/// whole record: a failing Get makes dockerd forget the volume.
fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MountOptions>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

/// The sled database. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    volumes: sled::Tree,
}

impl Store {
    /// Opens (or creates) the database under `state_dir`, root-only.
    pub fn open(state_dir: &Path) -> Result<Store, StateError> {
        let dir_err = |e: std::io::Error| StateError::Dir {
            path: state_dir.to_path_buf(),
            reason: e.to_string(),
        };
        // The directory may be one the user chose (state.source) and shares with other things:
        // restrict it only if we create it. The database directory below is always root-only.
        if !state_dir.exists() {
            fs::create_dir_all(state_dir).map_err(dir_err)?;
            fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        }
        let path = state_dir.join(DB_DIR);
        let open_err = |reason: String| StateError::Open {
            path: path.clone(),
            reason,
        };
        // sled 0.34 is beta quality and may panic on damaged files instead of returning an
        // error; either way the user gets a message naming the directory.
        let opened = std::panic::catch_unwind(|| sled::Config::new().path(&path).open());
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(open_err(e.to_string())),
            Err(_) => {
                return Err(open_err(
                    "the database library panicked while reading it".into(),
                ));
            }
        };
        let volumes = db.open_tree(TREE).map_err(|e| open_err(e.to_string()))?;
        restrict_permissions(&path).map_err(|e| StateError::Dir {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Store { db, volumes })
    }

    pub fn get(&self, name: &str) -> Result<Option<VolumeRecord>, StateError> {
        match self.volumes.get(name.as_bytes())? {
            None => Ok(None),
            Some(bytes) => decode(name, &bytes).map(Some),
        }
    }

    /// Every volume whose record can be read, in name order. A damaged record is logged and left
    /// out rather than failing the whole list.
    pub fn list(&self) -> Result<Vec<VolumeRecord>, StateError> {
        let mut out = Vec::new();
        for item in self.volumes.iter() {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k).into_owned();
            match decode(&name, &v) {
                Ok(rec) => out.push(rec),
                Err(e) => tracing::warn!(volume = %name, "skipping volume in List: {e}"),
            }
        }
        Ok(out)
    }

    /// Stores the record and waits until it is on disk.
    pub fn put(&self, rec: &VolumeRecord) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| StateError::Decode {
            name: rec.name.clone(),
            reason: e.to_string(),
        })?;
        self.volumes.insert(rec.name.as_bytes(), bytes)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        self.volumes.remove(name.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// True if a volume other than `name` already uses mount directory `dir`.
    pub fn dir_taken(&self, dir: &str, name: &str) -> Result<bool, StateError> {
        Ok(self.list()?.iter().any(|r| r.dir == dir && r.name != name))
    }
}

fn decode(name: &str, bytes: &[u8]) -> Result<VolumeRecord, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Decode {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// Directories 0700 and files 0600 below `path`: the records hold passwords.
fn restrict_permissions(path: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        for entry in fs::read_dir(path)? {
            restrict_permissions(&entry?.path())?;
        }
    } else if meta.is_file() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dvs-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn record(name: &str) -> VolumeRecord {
        VolumeRecord {
            name: name.into(),
            dir: format!("{name}-dir"),
            created_at: "2024-01-01T00:00:00Z".into(),
            raw_options: [("password".to_string(), Secret::new("hunter2"))].into(),
            options: None,
            mounts: MountCounts::default(),
            host_key: None,
        }
    }

    #[test]
    fn counts_are_a_multiset() {
        let mut c = MountCounts::default();
        c.add("a");
        c.add("a");
        c.add("b");
        assert_eq!(c.total(), 3);
        assert!(c.remove("a"));
        assert_eq!(c.total(), 2);
        assert!(c.remove("a"));
        assert!(
            !c.remove("a"),
            "a third Unmount of a twice-mounted ID is not counted"
        );
        assert!(c.remove("b"));
        assert!(c.is_empty());
    }

    #[test]
    fn records_survive_reopen_and_are_root_only() {
        let d = temp_dir("reopen");
        {
            let s = Store::open(&d).unwrap();
            let mut r = record("v1");
            r.mounts.add("id1");
            r.mounts.add("id1");
            s.put(&r).unwrap();
            s.put(&record("v2")).unwrap();
            s.remove("v2").unwrap();
        }
        let s = Store::open(&d).unwrap();
        let r = s.get("v1").unwrap().unwrap();
        assert_eq!(r.mounts.total(), 2);
        assert_eq!(r.raw_options["password"].expose(), "hunter2");
        assert!(s.get("v2").unwrap().is_none());
        assert_eq!(s.list().unwrap().len(), 1);
        for p in [d.clone(), d.join(DB_DIR)] {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }
        let mode = fs::metadata(d.join(DB_DIR).join("db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_locked_database_is_an_error_not_a_panic() {
        let d = temp_dir("locked");
        let first = Store::open(&d).unwrap();
        let e = Store::open(&d)
            .err()
            .expect("second open must fail")
            .to_string();
        assert!(e.contains("Another plugin instance"), "{e}");
        drop(first);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unknown_option_shape_does_not_break_the_record() {
        let mut v = serde_json::to_value(record("v")).unwrap();
        v["options"] = serde_json::json!({"from": "a future version"});
        let r: VolumeRecord = serde_json::from_value(v).unwrap();
        assert!(r.options.is_none());
    }
}
