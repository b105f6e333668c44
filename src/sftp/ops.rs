//! Requests by path, which need no open file: attributes, listings, creating, removing and
//! renaming names, links, filesystem statistics, and resolving the mount's root directory.
//! Each runs on any channel of the live connection and is retried across reconnects; those that
//! are not idempotent look at the server's state before failing a resend (see
//! `Sftp::retry_noting` for the rule).

use std::sync::Arc;

use russh_sftp::client::RawSftpSession;
use russh_sftp::extensions::Statvfs;
use russh_sftp::protocol::{FileAttributes, Packet, StatusCode};

use super::channel::Use;
use super::error::{Error, RawResult};
use super::{Resent, Sftp};
use crate::ssh::ConnectError;

/// READDIRs sent at once at first: OpenSSH answers each with the next batch of up to 100 names,
/// or EOF, so a directory of up to 100 names (most) is read in one round trip after the OPENDIR
/// with no request past its EOF (each costs the server a readdir and us a packet each way).
const READDIR_FIRST: usize = 2;
/// Then each round sends twice as many, up to this: a big directory takes few round trips
/// (100,000 names: 35 instead of 251 at 4 a time) and wastes at most this many less one.
const READDIR_PIPELINE_MAX: usize = 32;

/// One entry of a directory listing, with the attributes the server sent alongside.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub attrs: FileAttributes,
    /// The link count, from the `ls -l` style long name OpenSSH sends (SFTP v3 attributes
    /// carry none); `None` when the long name does not look like one.
    pub nlink: Option<u32>,
}

/// The link count in an `ls -l` style line ("-rw-r--r--    2 user group ..."), the format
/// OpenSSH's sftp-server uses for READDIR long names.
pub fn longname_nlink(longname: &str) -> Option<u32> {
    let mut fields = longname.split_ascii_whitespace();
    let mode = fields.next()?;
    // The server's text, possibly not ASCII: look at chars, never slice by byte offsets.
    let mut chars = mode.chars();
    let mode_like = chars.next().is_some_and(|c| "-dlcbps".contains(c))
        && chars
            .by_ref()
            .take(9)
            .filter(|c| "rwxsStT-".contains(*c))
            .count()
            == 9;
    if !mode_like {
        return None;
    }
    fields.next()?.parse().ok().filter(|n| *n >= 1)
}

/// OpenSSH's extension that sets attributes without following a symlink (its PROTOCOL §4.10).
pub(super) const LSETSTAT: &str = "lsetstat@openssh.com";

fn status_ok(packet: Packet) -> RawResult<()> {
    match packet {
        Packet::Status(st) if st.status_code == StatusCode::Ok => Ok(()),
        Packet::Status(st) => Err(russh_sftp::client::error::Error::Status(st)),
        _ => Err(russh_sftp::client::error::Error::UnexpectedPacket),
    }
}

/// SSH wire encoding of a string: u32 length, then the bytes.
fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

impl Sftp {
    pub async fn lstat(&self, path: &str) -> Result<FileAttributes, Error> {
        self.on_any_channel(|c| async move { c.raw.lstat(path).await.map(|a| a.attrs) })
            .await
    }

    pub async fn stat(&self, path: &str) -> Result<FileAttributes, Error> {
        self.on_any_channel(|c| async move { c.raw.stat(path).await.map(|a| a.attrs) })
            .await
    }

    pub async fn setstat(&self, path: &str, attrs: FileAttributes) -> Result<(), Error> {
        self.on_any_channel(|c| {
            let attrs = attrs.clone();
            async move { c.raw.setstat(path, attrs).await.map(drop) }
        })
        .await
    }

    /// Whether the server can set attributes on a symlink itself ([`Sftp::lsetstat`]).
    pub fn has_lsetstat(&self) -> bool {
        self.remote.lsetstat
    }

