//! Why a remote call failed: [`Error`], the SFTP status → errno table (as sshfs maps them),
//! and the split of russh-sftp's errors into "the server said no" and "the transport failed".

use russh_sftp::protocol::StatusCode;

/// What russh-sftp returns; turned into an [`Error`] (with [`from_raw`]) once retrying is over.
pub(super) type RawResult<T> = Result<T, russh_sftp::client::error::Error>;

/// Why a remote call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status.
    #[error("{code:?}: {message}")]
    Status { code: StatusCode, message: String },
    /// The connection is gone and did not come back within `reconnect_timeout`.
    #[error("connection to the SSH server lost: {0}")]
    Disconnected(String),
    /// The server did not answer in time.
    #[error("the SSH server did not answer in time")]
    Timeout,
    /// Anything else the client library reported.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The errno a filesystem call should fail with (as sshfs maps SFTP status codes).
    pub fn errno(&self) -> i32 {
        match self {
            Error::Status { code, .. } => match code {
                StatusCode::Ok => 0,
                StatusCode::Eof => libc::EIO,
                StatusCode::NoSuchFile => libc::ENOENT,
                StatusCode::PermissionDenied => libc::EACCES,
                StatusCode::Failure => libc::EPERM,
                StatusCode::BadMessage => libc::EBADMSG,
                StatusCode::NoConnection => libc::ENOTCONN,
                StatusCode::ConnectionLost => libc::ECONNABORTED,
                StatusCode::OpUnsupported => libc::EOPNOTSUPP,
            },
            Error::Disconnected(_) | Error::Timeout | Error::Other(_) => libc::EIO,
        }
    }

    /// True for a status the server sent (as opposed to a transport problem).
    pub fn is_status(&self, code: StatusCode) -> bool {
        matches!(self, Error::Status { code: c, .. } if *c == code)
    }
}

/// True if the request failed because the connection did (worth a reconnect and a retry).
pub(super) fn transport_error(e: &russh_sftp::client::error::Error) -> bool {
    use russh_sftp::client::error::Error as E;
    matches!(e, E::IO(_) | E::Timeout | E::UnexpectedBehavior(_))
}

/// How a request failed when its channel's stream had ended (or never began).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// The stream was already gone: the request was never handed to the transport.
    BeforeSending,
    /// The stream ended with the request handed over and unanswered: it may have reached
    /// the server.
    InFlight,
}

/// Whether `e` says the request's channel ended (russh-sftp's own wording: "session closed"
/// and a failed send for a stream already gone, "sender dropped" for one that went while the
/// request waited for its answer).
pub(super) fn channel_ended(e: &russh_sftp::client::error::Error) -> Option<Ended> {
    use russh_sftp::client::error::Error as E;
    match e {
        E::UnexpectedBehavior(m) if m == "session closed" || m.starts_with("SendError") => {
            Some(Ended::BeforeSending)
        }
        E::UnexpectedBehavior(m) if m == "sender dropped" => Some(Ended::InFlight),
        // Ours: a channel that could not be opened, so nothing was sent on it.
        E::IO(_) => Some(Ended::BeforeSending),
        _ => None,
    }
}

/// True if a request that failed with `e` may still have been carried out by the server:
/// every transport failure except one that happened before the request was handed over.
pub(super) fn may_have_reached(e: &russh_sftp::client::error::Error) -> bool {
    transport_error(e) && channel_ended(e) != Some(Ended::BeforeSending)
}

pub(super) fn from_raw(e: russh_sftp::client::error::Error) -> Error {
    use russh_sftp::client::error::Error as E;
    match e {
        E::Status(st) => Error::Status {
            code: st.status_code,
            message: st.error_message,
        },
        E::Timeout => Error::Timeout,
        E::IO(m) | E::UnexpectedBehavior(m) => Error::Disconnected(m),
        other => Error::Other(other.to_string()),
    }
}
