//! The store's error type and the mapping from redb's errors to it.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in the store. Each variant names the file or directory involved.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// The data directory could not be created or read.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The store file could not be opened for a reason other than damage (permissions, missing file,
    /// another process holding it).
    #[error("cannot open store file {path}: {detail}")]
    Open {
        /// The store file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The file is damaged beyond what redb repairs by itself on open.
    #[error(
        "store file {path} is damaged: {detail}. Run `halyard ctl store check --data-dir {dir}` to see what is \
         affected, then `halyard ctl store repair --data-dir {dir}`"
    )]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// The data directory, for the recovery commands.
        dir: PathBuf,
        /// What redb (or the store's own checks) found.
        detail: String,
    },
    /// `repair` met damage that redb cannot repair (a damaged page in the live tree: reading it would
    /// give garbage, so the store will not copy it either).
    #[error(
        "store file {path} is damaged beyond repair: {detail}. Move it aside (`mv {path} {path}.damaged`) and \
         restart to begin with an empty store (its sessions, queued messages and retained messages are lost), \
         or restore the data directory from a backup"
    )]
    Unrepairable {
        /// The store file.
        path: PathBuf,
        /// What redb found.
        detail: String,
    },
    /// The file was written by a build with another on-disk layout.
    #[error("store file {path} has layout version {found}; this build reads version {supported}")]
    UnsupportedFormat {
        /// The store file.
        path: PathBuf,
        /// Version found in the file.
        found: u64,
        /// Version this build reads and writes.
        supported: u64,
    },
    /// A write failed earlier (disk full, I/O error): the store refuses new work until it is reopened.
    /// Tickets submitted after the failure are never reported committed.
    #[error(
        "store {path} is unavailable: a write failed ({reason}); it accepts no new work until the broker restarts"
    )]
    Unavailable {
        /// The store file.
        path: PathBuf,
        /// The first failure.
        reason: String,
    },
    /// A read or write failed.
    #[error("store file {path}: {what} failed: {detail}")]
    Io {
        /// The store file.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// The underlying error.
        detail: String,
    },
}

impl StoreError {
    /// True for [`StoreError::Unavailable`].
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// True for [`StoreError::Corrupt`].
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }
}

/// Maps a redb error (any of its error types) met while doing `what` on `file`.
pub(crate) fn from_redb(file: &Path, what: &'static str, err: impl Into<redb::Error>) -> StoreError {
    let err: redb::Error = err.into();
    match err {
        redb::Error::Corrupted(detail) => corrupt(file, detail),
        redb::Error::RepairAborted => corrupt(file, "redb's repair was aborted".to_string()),
        redb::Error::DatabaseAlreadyOpen => StoreError::Open {
            path: file.to_path_buf(),
            detail: "it is already open (is another broker or `halyard ctl` using this data directory?)".to_string(),
        },
        redb::Error::UpgradeRequired(version) => StoreError::Open {
            path: file.to_path_buf(),
            detail: format!("redb file format {version} needs an upgrade this build does not perform"),
        },
        // A table of ours with the wrong types is a file that is not ours or is damaged.
        e @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }) => corrupt(file, e.to_string()),
        redb::Error::Io(e) if matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData) => {
            corrupt(file, format!("{e} (file truncated or garbled)"))
        }
        e => StoreError::Io { path: file.to_path_buf(), what, detail: e.to_string() },
    }
}

pub(crate) fn corrupt(file: &Path, detail: String) -> StoreError {
    StoreError::Corrupt {
        path: file.to_path_buf(),
        dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        detail,
    }
}

/// Turns a panic payload caught around redb calls into text. redb may panic on garbage it does not
/// checksum first; the store reports that as damage instead of taking the broker down.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