    /// `lsetstat@openssh.com`: sets the ownership and times of `path` itself, never of what a
    /// symlink there points to (OpenSSH applies them with fchownat/utimensat and
    /// AT_SYMLINK_NOFOLLOW). Only uid/gid and times are sent: OpenSSH refuses a size, and a
    /// mode fails on Linux (fchmodat cannot change a symlink). Check [`Sftp::has_lsetstat`]
    /// first: a server without it may not even answer.
    pub async fn lsetstat(&self, path: &str, attrs: &FileAttributes) -> Result<(), Error> {
        let attrs = FileAttributes {
            uid: attrs.uid,
            gid: attrs.gid,
            atime: attrs.atime,
            mtime: attrs.mtime,
            ..FileAttributes::empty()
        };
        let mut data = Vec::with_capacity(path.len() + 32);
        put_string(&mut data, path);
        let encoded = russh_sftp::ser::to_bytes(&attrs).map_err(|e| Error::Other(e.to_string()))?;
        data.extend_from_slice(&encoded);
        self.on_any_channel(|c| {
            let data = data.clone();
            async move { status_ok(c.raw.extended(LSETSTAT, data).await?) }
        })
        .await
    }

    /// Sets `attrs` on `path` without following a symlink there where SFTP allows it: size and
    /// mode by SETSTAT (SFTP has no mode change that does not follow), owner and times by
    /// [`Sftp::lsetstat`] when the server has it, so a file that another client replaced with
    /// a symlink is not followed for those; without it, all by SETSTAT.
    pub async fn setstat_nofollow(&self, path: &str, attrs: FileAttributes) -> Result<(), Error> {
        if !self.has_lsetstat() {
            return self.setstat(path, attrs).await;
        }
        let follows = FileAttributes {
            size: attrs.size,
            permissions: attrs.permissions,
            ..FileAttributes::empty()
        };
        if follows.size.is_some() || follows.permissions.is_some() {
            self.setstat(path, follows).await?;
        }
        let rest = attrs.uid.is_some()
            || attrs.gid.is_some()
            || attrs.atime.is_some()
            || attrs.mtime.is_some();
        if rest {
            self.lsetstat(path, &attrs).await?;
        }
        Ok(())
    }

