//! The one error agent handlers return to refuse a request.

use std::io;

use crate::paths::repr;
use crate::sys::strerror;

#[derive(Debug)]
pub struct RequestError {
    /// A `corral.api.errors.ErrorCode` value.
    pub code: &'static str,
    pub message: String,
}

impl RequestError {
    pub fn new(code: &'static str, message: impl Into<String>) -> RequestError {
        RequestError { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> RequestError {
        RequestError::new("invalid_argument", message)
    }

    /// An OS error of a file operation, with the error code the node maps it to.
    pub fn os(action: &str, path: &[u8], err: &io::Error) -> RequestError {
        let code = match err.raw_os_error().unwrap_or(0) {
            2 => "not_found",                  // ENOENT
            13 | 1 | 30 => "permission_denied", // EACCES, EPERM, EROFS
            17 => "already_exists",            // EEXIST
            28 | 122 => "resource_exhausted",  // ENOSPC, EDQUOT
            _ => "invalid_argument",
        };
        let detail = if code == "resource_exhausted" { "disk limit reached".into() } else { strerror(err) };
        RequestError::new(code, format!("{action} {}: {detail}", repr(path)))
    }
}

pub type Result<T> = std::result::Result<T, RequestError>;
