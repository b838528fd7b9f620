//! The router's error type. Every failure on a request path becomes one of
//! these, and is classified once, at the edge, into an HTTP status with an
//! OpenAI-shaped JSON body or into a gRPC status.
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{message}")]
    InvalidArgument {
        message: String,
        param: Option<&'static str>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The client did not send its request in time.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// Over one of the tenant's limits; retrying after `retry_after` may work.
    #[error("{message} (retry after {} ms)", retry_after.as_millis())]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
        /// The tenant's buckets, sent as `x-ratelimit-*` headers.
        rate: crate::limits::RateState,
    },
    /// A token budget of the tenant or of its key is used up until
    /// `retry_after` (the next UTC midnight or month).
    #[error("{message}")]
    BudgetExhausted {
        message: String,
        retry_after: std::time::Duration,
    },
    /// This router cannot take more work now (its queue is full);
    /// retrying after `retry_after` may work.
    #[error("{message} (retry after {} ms)", retry_after.as_millis())]
    Overloaded {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            message: message.into(),
            param: Some(param),
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Self::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } | Self::BudgetExhausted { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's error `type` and `code` for this error.
    fn openai_kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::Unauthenticated(_) => ("authentication_error", "invalid_api_key"),
            Self::PermissionDenied(_) => ("permission_error", "model_not_allowed"),
            Self::InvalidArgument { .. } => ("invalid_request_error", "invalid_request"),
            Self::NotFound(_) => ("not_found_error", "not_found"),
            Self::PayloadTooLarge(_) => ("invalid_request_error", "payload_too_large"),
            Self::RequestTimeout(_) => ("invalid_request_error", "request_timeout"),
            Self::Unavailable(_) => ("server_error", "unavailable"),
            Self::RateLimited { .. } => ("rate_limit_error", "rate_limit_exceeded"),
            Self::BudgetExhausted { .. } => ("insufficient_quota", "insufficient_quota"),
            Self::Overloaded { .. } => ("server_error", "overloaded"),
            Self::Internal(_) => ("server_error", "internal_error"),
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Self::PermissionDenied(_) => tonic::Code::PermissionDenied,
            Self::InvalidArgument { .. } | Self::PayloadTooLarge(_) => tonic::Code::InvalidArgument,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::RequestTimeout(_) => tonic::Code::DeadlineExceeded,
            Self::Unavailable(_) | Self::Overloaded { .. } => tonic::Code::Unavailable,
            Self::RateLimited { .. } | Self::BudgetExhausted { .. } => {
                tonic::Code::ResourceExhausted
            }
            Self::Internal(_) => tonic::Code::Internal,
        }
    }

    /// The gRPC code's name, as recorded in audit events.
    pub fn code_name(&self) -> String {
        format!("{:?}", self.grpc_code())
    }

    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.grpc_code(), self.to_string());
        if let Self::RateLimited { retry_after, .. }
        | Self::Overloaded { retry_after, .. }
        | Self::BudgetExhausted { retry_after, .. } = self
        {
            let ms = tonic::metadata::MetadataValue::from(retry_after.as_millis() as u64);
            status.metadata_mut().insert("grpc-retry-pushback-ms", ms);
        }
        status
    }

    /// Whole seconds for a `Retry-After` header (rounded up, at least 1).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after, .. }
            | Self::Overloaded { retry_after, .. }
            | Self::BudgetExhausted { retry_after, .. } => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
                    .map(|s| s.max(1))
            }
            _ => None,
        }
    }

    /// The OpenAI error object: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        let (kind, code) = self.openai_kind();
        let param = match self {
            Self::InvalidArgument { param, .. } => *param,
            _ => None,
        };
        serde_json::json!({
            "error": { "message": self.to_string(), "type": kind, "param": param, "code": code }
        })
    }

    /// Maps a worker's status into the error the client sees. Argument errors
    /// are the client's; anything else is the worker's fault.
    pub fn from_worker(worker: &str, status: &tonic::Status) -> Self {
        match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
                Self::invalid(status.message().to_string())
            }
            tonic::Code::NotFound => Self::NotFound(status.message().to_string()),
            tonic::Code::ResourceExhausted | tonic::Code::Unavailable => Self::Unavailable(
                format!("worker {worker} is unavailable: {}", status.message()),
            ),
            _ => Self::Internal(format!("worker {worker} failed: {}", status.message())),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.http_status(), Json(self.body())).into_response();
        if matches!(self, Self::Unauthenticated(_)) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Self::RateLimited { rate, .. } = &self {
            crate::limits::insert_headers(resp.headers_mut(), rate);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classified_once() {
        let e = ApiError::invalid_param("max_tokens", "too many");
        assert_eq!(e.http_status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.grpc_code(), tonic::Code::InvalidArgument);
        assert_eq!(e.body()["error"]["param"], "max_tokens");
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        let e = ApiError::Unauthenticated("no".into());
        assert_eq!(e.http_status(), StatusCode::UNAUTHORIZED);
        assert_eq!(e.code_name(), "Unauthenticated");
        let e = ApiError::from_worker("w", &tonic::Status::internal("boom"));
        assert_eq!(e.http_status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn rate_limited_has_retry_information() {
        let e = ApiError::RateLimited {
            message: "slow down".into(),
            retry_after: std::time::Duration::from_millis(1500),
            rate: crate::limits::RateState {
                requests: Some(crate::limits::BucketView {
                    limit: 10,
                    remaining: 0,
                    reset: std::time::Duration::from_millis(1500),
                }),
                tokens: None,
            },
        };
        assert_eq!(e.http_status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.body()["error"]["type"], "rate_limit_error");
        assert_eq!(e.retry_after_secs(), Some(2));
        let resp = e.clone().into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        // OpenAI's x-ratelimit-* headers, for the limits the tenant has.
        assert_eq!(resp.headers()["x-ratelimit-limit-requests"], "10");
        assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "0");
        assert_eq!(resp.headers()["x-ratelimit-reset-requests"], "1.5s");
        assert!(resp.headers().get("x-ratelimit-limit-tokens").is_none());
        let st = e.to_status();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert!(
            st.message().contains("retry after 1500 ms"),
            "{}",
            st.message()
        );
        assert_eq!(st.metadata().get("grpc-retry-pushback-ms").unwrap(), "1500");
        assert_eq!(e.code_name(), "ResourceExhausted");
    }

    #[test]
    fn an_exhausted_budget_is_a_429_until_it_resets() {
        let e = ApiError::BudgetExhausted {
            message: "the daily token budget of tenant \"a\" (10 tokens) is used up".into(),
            retry_after: std::time::Duration::from_millis(3_600_500),
        };
        assert_eq!(e.http_status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.body()["error"]["type"], "insufficient_quota");
        assert_eq!(e.body()["error"]["code"], "insufficient_quota");
        let resp = e.clone().into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3601");
        let st = e.to_status();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert!(
            st.message().contains("daily token budget"),
            "{}",
            st.message()
        );
        assert_eq!(
            st.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "3600500"
        );
    }
}
