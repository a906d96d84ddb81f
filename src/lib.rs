//! The idv-broker binary's library half: settings, wiring and shutdown, so that
//! tests can start the real server in-process.
//!
//! Layout:
//! - [`credentials_file`]: the credentials of every source (flags, `--credentials`), checked together.
//! - [`demo`]: demo mode's own secrets.
//! - [`reload`]: credentials put in use, at start and on `SIGHUP`.
//! - [`settings`]: flags and environment (SPEC §6).
//! - [`startup`]: [`Application::build`](startup::Application::build) and the ordered shutdown.

pub mod credentials_file;
pub mod demo;
pub mod reload;
pub mod settings;
pub mod startup;

pub use settings::Settings;
pub use startup::Application;
