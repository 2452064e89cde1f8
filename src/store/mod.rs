//! Adapters of the store port that need the outside world: PostgreSQL for
//! durable state, Redis for cluster-wide limits; and the wrapper that
//! measures whichever adapter is in use.

pub mod instrumented;
pub mod postgres;
pub mod postgres_materials;
