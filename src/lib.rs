//! The idv-broker binary's library half: settings, wiring and shutdown, so that
//! tests can start the real server in-process.
//!
//! Layout:
//! - [`demo`]: demo mode's own secrets.
//! - [`settings`]: flags and environment (SPEC §6).
//! - [`startup`]: [`Application::build`](startup::Application::build) and the ordered shutdown.

pub mod demo;
pub mod settings;
pub mod startup;

pub use settings::Settings;
pub use startup::Application;
