//! The worker's side of the worker protocol (docs/worker-protocol.md) that
//! more than the agent needs: `socket`, how a worker dials the orchestrator
//! and sends it messages, and `placeholder`, what a simulated worker
//! uploads. The agent binary (`src/main.rs`) and the load tester's
//! simulated workers both use them.

pub mod placeholder;
pub mod socket;
