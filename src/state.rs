//! The plugin's persistent state, readable only by root: one sled record per volume (its
//! options without secrets, creation time, mount directory, mount-ID counts and pinned host
//! key), flushed to disk on every change, and one secret file per volume that has a password
//! or passphrase.
//!
//! Records are JSON tagged with a schema version (`schema`, see its history there): opening
//! the store brings every older record up to the current version and writes it back, so a
//! plugin upgrade keeps every volume; a record of a newer version (after a downgrade) is
//! refused with an error saying so, listed, and never overwritten.
//!
//! Secrets never enter sled: it appends every version of a value to its log and keeps old
//! segments until it happens to compact them, so a removed key's bytes stay on disk for an
//! unbounded time. A secret file is named by the record's `dir`, replaced atomically and
//! fsynced, and on Remove overwritten and deleted: after `docker volume rm`, no byte of the
//! volume's secrets is left in the state directory.
//!
//! Write-back volumes also have a journal directory each under `writeback/` (named by the
//! record's `dir`, like the secret file). Its contents belong to `crate::writeback`; this file
//! only says where it is.
//!
//! One file because the record's shape and where each part of it is kept (sled, or the secret
//! files) change together. The last third is unit tests.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::{Secret, is_secret_option};

mod schema;
pub use schema::CURRENT as SCHEMA;

/// Name of the sled database directory inside the state dir.
const DB_DIR: &str = "docker-volume-sshfs.sled";
const TREE: &str = "volumes";
/// Name of the directory of the volumes' secret files inside the state dir.
const SECRETS_DIR: &str = "docker-volume-sshfs.secrets";
/// Name of the directory of the volumes' write-back journals inside the state dir (one
/// directory per volume, created by its first write-back mount).
const WRITEBACK_DIR: &str = "writeback";

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
    #[error(
        "volume '{name}' was stored by a newer version of the plugin (state schema {found}; this \
         plugin, version {version}, reads schemas up to {supported}). Nothing was changed: \
         upgrade the plugin again (docker plugin upgrade) to use or remove the volume",
        version = crate::version::VERSION,
        supported = SCHEMA
    )]
    NewerSchema { name: String, found: u32 },
    #[error(
        "cannot encode the record of volume '{name}' for storing ({reason}); nothing was changed. \
         This is a bug in the plugin: please report it"
    )]
    Encode { name: String, reason: String },
    #[error(
        "the {options} of volume '{name}' cannot be read from {path} ({reason}). Remove the \
         volume (docker volume rm {name}; the remote files stay) and create it again with them"
    )]
    SecretMissing {
        name: String,
        options: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "cannot {action} the secret file {path} of volume '{name}': {reason}. Check free space \
         and the plugin's state.source mount"
    )]
    SecretFile {
        name: String,
        action: &'static str,
        path: PathBuf,
        reason: String,
    },
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
/// Deliberately not `Debug`: a record built by Create or read from an older version holds
/// secret values in `raw_options` until `Store::put` moves them out.
#[derive(Clone, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    /// The mountpoint's directory name under the volumes dir, fixed at Create so that a later
    /// change of the naming scheme never moves (or shares) an existing volume's mountpoint.
    /// Also names the volume's secret file.
    pub dir: String,
    /// RFC 3339, as dockerd decodes it.
    pub created_at: String,
    /// The `-o` options exactly as given, so that they can be re-validated by a newer parser,
    /// except the values of secret options (`secret::is_secret_option`): those are in the
    /// volume's secret file, listed in `secret_options`. Records written before secret files
    /// existed hold them here; the next `Store::put` moves them (old sled segments may still
    /// hold them until sled compacts its log).
    pub raw_options: BTreeMap<String, String>,
    /// Names (as given) of the options whose values are in the volume's secret file.
    #[serde(default)]
    pub secret_options: BTreeSet<String>,
    #[serde(default)]
    pub mounts: MountCounts,
    /// SHA256 fingerprint of the server's key, pinned at the first successful mount.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Pinned keys of the jump hosts (`host:port` -> `SHA256:...`), each at the first
    /// successful mount through it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jump_host_keys: BTreeMap<String, String>,
}

impl VolumeRecord {
    /// A new volume's record, with its options as given, secrets included: `Store::put` moves
    /// those to the secret file before anything reaches sled.
    pub fn new(
        name: &str,
        dir: String,
        created_at: String,
        options: BTreeMap<String, String>,
    ) -> VolumeRecord {
        VolumeRecord {
            name: name.to_string(),
            dir,
            created_at,
            raw_options: options,
            secret_options: BTreeSet::new(),
            mounts: MountCounts::default(),
            host_key: None,
            jump_host_keys: BTreeMap::new(),
        }
    }

