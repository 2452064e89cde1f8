//! `admedia-loadtest`: the AdMedia orchestrator's load tester.
//!
//! It starts the server (`--spawn`) or targets one (`--url`), creates users
//! across the membership tiers, connects simulated GPU workers over the
//! real WebSocket protocol with fault injection, applies open-loop
//! (Poisson) or closed-loop load, audits every credit and job invariant
//! from the API at the end, and writes a report (stdout table, JSON, and a
//! self-contained HTML page with SVG charts).
//!
//! Modules: [`cli`] (flags and scenarios), [`server`] (the child process),
//! [`setting`] (the text form of the settings a spawned server is given),
//! [`api`] (HTTP client), [`workers`] (simulated GPU workers), [`load`]
//! (submissions, replays, cancels), [`recorder`] (raw events),
//! [`metrics`] (histograms, series, shares), [`audit`] (the pure
//! invariant checker), [`fleet`] (the heterogeneous-fleet scenario), [`soak`] (memory and
//! database size over a long run), [`charts`] and [`report`], and [`run`] which ties
//! them together.

pub mod api;
pub mod audit;
pub mod charts;
pub mod cli;
pub mod fleet;
pub mod load;
pub mod metrics;
pub mod recorder;
pub mod report;
pub mod run;
pub mod server;
pub mod setting;
pub mod soak;
pub mod workers;
