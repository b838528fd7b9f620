//! The crate's error: which step between a service and NATS failed, with
//! the NATS client's error as its source (`Display` names the step only;
//! print the chain, e.g. with anyhow's `{:#}`, or [`NatsError::chain`]).
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A `tls://` URL without the certificate files it needs.
    #[error("NATS at {url} needs TLS, but {missing} is missing")]
    MissingTlsFile { url: String, missing: String },
    /// The client TLS configuration could not be built.
    #[error("TLS for NATS at {url}")]
    Tls {
        url: String,
        #[source]
        source: Source,
    },
    #[error("connecting to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: Source,
    },
    /// Opening, reading or watching a KV bucket.
    #[error("KV bucket {bucket}: {step}")]
    Bucket {
        bucket: String,
        step: &'static str,
        #[source]
        source: Source,
    },
    /// Creating, checking or updating the audit stream or its consumer.
    #[error("audit stream {stream}: {step}")]
    AuditStream {
        stream: String,
        step: &'static str,
        #[source]
        source: Source,
    },
}

impl NatsError {
    pub fn bucket(bucket: &str, step: &'static str, e: impl Into<Source>) -> Self {
        Self::Bucket {
            bucket: bucket.to_string(),
            step,
            source: e.into(),
        }
    }

    /// The message and every source, `: `-joined (for errors that travel
    /// on as text, e.g. a gRPC status).
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            s.push_str(": ");
            s.push_str(&e.to_string());
            cur = e.source();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_carries_the_source() {
        let e = NatsError::bucket("b", "creating", std::io::Error::other("disk full"));
        assert_eq!(e.to_string(), "KV bucket b: creating");
        assert_eq!(e.chain(), "KV bucket b: creating: disk full");
        assert!(std::error::Error::source(&e).is_some());
    }
}
