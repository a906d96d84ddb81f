#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Integration tests against the real server: in-process (`spawn_app`) for most,
//! the real binary for restarts and `kill -9`.

mod helpers;

mod at_rest;
mod binding;
mod caching;
mod concurrency;
mod credentials;
mod credentials_file;
mod custody;
mod demo;
mod devices;
mod expiry;
mod idempotency;
mod journeys;
mod json_depth;
mod jwks;
mod limits;
mod logs;
mod metrics;
mod openapi;
mod origins;
mod pages;
mod probes;
mod realtime;
mod restart;
mod rules;
mod sessions;
mod shutdown;
mod staging;
mod status;
mod supervision;
mod tasks;
mod users;
mod validation;
mod webhooks;
mod ws_close;
