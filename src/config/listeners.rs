//! `[intake]` and `[admin]`: the two HTTP listeners.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeConfig {
    #[serde(default = "default_intake_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

fn default_intake_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body_bytes() -> u64 {
    64 * 1024
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            listen: default_intake_listen(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Env var that holds the admin token.
    #[serde(default = "default_admin_token_env")]
    pub token_env: String,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9091))
}
fn default_admin_token_env() -> String {
    "LEADROUTER_ADMIN_TOKEN".into()
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token_env: default_admin_token_env(),
        }
    }
}
