//! One line from an error and its causes, for the places that show a single message: the
//! binary's last line, an HTTP JSON `message`, a CLI line, a log field, a rejects file.

use std::error::Error;

/// `err`'s message followed by each of its [`source`](Error::source)s, joined with ": ".
///
/// A cause whose text the line already holds is left out, so an error that still writes its
/// source into its own message (many library errors do, async-nats' among them) is not said
/// twice; its own causes are still followed.
pub fn chain<E: Error + ?Sized>(err: &E) -> String {
    let mut line = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("loading the thing")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("reading {path}")]
    struct Middle {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    /// Writes its source into its own message as well as returning it.
    #[derive(Debug, thiserror::Error)]
    #[error("wrapped: {source}")]
    struct Echo {
        source: Middle,
    }

    fn io() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    #[test]
    fn joins_every_cause() {
        let e = Outer(Middle {
            path: "a.toml",
            source: io(),
        });
        assert_eq!(chain(&e), "loading the thing: reading a.toml: no such file");
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let e = Echo {
            source: Middle {
                path: "a.toml",
                source: io(),
            },
        };
        assert_eq!(chain(&e), "wrapped: reading a.toml: no such file");
    }

    #[test]
    fn an_error_without_causes_is_its_message() {
        assert_eq!(chain(&io()), "no such file");
    }

    #[test]
    fn anyhow_contexts_are_part_of_the_chain() {
        let e = anyhow::Error::new(io()).context("loading config/x.toml");
        assert_eq!(chain(&*e), "loading config/x.toml: no such file");
    }

    #[test]
    fn chain_joins_the_causes_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading the DLQ stream")]
        struct Outer(#[source] Middle);
        #[derive(Debug, thiserror::Error)]
        #[error("request failed: {0}")]
        struct Middle(#[source] std::io::Error);

        let io = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        // The middle error prints its own source too: it appears once.
        assert_eq!(
            chain(&Outer(Middle(io()))),
            "reading the DLQ stream: request failed: timed out"
        );
        assert_eq!(chain(&io()), "timed out");
        // Boxed errors (async_nats::Error, ractor's ActorProcessingErr) work through a deref.
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(Outer(Middle(io())));
        assert_eq!(
            chain(&*boxed),
            "reading the DLQ stream: request failed: timed out"
        );
    }
}
