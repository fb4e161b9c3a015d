//! Tooling that is not the product: the process harness shared by tests, benches and the drill
//! (`harness`), the chaos drill (`drill`) and the CRM stand-in (`sandbox_crm`). The product's
//! stages and surfaces never import from here; the CLI only starts these tools.

pub mod drill;
pub mod harness;
pub mod sandbox_crm;