    /// The whole listing (without `.` and `..`), in server order: OPENDIR, then READDIRs
    /// pipelined (`READDIR_FIRST`, then twice as many each round); the CLOSE is not waited for.
    pub async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        self.retry(|conn| async move {
            let (channel, permit) = conn.permit(Use::Listing).await?;
            let handle = channel.guard(channel.raw.opendir(path)).await?.handle;
            let mut entries = Vec::new();
            let mut depth = READDIR_FIRST;
            let result = 'listing: loop {
                // join_all polls in order, so the requests go out (and are answered) in order.
                let batch = futures::future::join_all(
                    (0..depth).map(|_| channel.guard(channel.raw.readdir(handle.as_str()))),
                )
                .await;
                depth = (depth * 2).min(READDIR_PIPELINE_MAX);
                for r in batch {
                    match r {
                        Ok(name) => entries.extend(
                            name.files
                                .into_iter()
                                .filter(|f| f.filename != "." && f.filename != "..")
                                .map(|f| DirEntry {
                                    nlink: longname_nlink(&f.longname),
                                    name: f.filename,
                                    attrs: f.attrs,
                                }),
                        ),
                        Err(russh_sftp::client::error::Error::Status(st))
                            if st.status_code == StatusCode::Eof =>
                        {
                            break 'listing Ok(entries);
                        }
                        Err(e) => break 'listing Err(e),
                    }
                }
            };
            // Nobody needs the answer to the CLOSE: send it in the background. The handle
            // permit is held until the server has answered, so the server never holds more
            // handles than we count.
            let closing = Arc::clone(&channel);
            tokio::spawn(async move {
                let _ = closing.guard(closing.raw.close(handle)).await;
                drop(permit);
            });
            result
        })
        .await
    }

    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<(), Error> {
        let (r, resent) = self
            .on_any_channel_noting(|c| async move {
                let attrs = FileAttributes {
                    permissions: Some(mode & 0o7777),
                    ..FileAttributes::empty()
                };
                c.raw.mkdir(path, attrs).await.map(drop)
            })
            .await;
        match r {
            Err(e) if resent_over(&e, resent, StatusCode::Failure) => {
                let made = matches!(self.lstat(path).await, Ok(a) if a.is_dir());
                took_effect("mkdir", path, made, e)
            }
            r => r,
        }
    }

    pub async fn rmdir(&self, path: &str) -> Result<(), Error> {
        let sent = self
            .on_any_channel_noting(|c| async move { c.raw.rmdir(path).await.map(drop) })
            .await;
        self.removed("rmdir", path, sent).await
    }

    pub async fn remove(&self, path: &str) -> Result<(), Error> {
        let sent = self
            .on_any_channel_noting(|c| async move { c.raw.remove(path).await.map(drop) })
            .await;
        self.removed("unlink", path, sent).await
    }

    /// The outcome of removing `path`: a resend's ENOENT is our own first attempt's doing
    /// when that may have reached the server (the name is gone either way).
    async fn removed(
        &self,
        op: &str,
        path: &str,
        (r, resent): (Result<(), Error>, Resent),
    ) -> Result<(), Error> {
        match r {
            Err(e) if resent_over(&e, resent, StatusCode::NoSuchFile) => {
                let gone = self.absent(path).await;
                took_effect(op, path, gone, e)
            }
            r => r,
        }
    }

    /// Renames, replacing `to` if it exists (posix-rename@openssh.com).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), Error> {
        let (r, resent) = if self.remote.posix_rename {
            let mut data = Vec::with_capacity(from.len() + to.len() + 8);
            put_string(&mut data, from);
            put_string(&mut data, to);
            self.on_any_channel_noting(|c| {
                let data = data.clone();
                async move { status_ok(c.raw.extended("posix-rename@openssh.com", data).await?) }
            })
            .await
        } else {
            self.on_any_channel_noting(|c| async move { c.raw.rename(from, to).await.map(drop) })
                .await
        };
        match r {
            Err(e) if resent_over(&e, resent, StatusCode::NoSuchFile) => {
                let moved = self.absent(from).await && self.lstat(to).await.is_ok();
                took_effect("rename", from, moved, e)
            }
            r => r,
        }
    }

    /// Creates `link` pointing at `target` (argument order handled for OpenSSH).
    pub async fn symlink(&self, target: &str, link: &str) -> Result<(), Error> {
        // OpenSSH takes SSH_FXP_SYMLINK's arguments reversed (its PROTOCOL §4.1): target first.
        // russh-sftp sends its first argument first.
        let (r, resent) = self
            .on_any_channel_noting(|c| async move { c.raw.symlink(target, link).await.map(drop) })
            .await;
        match r {
            Err(e) if resent_over(&e, resent, StatusCode::Failure) => {
                let ours = matches!(self.readlink(link).await, Ok(t) if t == target);
                took_effect("symlink", link, ours, e)
            }
            r => r,
        }
    }

    pub async fn readlink(&self, path: &str) -> Result<String, Error> {
        self.on_any_channel(|c| async move {
            let name = c.raw.readlink(path).await?;
            name.files
                .into_iter()
                .next()
                .map(|f| f.filename)
                .ok_or(russh_sftp::client::error::Error::UnexpectedPacket)
        })
        .await
    }

    /// hardlink@openssh.com: `new` becomes another name for `existing`.
    pub async fn hardlink(&self, existing: &str, new: &str) -> Result<(), Error> {
        let (r, resent) = self
            .on_any_channel_noting(|c| async move { c.raw.hardlink(existing, new).await.map(drop) })
            .await;
        match r {
            Err(e) if resent_over(&e, resent, StatusCode::Failure) => {
                let (a, b) = tokio::join!(self.lstat(existing), self.lstat(new));
                let same = matches!((a, b), (Ok(a), Ok(b)) if same_file(&a, &b));
                took_effect("link", new, same, e)
            }
            r => r,
        }
    }

    /// True if the server says `path` does not exist.
    pub(super) async fn absent(&self, path: &str) -> bool {
        matches!(self.lstat(path).await, Err(e) if e.is_status(StatusCode::NoSuchFile))
    }

    /// The login's starting directory (sftp-server's `.`), as the server resolves it.
    pub async fn home(&self) -> Result<String, Error> {
        self.on_any_channel(|c| async move {
            let name = c.raw.realpath(".").await?;
            name.files
                .into_iter()
                .next()
                .map(|f| f.filename)
                .ok_or(russh_sftp::client::error::Error::UnexpectedPacket)
        })
        .await
    }

    pub async fn statvfs(&self, path: &str) -> Result<Statvfs, Error> {
        self.on_any_channel(|c| async move { c.raw.statvfs(path).await })
            .await
    }
}

