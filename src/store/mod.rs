//! Adapters of the store port that need the outside world: PostgreSQL for
//! durable state, Redis for cluster-wide limits.

pub mod postgres;
