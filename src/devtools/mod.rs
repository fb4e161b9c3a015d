//! Tooling that is not the product: the process harness shared by tests, benches and the drill.
//! Nothing under `src/` outside tooling imports from here.

pub mod harness;
