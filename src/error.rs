//! The error a command ends with, and its exit code: 2 for bad usage or configuration,
//! 1 for a failed step or any other runtime failure.

use crate::pipeline::Diagnostics;
use crate::pipeline::executor::ExecError;
use crate::pipeline::rundir::RunDirError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(#[from] Diagnostics),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Usage(_) => 2,
            Error::RunDir(
                RunDirError::NotARun { .. }
                | RunDirError::NoRuns(_)
                | RunDirError::Exists { .. }
                | RunDirError::BadName(_),
            ) => 2,
            _ => 1,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Other(e.into())
    }
}
