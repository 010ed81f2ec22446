//! The `runway` command's exit codes: one meaning each, the same for every command (README,
//! "Exit codes"). A command fails with an `anyhow::Error`; the first [`Failure`] in its chain
//! decides the code, else a run-store or HTTP error in it (the service could not be reached or
//! failed), else [`OTHER`].

use std::process::ExitCode;

/// The command did what it was asked; a run it followed passed.
pub const OK: u8 = 0;
/// A run the command followed to its end (`submit`, `retry --wait`, `watch`) ended without
/// passing: failed, error, timed out or canceled.
pub const NOT_PASSED: u8 = 1;
/// Usage or bad input: flags clap refused (clap's own code), an argument or file the command
/// cannot use, or a request the launcher refused (an HTTP 4xx: invalid, not found, conflict,
/// unauthorized).
pub const BAD_INPUT: u8 = 2;
/// The launcher (or the run store, for the admin commands) could not be reached or failed:
/// connection refused or broken, an HTTP 5xx, an answer that is not the API's.
pub const UNREACHABLE: u8 = 3;
/// Anything else (e.g. `runway dev` could not start).
pub const OTHER: u8 = 4;

/// A failure whose kind the command knows, and so its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A followed run ended without passing.
    #[error("run {id} ended {result}, not passed")]
    NotPassed {
        /// The run.
        id: String,
        /// Its result (or "without a result").
        result: String,
    },
    /// Usage or bad input; the sentence names it.
    #[error("{0}")]
    BadInput(String),
    /// The service could not be reached or failed; the sentence says which and where.
    #[error("{0}")]
    Unreachable(String),
}

impl Failure {
    /// This failure's exit code.
    pub fn code(&self) -> u8 {
        match self {
            Self::NotPassed { .. } => NOT_PASSED,
            Self::BadInput(_) => BAD_INPUT,
            Self::Unreachable(_) => UNREACHABLE,
        }
    }
}

/// The exit code of a command that failed with `error`.
pub fn code_of(error: &anyhow::Error) -> u8 {
    if let Some(failure) = error.chain().find_map(|e| e.downcast_ref::<Failure>()) {
        return failure.code();
    }
    // A database URL that names no usable store is the caller's input, not a service down.
    if error
        .chain()
        .any(|e| matches!(e.downcast_ref(), Some(runway_runs::StoreError::BadUrl(_))))
    {
        return BAD_INPUT;
    }
    let service = error.chain().any(|e| {
        e.is::<runway_runs::StoreError>() || e.is::<sqlx::Error>() || e.is::<reqwest::Error>()
    });
    if service { UNREACHABLE } else { OTHER }
}

/// Prints `error` as one line on stderr and gives its exit code.
pub fn report(error: &anyhow::Error) -> ExitCode {
    // One sentence (with its causes), never a backtrace.
    eprintln!("error: {error:#}");
    ExitCode::from(code_of(error))
}

/// `error` as bad input, unless a run-store failure is in it (then the store's fault stands).
pub fn as_bad_input(error: anyhow::Error) -> anyhow::Error {
    if code_of(&error) == OTHER {
        Failure::BadInput(format!("{error:#}")).into()
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn the_first_failure_in_the_chain_decides() {
        let not_passed: anyhow::Error = Failure::NotPassed {
            id: "r".into(),
            result: "failed".into(),
        }
        .into();
        assert_eq!(code_of(&not_passed.context("following run r")), NOT_PASSED);
        let wrapped = Err::<(), _>(Failure::Unreachable("down".into()))
            .context("listing runs")
            .expect_err("an error");
        assert_eq!(code_of(&wrapped), UNREACHABLE);
        assert_eq!(code_of(&anyhow::anyhow!("no port")), OTHER);
        assert_eq!(code_of(&as_bad_input(anyhow::anyhow!("bad id"))), BAD_INPUT);
        let store = anyhow::Error::new(runway_runs::StoreError::Corrupt("x".into()));
        assert_eq!(code_of(&as_bad_input(store)), UNREACHABLE);
        let url = anyhow::Error::new(runway_runs::StoreError::BadUrl("mysql".into()))
            .context("cannot open the run store");
        assert_eq!(code_of(&url), BAD_INPUT);
    }
}
