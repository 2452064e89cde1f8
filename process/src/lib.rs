//! What the AdMedia server (`admedia`) and the GPU worker agent
//! (`admedia-worker`) each set up at start, the same way in both:
//! `telemetry`, their logging, so one log pipeline reads both, and `tls`,
//! the TLS client settings they reach `https://` and `wss://` servers with.

pub mod telemetry;
pub mod tls;
