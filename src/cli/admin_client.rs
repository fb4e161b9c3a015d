//! The CLI's side of the admin API: finds the running service from the same config and env as
//! `serve` and turns every failure into one line an operator can act on.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{Config, EnvSource};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no admin token: set {0} (the same value `leadrouter serve` runs with)")]
    NoToken(String),
    /// The request did not get an answer; the cause says why (refused, timed out, ...).
    #[error("leadrouter is not reachable at {url} (is `leadrouter serve` running with the admin API enabled?)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the admin token was refused (401); check {0}")]
    Unauthorized(String),
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    /// The answer's body could not be read as JSON.
    #[error("unexpected answer from {url}")]
    Protocol {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer is JSON, but not the shape this command expects.
    #[error("unexpected answer from {url}")]
    Shape {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

pub struct AdminClient {
    base: String,
    token: String,
    token_env: String,
    http: reqwest::Client,
    actor: String,
}

impl AdminClient {
    pub fn from_config(cfg: &Config, env: &dyn EnvSource) -> Result<AdminClient, AdminError> {
        let token_env = cfg.admin.token_env.clone();
        let token = env
            .var(&token_env)
            .ok_or_else(|| AdminError::NoToken(token_env.clone()))?;
        let user = env.var("USER").unwrap_or_else(|| "someone".into());
        Ok(AdminClient {
            base: format!("http://{}", cfg.admin.listen),
            token,
            token_env,
            http: reqwest::Client::new(),
            actor: format!("cli:{user}"),
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, AdminError> {
        let resp = req
            .bearer_auth(&self.token)
            .header("x-leadrouter-actor", &self.actor)
            .send()
            .await
            .map_err(|source| AdminError::Unreachable {
                url: url.to_string(),
                source,
            })?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|source| AdminError::Protocol {
            url: url.to_string(),
            source,
        })?;
        if status.as_u16() == 401 {
            return Err(AdminError::Unauthorized(self.token_env.clone()));
        }
        if !status.is_success() {
            return Err(AdminError::Api {
                status: status.as_u16(),
                message: body["message"].as_str().unwrap_or("error").to_string(),
            });
        }
        serde_json::from_value(body).map_err(|source| AdminError::Shape {
            url: url.to_string(),
            source,
        })
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, AdminError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url).query(query), &url).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, AdminError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(&url).json(body), &url).await
    }
}
