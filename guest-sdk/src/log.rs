//! Lines in the host's log.
//!
//! The host tags each line with the tenant and plugin and applies its own
//! log filter, so a plugin does not add either. These functions call into
//! the host: they work only inside a component, not in native unit tests.
//! Keep per-message lines at `trace` or `debug`.

pub use crate::bindings::sluice::pipeline::host::Level;

/// Write `message` at `level`.
pub fn log(level: Level, message: &str) {
    crate::bindings::sluice::pipeline::host::log(level, message);
}

/// Write `message` at trace level.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Write `message` at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Write `message` at info level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Write `message` at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Write `message` at error level.
pub fn error(message: &str) {
    log(Level::Error, message);
}