/// True if a resend failed with `code` while an earlier attempt may have taken effect: the case
/// where the server's state decides (see `Sftp::retry_noting`).
pub(super) fn resent_over(e: &Error, resent: Resent, code: StatusCode) -> bool {
    resent == Resent::MaybeDone && e.is_status(code)
}

/// The outcome of a resent request whose resend failed with `e`: success if the server shows
/// that the first attempt did what was asked.
pub(super) fn took_effect(op: &str, path: &str, done: bool, e: Error) -> Result<(), Error> {
    if done {
        tracing::info!(
            path,
            "{op} was resent after a lost connection and refused; the server shows the first \
             attempt took effect"
        );
        Ok(())
    } else {
        Err(e)
    }
}

/// Two names of one file, as far as SFTP v3 (no inode numbers) can tell.
fn same_file(a: &FileAttributes, b: &FileAttributes) -> bool {
    a.permissions.is_some()
        && (a.permissions, a.size, a.mtime, a.uid, a.gid)
            == (b.permissions, b.size, b.mtime, b.uid, b.gid)
}

/// `realpath` of the configured path, which must be a directory. The stat goes out with the
/// realpath (of the path as given: the same directory), so both cost one round trip.
pub(super) async fn resolve_root(raw: &RawSftpSession, path: &str) -> Result<String, ConnectError> {
    let shown = if path.is_empty() { "~" } else { path };
    let remote_err = |reason: String| ConnectError::RemotePath {
        path: shown.to_string(),
        reason,
    };
    let describe = |e: russh_sftp::client::error::Error| match e {
        russh_sftp::client::error::Error::Status(st) => match st.status_code {
            StatusCode::NoSuchFile => "does not exist".to_string(),
            StatusCode::PermissionDenied => "is not accessible to this user".to_string(),
            _ => format!("cannot be opened ({})", st.error_message),
        },
        other => format!("cannot be checked ({other})"),
    };
    let target = if path.is_empty() { "." } else { path };
    let (name, attrs) = tokio::join!(raw.realpath(target), raw.stat(target));
    let root = name
        .map_err(|e| remote_err(describe(e)))?
        .files
        .into_iter()
        .next()
        .map(|f| f.filename)
        .ok_or_else(|| remote_err("cannot be resolved".into()))?;
    let attrs = attrs.map_err(|e| remote_err(describe(e)))?.attrs;
    if !attrs.is_dir() {
        return Err(remote_err("is not a directory".into()));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::longname_nlink;

    #[test]
    fn link_count_from_long_names() {
        let line = "-rw-r--r--    2 user     group        12 Nov 22 00:03 orig";
        assert_eq!(longname_nlink(line), Some(2));
        assert_eq!(
            longname_nlink("drwxr-sr-x   17 0 0 4096 Jan  1  2024 d"),
            Some(17)
        );
        assert_eq!(longname_nlink("orig"), None);
        assert_eq!(longname_nlink(""), None);
        assert_eq!(longname_nlink("-rw-r--r-- x user"), None);
        // Multi-byte characters where the mode is: byte slicing used to panic here.
        assert_eq!(longname_nlink("-rwé-r--r-- 2 u g"), None);
        assert_eq!(longname_nlink("-rw-r--r-é 2 u g"), None);
        assert_eq!(longname_nlink("éééééééééé 2 u g"), None);
        assert_eq!(longname_nlink("-rw-r--r--é 3 u g"), Some(3));
    }

    proptest::proptest! {
        #[test]
        fn any_long_name_is_parsed_without_panic(s in ".*", n in 1u32..) {
            let _ = longname_nlink(&s);
            let line = format!("-rw-r--r-- {n} {s}");
            proptest::prop_assert_eq!(longname_nlink(&line), Some(n));
        }
    }
}
