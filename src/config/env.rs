//! Where `LEADROUTER_*` overrides and secrets are read from: the process environment, or a
//! map in tests.

/// Overrides read from the environment (`LEADROUTER_*`); a seam so tests need not mutate the
/// process environment.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable, for components that resolve secrets by name later.
    fn snapshot(&self) -> std::collections::HashMap<String, String>;
}

pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
    fn snapshot(&self) -> std::collections::HashMap<String, String> {
        std::env::vars().collect()
    }
}

impl EnvSource for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
    fn snapshot(&self) -> std::collections::HashMap<String, String> {
        self.clone()
    }
}

impl<const N: usize> EnvSource for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
    fn snapshot(&self) -> std::collections::HashMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}