    /// The options without any secret value: enough for what Get shows (remote, port), read
    /// from the record alone.
    pub fn public_options(&self) -> BTreeMap<String, String> {
        self.raw_options
            .iter()
            .filter(|(k, _)| !is_secret_option(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The one field that locates a record's secret file: read on its own so that a record too
/// damaged to decode whole still gets its secrets removed.
#[derive(Deserialize)]
struct Located {
    dir: String,
}

/// What every schema version keeps (see `schema`): enough to list a record of a newer
/// version that this build cannot read whole.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct NewerRecord {
    pub name: String,
    pub dir: String,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(skip)]
    pub schema: u32,
}

/// The sled database and the secret files. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    volumes: sled::Tree,
    secrets_dir: PathBuf,
    writeback_dir: PathBuf,
}

impl Store {
    /// Opens (or creates) the database and the secrets directory under `state_dir`, root-only,
    /// and removes secret files no volume uses (left by an interrupted Create).
    pub fn open(state_dir: &Path) -> Result<Store, StateError> {
        let dir_err = |e: std::io::Error| StateError::Dir {
            path: state_dir.to_path_buf(),
            reason: e.to_string(),
        };
        // The directory may be one the user chose (state.source) and shares with other things:
        // restrict it only if we create it. The directories below are always root-only.
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
        let secrets_dir = state_dir.join(SECRETS_DIR);
        let restricted = fs::DirBuilder::new()
            .mode(0o700)
            .create(&secrets_dir)
            .or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .and_then(|()| restrict_permissions(&path))
            .and_then(|()| restrict_permissions(&secrets_dir));
        restricted.map_err(|e| StateError::Dir {
            path: state_dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let store = Store {
            db,
            volumes,
            secrets_dir,
            writeback_dir: state_dir.join(WRITEBACK_DIR),
        };
        store.remove_orphan_secrets();
        store.upgrade_older_records();
        Ok(store)
    }

    pub fn get(&self, name: &str) -> Result<Option<VolumeRecord>, StateError> {
        match self.volumes.get(name.as_bytes())? {
            None => Ok(None),
            Some(bytes) => decode(name, &bytes).map(Some),
        }
    }

    /// Every volume whose record can be read, in name order. A damaged record, or one of a
    /// newer schema (see [`Store::list_newer`]), is logged and left out rather than failing the
    /// whole list.
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

    /// The records a newer version of the plugin wrote (after a downgrade): what every schema
    /// keeps of them, so List still shows them while Get and Mount say to upgrade.
    pub fn list_newer(&self) -> Result<Vec<NewerRecord>, StateError> {
        let mut out = Vec::new();
        for item in self.volumes.iter() {
            let (_, v) = item?;
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&v) else {
                continue;
            };
            if let Ok(found) = schema::version_of(&value)
                && found > SCHEMA
                && let Ok(mut rec) = serde_json::from_value::<NewerRecord>(value)
            {
                rec.schema = found;
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Stores the record and waits until it is on disk. Secret values still in `raw_options`
    /// (a new volume, or a record of an older version) go to the secret file first, so the
    /// record that reaches sled never holds one.
    pub fn put(&self, rec: &VolumeRecord) -> Result<(), StateError> {
        let mut stored = rec.clone();
        let (moved, public): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut stored.raw_options)
                .into_iter()
                .partition(|(k, _)| is_secret_option(k));
        stored.raw_options = public;
        if !moved.is_empty() {
            let mut all = self.secrets(&stored)?;
            all.extend(moved.into_iter().map(|(k, v)| (k, Secret::new(v))));
            self.write_secrets(&stored, &all)?;
            stored.secret_options = all.into_keys().collect();
        }
        let bytes = schema::encode(&stored).map_err(|e| StateError::Encode {
            name: rec.name.clone(),
            reason: e.to_string(),
        })?;
        self.volumes.insert(rec.name.as_bytes(), bytes)?;
        self.db.flush()?;
        Ok(())
    }

    /// The options exactly as given, secrets included: what Mount connects with. Reads the
    /// volume's secret file when it has one.
    pub fn options_with_secrets(
        &self,
        rec: &VolumeRecord,
    ) -> Result<BTreeMap<String, String>, StateError> {
        let mut all = rec.raw_options.clone();
        for (k, v) in self.secrets(rec)? {
            all.insert(k, v.expose().to_string());
        }
        Ok(all)
    }

    /// Forgets the volume: its secret file is overwritten and deleted first (a failure keeps
    /// the record, so a retried Remove finds the file again), then the record.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        if let Some(bytes) = self.volumes.get(name.as_bytes())?
            && let Ok(Located { dir }) = serde_json::from_slice::<Located>(&bytes)
            && let Some(path) = self.secret_path(&dir)
        {
            shred(&path).map_err(|e| StateError::SecretFile {
                name: name.to_string(),
                action: "delete",
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        self.volumes.remove(name.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// True if a volume other than `name` already uses mount directory `dir`.
    pub fn dir_taken(&self, dir: &str, name: &str) -> Result<bool, StateError> {
        Ok(self.list()?.iter().any(|r| r.dir == dir && r.name != name))
    }

    /// The secret file of a volume whose mount directory is `dir`; `None` for a `dir` that is
    /// not a plain file name (never written by us: such a record gets no secret file).
    fn secret_path(&self, dir: &str) -> Option<PathBuf> {
        plain_name(dir).then(|| self.secrets_dir.join(dir))
    }

    /// The write-back journal directory of a volume whose mount directory is `dir` (its name
    /// made a safe file name, see `driver::mount_dir_name`): `STATE/writeback/DIR`, in the
    /// state directory and never under the mount directory (a journal inside the mount would
    /// be written through it). `None` for a `dir` that is not a plain file name.
    pub fn writeback_path(&self, dir: &str) -> Option<PathBuf> {
        plain_name(dir).then(|| self.writeback_dir.join(dir))
    }

    /// The volume's secret values by option name; empty when it has none.
    fn secrets(&self, rec: &VolumeRecord) -> Result<BTreeMap<String, Secret>, StateError> {
        if rec.secret_options.is_empty() {
            return Ok(BTreeMap::new());
        }
        let shown: Vec<&str> = rec.secret_options.iter().map(String::as_str).collect();
        let missing = |path: PathBuf, reason: String| StateError::SecretMissing {
            name: rec.name.clone(),
            options: format!("secret option(s) {}", shown.join(", ")),
            path,
            reason,
        };
        let Some(path) = self.secret_path(&rec.dir) else {
            return Err(missing(
                self.secrets_dir.clone(),
                "the record names no valid secret file".into(),
            ));
        };
        let bytes = fs::read(&path).map_err(|e| missing(path.clone(), e.to_string()))?;
        // serde's message could quote part of the file: say only that it is damaged.
        let values: BTreeMap<String, Secret> = serde_json::from_slice(&bytes)
            .map_err(|_| missing(path.clone(), "the file is damaged".into()))?;
        if let Some(absent) = rec.secret_options.iter().find(|k| !values.contains_key(*k)) {
            return Err(missing(path, format!("it has no value for {absent}")));
        }
        Ok(values)
    }

    /// Replaces the volume's secret file: written to a temporary file (0600), fsynced, renamed
    /// over the old one, and the directory fsynced, so a crash leaves the old or the new file.
    fn write_secrets(
        &self,
        rec: &VolumeRecord,
        values: &BTreeMap<String, Secret>,
    ) -> Result<(), StateError> {
        let fail = |path: &Path, e: io::Error| StateError::SecretFile {
            name: rec.name.clone(),
            action: "write",
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let path = self.secret_path(&rec.dir).ok_or_else(|| {
            fail(
                &self.secrets_dir,
                io::Error::other(format!("'{}' is not a valid file name", rec.dir)),
            )
        })?;
        let tmp = self.secrets_dir.join(format!(".{}.tmp", rec.dir));
        let mut bytes = serde_json::to_vec(values).map_err(|e| StateError::Encode {
            name: rec.name.clone(),
            reason: e.to_string(),
        })?;
        let written = write_synced(&tmp, &bytes)
            .and_then(|()| fs::rename(&tmp, &path))
            .and_then(|()| sync_dir(&self.secrets_dir));
        bytes.fill(0);
        written.map_err(|e| {
            let _ = shred(&tmp);
            fail(&path, e)
        })
    }

    /// Writes every record of an older schema back in the current one (moving any secret value
    /// still in it to its secret file). A record that cannot be upgraded is logged and left as
    /// it is: Get and Mount report why.
    fn upgrade_older_records(&self) {
        // Collected first: the loop writes to the tree it reads.
        let records: Result<Vec<_>, _> = self.volumes.iter().collect();
        let records = match records {
            Ok(r) => r,
            Err(e) => return tracing::warn!("cannot check the records' schema versions: {e}"),
        };
        for (k, v) in records {
            let name = String::from_utf8_lossy(&k).into_owned();
            match decode_versioned(&name, &v) {
                Ok((rec, from)) if from < SCHEMA => match self.put(&rec) {
                    Ok(()) => tracing::info!(
                        volume = %name, from, to = SCHEMA, "upgraded the stored record"
                    ),
                    Err(e) => {
                        tracing::warn!(volume = %name, "cannot upgrade the stored record: {e}")
                    }
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(volume = %name, "{e}"),
            }
        }
    }

    /// Overwrites and deletes the secret files that no record points to: leftovers of a Create
    /// or a write interrupted by a crash. Failures are logged: they must not stop the plugin.
    fn remove_orphan_secrets(&self) {
        let mut used = HashSet::new();
        for item in self.volumes.iter() {
            match item {
                Ok((_, v)) => {
                    if let Ok(Located { dir }) = serde_json::from_slice::<Located>(&v) {
                        used.insert(dir);
                    }
                }
                // Without the full list nothing can be called unused.
                Err(e) => return tracing::warn!("not checking for unused secret files: {e}"),
            }
        }
        let entries = match fs::read_dir(&self.secrets_dir) {
            Ok(e) => e,
            Err(e) => return tracing::warn!("cannot list the secret files: {e}"),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if used.contains(&name) {
                continue;
            }
            match shred(&entry.path()) {
                Ok(()) => tracing::info!(file = %name, "removed a secret file no volume uses"),
                Err(e) => tracing::warn!(file = %name, "cannot remove an unused secret file: {e}"),
            }
        }
    }
}

/// A stored record, brought up to the current schema (in memory: `put` stores it so).
fn decode(name: &str, bytes: &[u8]) -> Result<VolumeRecord, StateError> {
    decode_versioned(name, bytes).map(|(rec, _)| rec)
}

/// Like [`decode`], also returning the schema version the record was stored with.
fn decode_versioned(name: &str, bytes: &[u8]) -> Result<(VolumeRecord, u32), StateError> {
    let damaged = |reason: String| StateError::Decode {
        name: name.to_string(),
        reason,
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| damaged(e.to_string()))?;
    let from = schema::upgrade(&mut value).map_err(|e| match e {
        schema::Refused::Newer(found) => StateError::NewerSchema {
            name: name.to_string(),
            found,
        },
        schema::Refused::Damaged(reason) => damaged(reason),
    })?;
    let rec = serde_json::from_value(value).map_err(|e| damaged(e.to_string()))?;
    Ok((rec, from))
}

/// Creates or truncates `path` (0600), writes `bytes` and waits until they are on disk.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Overwrites the file's bytes with zeros, waits until that is on disk, then deletes it. This
/// is what a file system lets us do: on a copy-on-write or flash device the old blocks may
/// live on below it, but no file in the state directory holds the bytes any more. A missing
/// file is not an error.
/// True for a name that is one ordinary directory entry (no `/`, NUL, leading dot, nor empty).
fn plain_name(dir: &str) -> bool {
    !dir.is_empty() && !dir.starts_with('.') && !dir.contains(['/', '\0'])
}

fn shred(path: &Path) -> io::Result<()> {
    let mut f = match fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = usize::try_from(f.metadata()?.len()).map_err(io::Error::other)?;
    f.write_all(&vec![0; len])?;
    f.sync_all()?;
    drop(f);
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// fsync of a directory, so that a rename or unlink in it is on disk.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Directories 0700 and files 0600 below `path`: the state is root's alone.
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
        record_with(name, &[("sshcmd", "u@h:/x"), ("password", "hunter2")])
    }

    fn record_with(name: &str, opts: &[(&str, &str)]) -> VolumeRecord {
        let opts = opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        VolumeRecord::new(
            name,
            format!("{name}-dir"),
            "2024-01-01T00:00:00Z".into(),
            opts,
        )
    }

    /// Every file below `dir` that holds `needle` anywhere in its bytes.
    fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                found.extend(files_holding(&p, needle));
            } else if fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                found.push(p);
            }
        }
        found
    }

    fn marker(tag: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!("Marker-{tag}-{}-{nanos:08x}", std::process::id())
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
        assert_eq!(s.options_with_secrets(&r).unwrap()["password"], "hunter2");
        assert!(s.get("v2").unwrap().is_none());
        assert_eq!(s.list().unwrap().len(), 1);
        for p in [d.clone(), d.join(DB_DIR), d.join(SECRETS_DIR)] {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }
        let mode = fs::metadata(d.join(DB_DIR).join("db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(d.join(SECRETS_DIR).join("v1-dir"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the secret file");
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

    /// The shape b7644f1 wrote: the parsed options next to the raw ones, the password in both.
    fn old_shape_record(name: &str, password: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "name": name,
            "dir": format!("{name}-dir"),
            "created_at": "2024-01-01T00:00:00Z",
            "raw_options": {"sshcmd": "u@h:/x", "password": password},
            "options": {"remote": {"user": "u", "host": "h", "path": "/x"},
                        "password": password, "from": "an older version"},
            "mounts": {"id1": 1},
            "host_key": "SHA256:abc"
        }))
        .unwrap()
    }

    #[test]
    fn old_records_load_mount_and_migrate_on_the_next_write() {
        let d = temp_dir("old-shape");
        let pw = marker("old");
        let s = Store::open(&d).unwrap();
        s.volumes
            .insert("old", old_shape_record("old", &pw))
            .unwrap();
        let r = s.get("old").unwrap().expect("an old record still decodes");
        assert_eq!(r.mounts.total(), 1);
        assert_eq!(r.host_key.as_deref(), Some("SHA256:abc"));
        assert!(!r.public_options().contains_key("password"));
        assert_eq!(s.options_with_secrets(&r).unwrap()["password"], pw);

        // The next write moves the password to the secret file; it still mounts.
        s.put(&r).unwrap();
        let stored = s.volumes.get("old").unwrap().unwrap();
        let stored = String::from_utf8(stored.to_vec()).unwrap();
        assert!(!stored.contains(&pw), "migrated record: {stored}");
        let r = s.get("old").unwrap().unwrap();
        assert_eq!(r.secret_options, ["password".to_string()].into());
        let all = s.options_with_secrets(&r).unwrap();
        assert_eq!(
            (all["password"].as_str(), all["sshcmd"].as_str()),
            (pw.as_str(), "u@h:/x")
        );
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }

    /// The raw JSON sled holds for `name`.
    fn stored_json(s: &Store, name: &str) -> serde_json::Value {
        serde_json::from_slice(&s.volumes.get(name).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn unversioned_records_are_upgraded_at_open() {
        let d = temp_dir("upgrade");
        let (pw_old, pw_today) = (marker("oldest"), marker("today"));
        {
            let s = Store::open(&d).unwrap();
            // The oldest shape (b7644f1): password in raw_options, parsed options.
            s.volumes
                .insert("oldest", old_shape_record("oldest", &pw_old))
                .unwrap();
            // Today's shape before versioning: as put writes it, without `schema`.
            let mut r = record_with("today", &[("sshcmd", "u@h:/t"), ("password", &pw_today)]);
            r.host_key = Some("SHA256:pinned".into());
            r.mounts.add("c1");
            s.put(&r).unwrap();
            let mut v = stored_json(&s, "today");
            v.as_object_mut().unwrap().remove("schema").unwrap();
            s.volumes
                .insert("today", serde_json::to_vec(&v).unwrap())
                .unwrap();
            s.db.flush().unwrap();
        }
        let s = Store::open(&d).unwrap();
        for (name, pw, key) in [
            ("oldest", &pw_old, "SHA256:abc"),
            ("today", &pw_today, "SHA256:pinned"),
        ] {
            let v = stored_json(&s, name);
            assert_eq!(v["schema"], serde_json::json!(SCHEMA), "{name}: {v}");
            assert!(v.get("options").is_none(), "{name}: {v}");
            assert!(!v.to_string().contains(pw.as_str()), "{name}: {v}");
            let r = s.get(name).unwrap().unwrap();
            assert_eq!(r.host_key.as_deref(), Some(key), "{name}");
            assert_eq!(r.mounts.total(), 1, "{name}");
            assert_eq!(
                s.options_with_secrets(&r).unwrap()["password"],
                *pw,
                "{name}"
            );
        }
        assert_eq!(s.list().unwrap().len(), 2);
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_newer_schema_is_a_clear_error_and_never_overwritten() {
        let d = temp_dir("newer");
        let newer = serde_json::json!({
            "schema": SCHEMA + 1, "name": "future", "dir": "future-dir",
            "created_at": "2030-01-01T00:00:00Z", "shape": {"unknown": true}
        });
        {
            let s = Store::open(&d).unwrap();
            s.put(&record("kept")).unwrap();
            s.volumes
                .insert("future", serde_json::to_vec(&newer).unwrap())
                .unwrap();
            s.db.flush().unwrap();
        }
        let s = Store::open(&d).unwrap();
        assert_eq!(stored_json(&s, "future"), newer, "open left it untouched");
        let e = s
            .get("future")
            .err()
            .expect("a newer record must not decode");
        assert!(matches!(e, StateError::NewerSchema { found, .. } if found == SCHEMA + 1));
        let e = e.to_string();
        for needed in [
            "'future'",
            "newer version",
            "docker plugin upgrade",
            "Nothing was changed",
        ] {
            assert!(e.contains(needed), "{needed}: {e}");
        }
        let names: Vec<String> = s.list().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["kept"]);
        assert_eq!(
            s.list_newer().unwrap(),
            [NewerRecord {
                name: "future".into(),
                dir: "future-dir".into(),
                created_at: Some("2030-01-01T00:00:00Z".into()),
                schema: SCHEMA + 1,
            }]
        );
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn removed_volumes_leave_no_byte_of_their_secrets() {
        let d = temp_dir("shred");
        let (pw, pp) = (marker("pw"), marker("pp"));
        {
            let s = Store::open(&d).unwrap();
            let mut r = record_with(
                "v",
                &[("sshcmd", "u@h:/x"), ("Password", &pw), ("passphrase", &pp)],
            );
            s.put(&r).unwrap();
            // Mount/Unmount rewrite the record many times.
            for i in 0..20 {
                r = s.get("v").unwrap().unwrap();
                r.mounts.add(&format!("id{i}"));
                s.put(&r).unwrap();
            }
            let all = s.options_with_secrets(&r).unwrap();
            assert_eq!((&all["Password"], &all["passphrase"]), (&pw, &pp));
            for m in [&pw, &pp] {
                assert_eq!(
                    files_holding(&d.join(DB_DIR), m.as_bytes()),
                    Vec::<PathBuf>::new()
                );
            }
            s.remove("v").unwrap();
            assert!(s.get("v").unwrap().is_none());
        }
        for m in [&pw, &pp] {
            assert_eq!(
                files_holding(&d, m.as_bytes()),
                Vec::<PathBuf>::new(),
                "{m}"
            );
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_secret_file_is_a_clear_error() {
        let d = temp_dir("missing-secret");
        let s = Store::open(&d).unwrap();
        s.put(&record("v")).unwrap();
        let r = s.get("v").unwrap().unwrap();
        // What Get shows needs no secret.
        assert_eq!(r.public_options()["sshcmd"], "u@h:/x");
        fs::remove_file(d.join(SECRETS_DIR).join("v-dir")).unwrap();
        let e = s.options_with_secrets(&r).err().unwrap().to_string();
        for needed in ["'v'", "password", "docker volume rm v", "create it again"] {
            assert!(e.contains(needed), "{needed}: {e}");
        }
        // Removing it still works.
        s.remove("v").unwrap();
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unused_secret_files_are_removed_at_open() {
        let d = temp_dir("orphans");
        {
            let s = Store::open(&d).unwrap();
            s.put(&record("kept")).unwrap();
        }
        let orphan = d.join(SECRETS_DIR).join("gone-dir");
        let tmp = d.join(SECRETS_DIR).join(".kept-dir.tmp");
        fs::write(&orphan, b"{\"password\":\"left\"}").unwrap();
        fs::write(&tmp, b"partial").unwrap();
        let s = Store::open(&d).unwrap();
        assert!(!orphan.exists() && !tmp.exists());
        let r = s.get("kept").unwrap().unwrap();
        assert_eq!(s.options_with_secrets(&r).unwrap()["password"], "hunter2");
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn records_without_secrets_have_no_secret_file() {
        let d = temp_dir("no-secret");
        let s = Store::open(&d).unwrap();
        s.put(&record_with(
            "k",
            &[("sshcmd", "u@h:/x"), ("password_file", "/root/.ssh/pw")],
        ))
        .unwrap();
        let r = s.get("k").unwrap().unwrap();
        assert!(r.secret_options.is_empty());
        assert_eq!(fs::read_dir(d.join(SECRETS_DIR)).unwrap().count(), 0);
        assert_eq!(s.options_with_secrets(&r).unwrap(), r.raw_options);
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }
}
