//! The domain: what the platform's rules say, as values and pure
//! functions. Nothing here is an actor, touches the store or does I/O;
//! the actors, the store's decisions and the server build on it. A module
//! checks its own values (a wallet cannot go below zero, a job moves only
//! along its state machine), so every caller gets the same answer. The
//! only things it takes from outside are time and chance, from
//! [`crate::clock`], where a value needs an instant or a new key.

// Money: credits, wallets and the ledger.
pub mod ledger;
pub mod wallet;

// Jobs: what is asked, what it costs, what a worker reports back.
pub mod diagnostic;
pub mod events;
pub mod job;
pub mod model_registry;
pub mod price_schedule;
pub mod pricing;

// Accounts: who a user is, their membership, keys, payments and files.
pub mod account;
pub mod api_keys;
pub mod email;
pub mod endpoints;
pub mod material;
pub mod payments;
pub mod tier;

// What may be generated (ToS 3.2).
pub mod content;

// Shared by all of the above: typed ids, and text a store can keep.
pub mod ids;
pub mod text;
